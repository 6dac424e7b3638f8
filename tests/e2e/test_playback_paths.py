"""Playback on the paths a user takes: short runs, retention against the playback backlog, the
status a finished or restarted session shows, and streams of sessions that are not playing."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from helpers.dream_loop import TEST_PACKS, dream_workflow, read_stream
from tools.harness.comfy_process import ComfyServer

pytestmark = pytest.mark.e2e

SIZE = 64
N = 10  # the bundled workflow's interpolated frames per keyframe pair


def frames_made(iterations: int) -> int:
    return 1 + (iterations - 1) * (N + 1)


def session_folder(server, name: str):
    return server.base / "output" / "dream_window" / name


def frame_file(server, name: str, index: int):
    return session_folder(server, name) / "frames" / f"frame_{index:08d}.png"


def on_disk(server, name: str) -> list[int]:
    return sorted(int(p.name[6:14]) for p in (session_folder(server, name) / "frames").glob("frame_*.png"))


def loop_workflow(name: str, fps: float, iterations: int, buffer_target: float = 0.0,
                  inputs: dict | None = None) -> dict:
    """The test workflow at ``fps`` for ``iterations`` (0: endless); ``inputs`` sets more, by (node, input)."""
    wf = dream_workflow(name, size=SIZE)
    wf["4"]["inputs"]["fps"] = fps
    wf["10"]["inputs"].update(max_iterations=iterations, buffer_target=buffer_target)
    for (node, key), value in (inputs or {}).items():
        wf[node]["inputs"][key] = value
    return wf


def streamed_indices(parts) -> list[int]:
    return [int(headers["x-dream-window-frame"]) for headers, _, _ in parts]


def test_a_short_run_plays_to_its_last_frame_and_its_stream_ends(comfy):
    # 3 iterations make 23 frames; the default minimum buffer at 8 fps is 80: it is never filled.
    name, iterations = "short_run", 3
    last = frames_made(iterations)
    comfy.queue(loop_workflow(name, fps=8.0, iterations=iterations))
    comfy.wait_for(lambda: comfy.session(name), timeout=60, what="the session to exist")
    viewer: dict = {}
    thread = threading.Thread(target=lambda: viewer.update(parts=read_stream(comfy, name, None, "png")[1]))
    thread.start()  # a viewer that connects while the loop buffers
    comfy.wait_for(lambda: comfy.session(name)["state"] == "stopped", timeout=120, what="max_iterations")
    thread.join(timeout=30)
    assert not thread.is_alive(), "the stream did not end after the last frame of the stopped session"
    assert streamed_indices(viewer["parts"]) == list(range(1, last + 1)), "every frame, in order, once"

    status = comfy.wait_for(lambda: (s := comfy.get(f"/dream_window/status/{name}"))["frame_number"] == last and s,
                            timeout=10, what="the status to count every frame played")
    assert (status["state"], status["status"], status["is_buffering"]) == ("stopped", "stopped", False)
    current = session_folder(comfy, name) / "current_frame.png"
    assert current.read_bytes() == frame_file(comfy, name, last).read_bytes(), "current_frame.png is the last frame"
    code, body, headers = comfy.request("GET", f"/dream_window/frame/{name}")
    assert code == 200 and int(headers["X-Dream-Window-Frame"]) == last

    # A stream of the stopped session answers at once with its last frame, then ends.
    for limit in (1, None):
        started = time.monotonic()
        _, parts = read_stream(comfy, name, limit, timeout=10)
        assert streamed_indices(parts) == [last] and time.monotonic() - started < 3


def test_retention_never_deletes_a_frame_before_it_is_played(comfy):
    # Throttling off and one frame every 2 s: the loop runs far ahead of playback, with 2 frames of retention.
    name, iterations = "retention_backlog", 2
    last = frames_made(iterations)
    comfy.queue(loop_workflow(name, fps=0.5, iterations=iterations, inputs={("4", "min_buffer_seconds"): 0.0,
                                                                            ("9", "retention"): 2}))
    comfy.wait_for(lambda: frame_file(comfy, name, last).exists(), timeout=120, what="the last frame on disk")
    shown = int(comfy.request("GET", f"/dream_window/frame/{name}")[2]["X-Dream-Window-Frame"])
    # At 0.5 fps a few frames were shown; playback that jumps past deleted frames would be near the last.
    assert shown < last - 2, f"playback skipped to frame {shown} of {last}: unplayed frames were deleted"
    assert set(range(shown + 1, last + 1)) <= set(on_disk(comfy, name)), "an unplayed frame was deleted"


def test_status_reports_the_mode_and_the_keyframe_time(comfy):
    name = "status_values"
    comfy.queue(loop_workflow(name, fps=8.0, iterations=1, inputs={("5", "mode"): "img2img"}))
    comfy.wait_for(lambda: comfy.session(name) and comfy.session(name)["state"] == "stopped", timeout=60,
                   what="one iteration")
    stats = json.loads((session_folder(comfy, name) / "state.json").read_text())["stats"]
    status = comfy.wait_for(lambda: (s := comfy.get(f"/dream_window/status/{name}"))["keyframes_generated"] == 1
                            and s, timeout=10, what="the status of the keyframe")
    assert status["current_mode"] == "img2img"
    # One keyframe: its time is the mean keyframe time, and shorter than the whole iteration.
    assert status["generation_time"] == status["keyframe_time"] == round(stats["keyframe_time"], 3) > 0
    assert status["generation_time"] < stats["iteration_time"]


def test_cache_diversity_is_reported_once_the_cache_holds_two_entries(comfy):
    name = "status_cache"
    comfy.queue(loop_workflow(name, fps=8.0, iterations=2, inputs={("3", "admission"): "always",
                                                                     ("3", "cache_name"): name}))
    comfy.wait_for(lambda: comfy.session(name) and comfy.session(name)["state"] == "stopped", timeout=60,
                   what="two iterations")
    status = comfy.wait_for(lambda: (s := comfy.get(f"/dream_window/status/{name}"))["cache_size"] >= 2 and s,
                            timeout=10, what="the status to see the cache")
    assert status["cache_avg_similarity"] > 0.0
    assert status["cache_diversity_score"] == pytest.approx(max(0.0, 1.0 - status["cache_avg_similarity"]), abs=2e-4)


def test_stream_of_a_session_that_never_played_answers_at_once(comfy):
    flag = comfy.base / "input" / "dwtest_fail"
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.touch()
    try:
        wf = dream_workflow("never_played", size=SIZE, fault=True, autoqueue=False)
        comfy.queue(wf)
        comfy.wait_for(lambda: (s := comfy.session("never_played")) and s["last_error"], timeout=60,
                       what="the failed iteration")
    finally:
        flag.unlink(missing_ok=True)
    started = time.monotonic()
    code, body, _ = comfy.request("GET", "/dream_window/stream/never_played?limit=1", timeout=10)
    assert time.monotonic() - started < 3
    assert code == 409 and "has no frame to play" in json.loads(body)["error"]


def test_a_stream_notices_a_viewer_that_left_within_a_second(comfy):
    name = "left_viewer"
    comfy.queue(loop_workflow(name, fps=8.0, iterations=0, buffer_target=2.0,
                              inputs={("4", "min_buffer_seconds"): 600.0}))  # buffers and never plays
    comfy.wait_for(lambda: comfy.session(name), timeout=60, what="the session to exist")
    try:
        with socket.create_connection(("127.0.0.1", comfy.port), timeout=10) as sock:
            sock.sendall(f"GET /dream_window/stream/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            assert b"multipart/x-mixed-replace" in sock.recv(4096)
            comfy.wait_for(lambda: comfy.session(name)["stream_viewers"] == 1, timeout=5, what="the viewer")
        comfy.wait_for(lambda: comfy.session(name)["stream_viewers"] == 0, timeout=1.5,
                       what="the stream to notice its viewer left", interval=0.1)
    finally:
        comfy.control("stop", name)


def test_a_stream_of_a_deleted_session_ends_cleanly(comfy):
    name = "deleted_while_viewed"
    # 1 fps and no throttle: frames pile up unplayed, so the stream has frames left to send when it is deleted.
    comfy.queue(loop_workflow(name, fps=1.0, iterations=3, inputs={("4", "min_buffer_seconds"): 2.0}))
    comfy.wait_for(lambda: (s := comfy.session(name)) and s["state"] == "stopped", timeout=60,
                   what="3 iterations")
    with socket.create_connection(("127.0.0.1", comfy.port), timeout=10) as sock:
        sock.sendall(f"GET /dream_window/stream/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                     .encode())
        assert b"multipart/x-mixed-replace" in sock.recv(4096)
        comfy.wait_for(lambda: comfy.session(name)["stream_viewers"] == 1, timeout=5, what="the viewer")
        log_start = len(comfy.log_tail(10 ** 9))
        assert comfy.control("delete", name)["deleted"]
        sock.settimeout(0.2)
        deadline, closed = time.monotonic() + 3.0, False
        while not closed and time.monotonic() < deadline:
            try:
                closed = sock.recv(65536) == b""
            except socket.timeout:
                pass
        assert closed, "the stream of a deleted session ends"
    log = comfy.log_tail(10 ** 9)[log_start:]
    assert "Error handling request" not in log and "Traceback" not in log, log[-3000:]


def test_a_restarted_session_says_interrupted_and_plays_on_from_its_first_unplayed_frame(tmp_path):
    server = ComfyServer(tmp_path, extra_packs=TEST_PACKS).start()
    name = "restarted"
    try:
        # 1 fps and no throttle: frames pile up unplayed; the minimum buffer (2 frames) starts playback.
        server.queue(loop_workflow(name, fps=1.0, iterations=0, inputs={("4", "min_buffer_seconds"): 2.0}))
        server.wait_for(lambda: (server.session(name) or {}).get("iteration", 0) >= 3, timeout=120,
                        what="3 iterations")
        server.wait_for(lambda: server.request("GET", f"/dream_window/frame/{name}")[0] == 200, timeout=30,
                        what="playback to start")
        server.kill()
        current = (session_folder(server, name) / "current_frame.png").read_bytes()
        shown = [i for i in on_disk(server, name) if frame_file(server, name, i).read_bytes() == current]
        assert len(shown) == 1, "the frame on screen when the server died"
        status_file = session_folder(server, name) / "status.json"
        assert json.loads(status_file.read_text())["state"] in ("running", "buffering"), "what the dead server left"

        server.start()
        # Before anything asks for the session, the file widgets read says what the session is now,
        # and nothing played: the frame on screen is the one the dead server showed.
        left = json.loads(status_file.read_text())
        assert (left["state"], left["controller_status"], left["is_buffering"]) == \
            ("interrupted", "interrupted", False)
        assert (session_folder(server, name) / "current_frame.png").read_bytes() == current
        listed = server.session(name)
        assert left["keyframes_generated"] == listed["iteration"]
        newest = listed["frames"]  # the last frame of the last keyframe whose frames all reached the disk
        assert newest > shown[0] + 2, "the test needs frames left unplayed"
        assert listed["state"] == "interrupted" and listed["resumable"] is True
        assert not server.get("/queue")["queue_running"] and not server.get("/queue")["queue_pending"]
        _, parts = read_stream(server, name, None, "png", timeout=60)
        assert streamed_indices(parts) == list(range(shown[0] + 1, newest + 1)), \
            "the frames left unplayed play on, from the first one, and the stream ends after them"
        status = server.get(f"/dream_window/status/{name}")
        assert (status["state"], status["controller_status"], status["is_buffering"]) == \
            ("interrupted", "interrupted", False)

        server.control("start", name)
        server.wait_for(lambda: server.session(name)["state"] == "running", timeout=10, what="the resume")
        server.wait_for(lambda: int(server.request("GET", f"/dream_window/frame/{name}")[2]
                                    .get("X-Dream-Window-Frame", 0)) > newest, timeout=90,
                        what="playback to go on with the frames made after the resume")
        server.control("stop", name)
    finally:
        server.stop()
