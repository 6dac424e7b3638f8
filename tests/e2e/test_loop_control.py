"""The loop's control paths on a real ComfyUI: limits, control calls, errors no retry can fix,
TLS, file modes, and the headless demo's ``--iterations``."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time

import pytest

from harness.comfy_process import REPO, ComfyServer, free_port
from loop_helpers import dream_workflow

pytestmark = pytest.mark.e2e

UMASK = 0o027


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


def test_iterations_flag_makes_exactly_that_many_keyframes(tmp_path):
    base = tmp_path / "demo"
    run = [sys.executable, str(REPO / "harness" / "run_dream.py"), "--iterations", "2", "--port", str(free_port()),
           "--base", str(base)]
    for total in (2, 4):  # a second run resumes the session and counts its N from there
        done = subprocess.run(run, capture_output=True, text=True, timeout=300, env={**os.environ})
        assert done.returncode == 0, done.stdout + done.stderr
        state = json.loads((base / "output" / "dream_window" / "dream" / "state.json").read_text())
        frames = sorted((base / "output" / "dream_window" / "dream" / "frames").glob("frame_*.png"))
        assert state["iteration"] == total, done.stdout
        assert len(frames) == 1 + (total - 1) * 11, "README: 1 + (k-1)(N+1) frames after k iterations"
        # Not one iteration more is started, not even one the shutdown cuts short (on a fast GPU it commits).
        assert (base / "comfy.log").read_text(errors="replace").count("got prompt") == total
