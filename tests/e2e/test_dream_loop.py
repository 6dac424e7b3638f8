"""The bundled dream workflow, queued once on a real ComfyUI 0.3.75, keeps dreaming by itself."""

from __future__ import annotations

import json
import time

import pytest
import torch

from helpers.dream_loop import TEST_PACKS, WHITELIST, captured, changed_fields, dream_workflow, resume_point
from tools.harness.comfy_process import ComfyServer

N = 10  # the bundled workflow's interpolated frames per keyframe pair

pytestmark = pytest.mark.e2e


def frames_formula(k: int) -> int:
    return 1 + (k - 1) * (N + 1)


def session_history(comfy, name: str) -> int:
    """History entries whose prompt runs session ``name``."""
    return sum(1 for entry in comfy.get("/history").values()
               if any(node.get("class_type") == "DreamWindowSession" and node["inputs"].get("name") == name
                      for node in entry["prompt"][2].values()))


def shown_index(current) -> int:
    """The index of the frame file ``current_frame.png`` is a hard link to (0: none)."""
    inode = current.stat().st_ino
    return next((int(p.name[6:14]) for p in (current.parent / "frames").glob("frame_*.png")
                 if p.stat().st_ino == inode), 0)


def queue_entries(comfy) -> int:
    q = comfy.get("/queue")
    return len(q["queue_running"]) + len(q["queue_pending"])


def test_queued_once_dreams_by_itself(comfy):
    started = time.time()
    wf = dream_workflow("dream", capture="cap_main")
    assert changed_fields(wf) <= WHITELIST
    comfy.queue(wf)
    comfy.queue(wf)  # queueing twice must not start a second chain
    comfy.wait_for(lambda: comfy.session("dream") and comfy.session("dream")["iteration"] >= 5,
                   timeout=120, what="5 iterations")
    # One chain: never more than one prompt of the session queued or running.
    samples = []
    for _ in range(40):
        samples.append(queue_entries(comfy))
        time.sleep(0.05)
    assert max(samples) <= 1, samples
    comfy.wait_for(lambda: comfy.session("dream")["iteration"] >= 20, timeout=180, what="20 iterations")

    stopped_at = comfy.control("stop", "dream")["iteration"]
    comfy.wait_for(lambda: not queue_entries(comfy), timeout=120, what="the iteration in flight to finish")
    final = comfy.session("dream")
    assert final["state"] == "stopped"
    assert final["iteration"] <= stopped_at + 1, "stop must take effect at the next iteration boundary"
    time.sleep(1)
    assert comfy.session("dream")["iteration"] == final["iteration"]
    k = final["iteration"]
    assert final["frames"] == frames_formula(k)

    output = comfy.base / "output"
    frames = sorted((output / "dream_window" / "dream" / "frames").glob("frame_*.png"))
    assert frames[-1].name == f"frame_{frames_formula(k):08d}.png"
    on_disk = [int(f.name[6:14]) for f in frames]
    shown = int(comfy.request("GET", "/dream_window/frame/dream")[2]["X-Dream-Window-Frame"])
    assert on_disk == list(range(on_disk[0], frames_formula(k) + 1)), "retention deletes the oldest frames only"
    assert on_disk[0] <= max(1, shown - 127), "retention keeps every unplayed frame and 128 played ones"
    # current_frame.png follows playback (3.5 fps, still playing the buffer): a hard link to the frame
    # being shown, which /frame serves. Playback only moves on, so the link shows the served frame or
    # an earlier one before the request, and reaches it (or a later one) after.
    current = output / "dream_window" / "dream" / "current_frame.png"
    shown_before = shown_index(current)
    status, body, headers = comfy.request("GET", "/dream_window/frame/dream")
    served = int(headers["X-Dream-Window-Frame"])
    assert status == 200 and body == (current.parent / "frames" / f"frame_{served:08d}.png").read_bytes()
    assert 1 <= shown_before <= served, (shown_before, served)
    comfy.wait_for(lambda: shown_index(current) >= served, timeout=5, what="current_frame.png to show the served frame")

    src, out = captured(output, "cap_main", "src"), captured(output, "cap_main", "out")
    assert len(src) == len(out) == k
    assert torch.count_nonzero(src[0]) == 0, "iteration 1 starts from an empty latent (txt2img)"
    for i in range(1, k):
        assert torch.equal(src[i], out[i - 1]), f"sampler input of iteration {i + 1} is not keyframe {i}"

    assert session_history(comfy, "dream") <= 1, "finished loop prompts are deleted from history"
    temp = comfy.base / "temp"
    # Previews this loop wrote (another test's Preview Image node on the shared server may have written before).
    previews = [p for p in temp.rglob("*.png") if p.stat().st_mtime >= started] if temp.exists() else []
    assert not previews, "no per-frame previews in temp/"


