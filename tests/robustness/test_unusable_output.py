"""An output folder that cannot be used (a regular file where the folder should be; the tests run
as root, so permissions cannot simulate it): a clear error naming the fix, the state intact.

* the session's ``frames`` folder: the loop pauses after its retries, and resumes once fixed;
* the cache folder: the loop goes on without caching, and says so.
"""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from helpers.dream_loop import dream_workflow

pytestmark = pytest.mark.e2e


def iteration(comfy, name: str) -> int:
    return (comfy.session(name) or {}).get("iteration", 0)


def test_a_file_where_the_frames_folder_should_be_pauses_the_loop(comfy):
    name = "frames_blocked"
    folder = comfy.base / "output" / "dream_window" / name
    comfy.queue(dream_workflow(name))
    comfy.wait_for(lambda: iteration(comfy, name) >= 2, timeout=120, what="2 iterations")
    log_start = comfy.log_path.stat().st_size
    frames, aside = folder / "frames", folder / "frames_aside"
    frames.rename(aside)
    frames.write_text("a file, not a folder")
    planted_at = iteration(comfy, name)
    try:
        paused = comfy.wait_for(lambda: (s := comfy.session(name))["state"] == "paused" and s, timeout=60,
                                what="the loop to pause after its retries")
        message = paused["last_error"]["message"]
        for words in ("DreamWindowCommit", str(frames), "is a file, not a folder", "remove or rename that file",
                      "start the session again"):
            assert words in message, message
        assert paused["last_error"]["retries"] == 3 and paused["last_error"]["node_id"] == "9"
        # An iteration that passed the check before the file appeared may still commit; nothing after it.
        assert planted_at <= paused["iteration"] <= planted_at + 1
        state = json.loads((folder / "state.json").read_text())
        assert state["iteration"] == paused["iteration"]
        assert list(load_file(str(folder / state["latents_file"])))
        status = comfy.wait_for(lambda: (s := comfy.get(f"/dream_window/status/{name}"))["state"] == "error" and s,
                                timeout=10, what="the status to show the error")
        assert "is a file, not a folder" in status["error_message"]
        log = comfy.log_path.read_bytes()[log_start:].decode(errors="replace")
        assert log.count(f"dream_window[{name}]: iteration failed (node 9 DreamWindowCommit: ") == 3, log[-3000:]
    finally:
        frames.unlink()
        aside.rename(frames)
    comfy.control("resume", name)  # the fix the message names, then the loop goes on
    comfy.wait_for(lambda: iteration(comfy, name) >= paused["iteration"] + 2, timeout=60, what="the loop to go on")
    comfy.control("stop", name)
    assert comfy.session(name)["last_error"] is None


def test_a_file_where_the_cache_folder_should_be_leaves_the_loop_running_without_caching(comfy):
    name = "cache_blocked"
    wf = dream_workflow(name)
    wf["3"]["inputs"]["admission"] = "always"
    comfy.queue(wf)
    comfy.wait_for(lambda: iteration(comfy, name) >= 2, timeout=120, what="2 iterations")
    log_start = comfy.log_path.stat().st_size
    cache = comfy.base / "output" / "dream_window_cache" / name
    aside = cache.with_name(f"{name}_aside")
    cache.rename(aside)
    cache.write_text("a file, not a folder")
    try:
        planted_at = iteration(comfy, name)
        comfy.wait_for(lambda: iteration(comfy, name) >= planted_at + 3, timeout=60,
                       what="the loop to go on without its cache")
        summary = comfy.session(name)
        assert summary["state"] == "running" and summary["last_error"] is None
        info = comfy.get(f"/dream_window/cache/{name}")
        # The file may land between an entry's write and the index's: either write is the one refused.
        for words in ("cannot write", str(cache), "remove a file or link where the folder should be"):
            assert words in info["cache_error"], info["cache_error"]
        log = comfy.log_path.read_bytes()[log_start:].decode(errors="replace")
        assert f"dream_window[{name}]: node 9 DreamWindowCommit: keyframe" in log, log[-3000:]
        assert "not cached, the loop goes on without caching" in log
    finally:
        comfy.control("stop", name)
        cache.unlink()
        aside.rename(cache)
