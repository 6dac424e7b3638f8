"""The loop's control paths on a real ComfyUI: limits, control calls, errors no retry can fix,
TLS, file modes, and the headless demo's ``--iterations``."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
import threading
import time

import pytest

from helpers.dream_loop import dream_workflow, held_iteration, running_with_a_keyframe
from tools.harness.comfy_process import REPO, TINY_SD15, ComfyServer, ensure_models, free_port

pytestmark = pytest.mark.e2e

UMASK = 0o027
VANISHING = "dw_vanishing.safetensors"


def finished(server, name: str):
    """The session once it is no longer running and nothing of it is queued, else None."""
    s = server.session(name)
    queue = server.get("/queue")
    return s if s and s["state"] != "running" and not queue["queue_running"] and not queue["queue_pending"] else None


def test_start_on_a_finished_session_says_so_and_pause_keeps_it_stopped(comfy):
    wf = dream_workflow("limited")
    wf["10"]["inputs"]["max_iterations"] = 2
    comfy.queue(wf)
    done = comfy.wait_for(lambda: finished(comfy, "limited"), timeout=60, what="max_iterations=2 to stop the loop")
    assert done["state"] == "stopped" and done["iteration"] == 2

    status, body = comfy.post_json("/dream_window/start", {"session": "limited"})
    assert status == 409 and "max_iterations=2" in body["error"] and "AutoQueue" in body["error"], body
    status, body = comfy.post_json("/dream_window/resume", {"session": "limited"})
    assert status == 409 and "max_iterations=2" in body["error"], body
    status, body = comfy.post_json("/dream_window/pause", {"session": "limited"})
    assert status == 409 and "stopped" in body["error"] and "nothing to pause" in body["error"], body
    time.sleep(1.0)
    after = comfy.session("limited")
    assert after["state"] == "stopped" and after["iteration"] == 2, after

    # Queueing the same workflow again (the Queue button) makes no keyframe past the limit either.
    prompt_id = comfy.queue(wf)
    entry = comfy.wait_for(lambda: comfy.get(f"/history/{prompt_id}").get(prompt_id), timeout=60,
                           what="the queued prompt in the history")
    errors = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    assert entry["status"]["status_str"] == "error" and errors[0]["node_type"] == "DreamWindowSession", entry
    assert "max_iterations=2" in errors[0]["exception_message"] and "AutoQueue" in errors[0]["exception_message"]
    after = comfy.session("limited")
    assert after["state"] == "stopped" and after["iteration"] == 2 and after["frames"] == done["frames"], after

    wf["10"]["inputs"]["max_iterations"] = 3  # a new limit: queue the workflow with it
    comfy.queue(wf)
    again = comfy.wait_for(lambda: (s := finished(comfy, "limited")) and s["iteration"] == 3 and s, timeout=60,
                           what="the raised limit to run one more iteration")
    assert again["state"] == "stopped"


def test_configuration_error_pauses_at_once_without_retries(comfy):
    wf = dream_workflow("lost_dreamer")
    wf["5"]["inputs"]["mode"] = "interpolate"  # an empty cache and no seed folder: nothing to walk between
    comfy.queue(wf)
    paused = comfy.wait_for(lambda: (s := comfy.session("lost_dreamer")) and s["state"] == "paused" and s,
                            timeout=60, what="the configuration error to pause the session")
    error = paused["last_error"]
    assert "DreamWindowKeyframeSource" in error["message"] and "seed_folder" in error["message"], error
    assert error["retries"] == 0, error
    time.sleep(1.5)  # the first retry would come after 0.5 s
    log = comfy.log_tail(400000)
    assert "dream_window[lost_dreamer]: iteration failed (" not in log, "a configuration error is never retried"
    assert "dream_window[lost_dreamer]: configuration error" in log
    assert comfy.session("lost_dreamer")["last_error"]["retries"] == 0


def control_in_background(comfy, action: str, name: str) -> tuple[threading.Thread, dict]:
    """POST a control action from a thread: (the thread, the reply's status and body once it answers)."""
    reply: dict = {}
    thread = threading.Thread(target=lambda: reply.update(zip(("status", "body"), comfy.post_json(
        f"/dream_window/{action}", {"session": name}))))
    thread.start()
    return thread, reply


def session_prompts(comfy, name: str) -> list[str]:
    """The ids of the session's prompts queued or running now."""
    queue = comfy.get("/queue")
    return [item[1] for item in queue["queue_running"] + queue["queue_pending"]
            if any(node.get("class_type") == "DreamWindowSession" and node["inputs"].get("name") == name
                   for node in item[2].values())]


def test_resume_pressed_at_once_from_several_clicks_runs_one_chain(comfy):
    """Resume clicked twice (or by two clients) before the first click's prompt reached the queue: one
    prompt is queued, the other clicks say "already queued", so the session never runs two chains."""
    name = "double_resume"
    running_with_a_keyframe(comfy, name)
    comfy.control("pause", name)
    comfy.wait_for(lambda: not session_prompts(comfy, name), timeout=60, what="the paused session's last iteration")
    inputs = comfy.base / "input"
    (inputs / "dwtest_hold").touch()  # the resumed iteration stays in flight while the queue is read
    try:
        clicks = [control_in_background(comfy, "resume", name) for _ in range(4)]
        for thread, _ in clicks:
            thread.join(30)
        replies = [reply for _, reply in clicks]
        assert all(reply.get("status") == 200 for reply in replies), replies
        queued = [reply["body"]["prompt_id"] for reply in replies if reply["body"]["prompt_id"] != "already queued"]
        assert len(queued) == 1, replies
        time.sleep(0.5)
        assert session_prompts(comfy, name) == queued
    finally:
        (inputs / "dwtest_hold").unlink(missing_ok=True)
    comfy.control("stop", name)
    comfy.wait_for(lambda: finished(comfy, name), timeout=60, what="the stopped session's last iteration")


def test_delete_waits_for_the_iteration_in_flight_and_drops_what_is_queued(comfy):
    """A paused session can be deleted while its last iteration still runs (a pause lands at the next
    boundary): the delete drops its queued prompts, waits for that iteration to end, then removes it all."""
    folder = comfy.base / "output" / "dream_window" / "deleted_mid"
    log_start = running_with_a_keyframe(comfy, "deleted_mid")
    with held_iteration(comfy):
        comfy.control("pause", "deleted_mid")
        waiting = comfy.queue(dream_workflow("deleted_mid", fault=True))  # the Queue button pressed meanwhile
        deleting, reply = control_in_background(comfy, "delete", "deleted_mid")
        comfy.wait_for(lambda: not any(item[1] == waiting for item in comfy.get("/queue")["queue_pending"]),
                       timeout=10, what="the delete to drop the session's queued prompt")
        time.sleep(1.0)
        assert deleting.is_alive() and not reply, f"the delete returned while the iteration ran: {reply}"
        assert (folder / "state.json").exists()
    deleting.join(60)
    assert reply.get("status") == 200 and reply["body"].get("deleted"), reply
    assert not folder.exists() and comfy.session("deleted_mid") is None
    time.sleep(1.5)  # the supervisor saw its prompt end: it must not queue, write or save anything now
    assert not folder.exists(), sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    assert comfy.get(f"/history/{waiting}") == {}, "the dropped prompt never ran"
    queue = comfy.get("/queue")
    assert not queue["queue_running"] and not queue["queue_pending"], queue
    log = comfy.log_tail(10 ** 9)[log_start:]
    assert "Traceback" not in log and "cannot save" not in log, log[-3000:]


def test_a_session_listed_while_it_is_deleted_does_not_come_back(comfy):
    """The session list (and the GPU monitor) look sessions up while a delete removes the folder: none of
    them may load the half-deleted session again and keep it listed."""
    name, folder = "deleted_listed", comfy.base / "output" / "dream_window" / "deleted_listed"
    comfy.queue(dream_workflow(name, autoqueue=False))
    comfy.wait_for(lambda: finished(comfy, name) and comfy.session(name)["iteration"] == 1, timeout=60,
                   what="one keyframe")
    for n in range(60):  # a folder that takes a while to remove, as one of a long run's does
        junk = folder / f"j{n:02d}"
        junk.mkdir()
        for i in range(80):
            (junk / f"{i}.bin").write_bytes(b"x")
    statuses: list[int] = []
    listing = threading.Event()

    def list_sessions():
        while not listing.is_set():
            statuses.append(comfy.request("GET", "/dream_window/sessions")[0])

    lister = threading.Thread(target=list_sessions)
    lister.start()
    try:
        assert comfy.control("delete", name)["deleted"]
    finally:
        listing.set()
        lister.join(30)
    assert len(statuses) > 1 and set(statuses) == {200}, statuses
    assert comfy.session(name) is None, "the deleted session is listed again"
    assert not folder.exists()


def test_reset_while_an_iteration_runs_lets_it_end_then_starts_afresh(comfy):
    """A reset of a running session lands after the iteration in flight: that one commits (no error is
    left on the session), then the keyframes are forgotten and the session is idle."""
    log_start = running_with_a_keyframe(comfy, "reset_mid")
    with held_iteration(comfy):
        resetting, reply = control_in_background(comfy, "reset", "reset_mid")
        time.sleep(1.0)
        assert resetting.is_alive() and not reply, f"the reset returned while the iteration ran: {reply}"
    resetting.join(60)
    assert reply.get("status") == 200 and reply["body"]["iteration"] == 0, reply
    assert reply["body"]["state"] == "idle", reply
    time.sleep(1.5)
    after = comfy.session("reset_mid")
    assert after["state"] == "idle" and after["iteration"] == 0 and after["last_error"] is None, after
    queue = comfy.get("/queue")
    assert not queue["queue_running"] and not queue["queue_pending"], queue
    assert "Traceback" not in comfy.log_tail(10 ** 9)[log_start:]
    comfy.control("start", "reset_mid")
    comfy.wait_for(lambda: comfy.session("reset_mid")["iteration"] >= 1, timeout=60, what="a keyframe after the reset")
    comfy.control("stop", "reset_mid")


@pytest.fixture(scope="module")
def own_server(tmp_path_factory):
    """A server of these tests' own: https with a self-signed certificate for 127.0.0.1 made here, umask 027,
    and a models folder of links, one of them (``VANISHING``) a checkpoint a test may remove."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make the test certificate")
    base = tmp_path_factory.mktemp("own")
    cert, key = base / "cert.pem", base / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    shared, models = ensure_models(("taesd", "sd15")), base / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "vae_approx").symlink_to(shared / "vae_approx", target_is_directory=True)
    for name in (TINY_SD15, VANISHING):
        (models / "checkpoints" / name).symlink_to(shared / "checkpoints" / TINY_SD15)
    server = ComfyServer(base / "comfy", tls=(cert, key), umask=UMASK, models=models).start()
    yield server
    server.stop()


def test_self_requeue_runs_over_tls_and_files_follow_the_umask(own_server):
    wf = dream_workflow("secure")
    wf["10"]["inputs"]["max_iterations"] = 5  # 45 frames: past the 35-frame minimum buffer, so playback starts
    own_server.queue(wf)
    done = own_server.wait_for(lambda: finished(own_server, "secure"), timeout=90, what="5 iterations over https")
    assert done["iteration"] == 5 and done["state"] == "stopped" and done["last_error"] is None, done

    folder = own_server.base / "output" / "dream_window" / "secure"
    own_server.wait_for(lambda: (folder / "current_frame.png").exists(), timeout=30, what="playback to start")
    # The frame writer works off the executor thread: the last pair may still be reaching the disk.
    frames = own_server.wait_for(lambda: len(f := sorted((folder / "frames").glob("frame_*.png"))) == 45 and f,
                                 timeout=30, what="all 45 frames on disk")
    files = [folder / "current_frame.png", folder / "status.json", folder / "state.json", *frames]
    modes = {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in files}
    assert set(modes.values()) == {oct(0o666 & ~UMASK)}, modes


def test_a_model_file_removed_mid_run_pauses_at_once(own_server):
    wf = dream_workflow("vanishing")
    wf["1"]["inputs"]["ckpt_name"] = VANISHING
    own_server.queue(wf)
    own_server.wait_for(lambda: (own_server.session("vanishing") or {}).get("iteration", 0) >= 1, timeout=60,
                        what="the first iteration")
    (own_server.base.parent / "models" / "checkpoints" / VANISHING).unlink()
    paused = own_server.wait_for(lambda: (s := own_server.session("vanishing"))["state"] == "paused" and s,
                                 timeout=60, what="the refused workflow to pause the session")
    error = paused["last_error"]
    assert "ComfyUI refused the stored workflow" in error["message"] and VANISHING in error["message"], error
    assert error["retries"] == 0, error
    assert "dream_window[vanishing]: iteration failed (" not in own_server.log_tail(400000)


def test_iterations_flag_makes_exactly_that_many_keyframes(tmp_path):
    base = tmp_path / "demo"
    for n, total in ((2, 2), (1, 3)):  # a second run resumes the session and counts its N from there
        done = subprocess.run([sys.executable, str(REPO / "tools" / "harness" / "run_dream.py"), "--iterations", str(n),
                               "--port", str(free_port()), "--base", str(base)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        state = json.loads((base / "output" / "dream_window" / "dream" / "state.json").read_text())
        frames = sorted((base / "output" / "dream_window" / "dream" / "frames").glob("frame_*.png"))
        assert state["iteration"] == total, done.stdout
        assert len(frames) == 1 + (total - 1) * 11, "README: 1 + (k-1)(N+1) frames after k iterations"
        # Not one iteration more is started, not even one the shutdown cuts short (on a fast GPU it commits).
        assert (base / "comfy.log").read_text(errors="replace").count("got prompt") == total