def test_sampler_error_is_retried_then_pauses(comfy):
    flag = comfy.base / "input" / "dwtest_fail"
    comfy.queue(dream_workflow("faulty", fault=True))
    comfy.wait_for(lambda: (comfy.session("faulty") or {}).get("iteration", 0) >= 2, timeout=60, what="2 iterations")
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.touch()
    try:
        at_flag = comfy.session("faulty")["iteration"]
        paused = comfy.wait_for(lambda: (s := comfy.session("faulty"))["state"] == "paused" and s, timeout=60,
                                what="the session to pause after 3 retries")
        assert paused["iteration"] <= at_flag + 1
        err = paused["last_error"]
        log = comfy.log_tail(200000)
        lines = [line for line in log.splitlines() if "dream_window[faulty]" in line]  # shown if one fails
        assert "injected sampler fault" in err["message"]
        assert err["node_type"] == "DWTestFault" and err["retries"] == 3, (err, lines)
        assert log.count("dream_window[faulty]: iteration failed (") == 3, lines
        time.sleep(1.5)
        assert comfy.session("faulty")["iteration"] == paused["iteration"], "no silent retries after pausing"
    finally:
        flag.unlink(missing_ok=True)
    comfy.control("resume", "faulty")
    comfy.wait_for(lambda: comfy.session("faulty")["iteration"] >= paused["iteration"] + 2, timeout=60,
                   what="the loop to continue after resume")
    comfy.control("stop", "faulty")


def test_user_cancel_pauses_without_retry(comfy):
    comfy.queue(dream_workflow("cancel", steps=200))  # a slow iteration: the Cancel lands mid-sampling
    comfy.wait_for(lambda: (comfy.session("cancel") or {}).get("state") == "running", timeout=60,
                   what="the session node to start the loop")
    comfy.post_json("/interrupt", {})
    state = comfy.wait_for(lambda: (s := comfy.session("cancel"))["state"] == "paused" and s, timeout=30,
                           what="cancel to pause the session")
    time.sleep(1.5)
    assert comfy.session("cancel")["iteration"] == state["iteration"]
    assert "iteration failed" not in comfy.log_tail(200000).split("dream_window[cancel]")[-1]


def test_killed_server_resumes_from_last_committed_keyframe(tmp_path):
    # A bad thread setting must not stop the loop: it is logged, and the default (auto) applies.
    server = ComfyServer(tmp_path, extra_packs=TEST_PACKS, env={"DREAM_WINDOW_TORCH_THREADS": "many"}).start()
    try:
        wf = dream_workflow("resume", capture="cap_resume")
        wf["3"]["inputs"]["admission"] = "always"
        server.queue(wf)
        server.wait_for(lambda: (server.session("resume") or {}).get("iteration", 0) >= 4, timeout=120,
                        what="4 iterations")
        assert "DREAM_WINDOW_TORCH_THREADS='many': use auto, keep or a whole number" in server.log_tail(400000)
        server.kill()
        index = tmp_path / "output" / "dream_window_cache" / "resume" / "metadata" / "cache_index.json"
        cached_before = {e["cache_id"] for e in json.loads(index.read_text())["entries"]}
        assert len(cached_before) >= 4
        k, last, _ = resume_point(tmp_path / "output" / "dream_window" / "resume")
        server.start()
        before = server.session("resume")
        assert before["iteration"] == k >= 3 and before["state"] == "interrupted" and before["resumable"]
        n_src = len(captured(tmp_path / "output", "cap_resume", "src"))
        server.control("start", "resume")
        server.wait_for(lambda: server.session("resume")["iteration"] >= before["iteration"] + 2, timeout=60,
                        what="the resumed loop to run")
        src = captured(tmp_path / "output", "cap_resume", "src")
        assert torch.equal(src[n_src], last), "the first resumed iteration starts from the last committed keyframe"
        cached_after = {e["id"] for e in server.get("/dream_window/cache/resume")["entries"]}
        assert cached_before <= cached_after, "the cache survives the restart"

        # Opt-in, in ComfyUI's settings: a running session resumes by itself when the server starts again.
        assert server.post_json("/settings/DreamWindow.ResumeOnStart", True)[0] == 200
        server.kill()
        server.start()
        again = server.session("resume")["iteration"]
        server.wait_for(lambda: server.session("resume")["iteration"] >= again + 2, timeout=60,
                        what="the loop to resume at server start with no request")
        server.control("stop", "resume")
        time.sleep(1)
        assert server.session("resume")["frames"] == frames_formula(server.session("resume")["iteration"])
    finally:
        server.stop()
