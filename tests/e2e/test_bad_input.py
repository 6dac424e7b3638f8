"""Bad input gets a clear error naming the node and the fix; the session's state survives."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from PIL import Image

from helpers.dream_loop import captured, dream_workflow

pytestmark = pytest.mark.e2e


def run_once(comfy, wf, name, iteration):
    comfy.queue(wf)
    return comfy.wait_for(lambda: (s := comfy.session(name)) and (s["iteration"] >= iteration or s["last_error"]) and s,
                          timeout=60, what=f"{name} to finish an iteration")


def test_invalid_session_name_is_a_validation_error(comfy):
    wf = dream_workflow("../escape")
    status, data = comfy.post_json("/prompt", {"prompt": wf})
    assert status == 400
    assert "invalid session name" in json.dumps(data["node_errors"])
    assert not (comfy.base / "output" / "escape").exists()


def test_resolution_change_mid_session_needs_a_reset(comfy):
    state = run_once(comfy, dream_workflow("sizes", autoqueue=False), "sizes", 1)
    assert state["iteration"] == 1 and state["state"] == "idle"
    folder = comfy.base / "output" / "dream_window" / "sizes"
    latents_before = {p.name: p.read_bytes() for p in folder.glob("latents-*")}
    state = run_once(comfy, dream_workflow("sizes", size=128, autoqueue=False), "sizes", 2)
    err = state["last_error"]
    assert err and "DreamWindowKeyframeSource" in err["message"] and "reset the session" in err["message"]
    assert state["iteration"] == 1
    assert {p.name: p.read_bytes() for p in folder.glob("latents-*")} == latents_before
    comfy.control("reset", "sizes")
    state = run_once(comfy, dream_workflow("sizes", size=128, autoqueue=False), "sizes", 1)
    assert state["iteration"] == 1 and state["last_error"] is None


@pytest.mark.parametrize("folder, setup, expected", [
    ("missing_seeds", None, "does not exist"),
    ("empty_seeds", "empty", "holds no"),
    ("../../etc", None, "leaves ComfyUI's input folder"),
])
def test_seed_folder_errors(comfy, folder, setup, expected):
    if setup == "empty":
        (comfy.base / "input" / folder).mkdir(parents=True, exist_ok=True)
    name = f"seedless_{setup or 'x'}_{len(folder)}"
    wf = dream_workflow(name, autoqueue=False)
    wf["5"]["inputs"]["seed_folder"] = folder
    state = run_once(comfy, wf, name, 1)
    assert state["iteration"] == 0
    assert "DreamWindowKeyframeSource" in state["last_error"]["message"]
    assert expected in state["last_error"]["message"]


def test_seed_folder_bootstraps_the_first_keyframe(comfy):
    seeds = comfy.base / "input" / "seeds"
    seeds.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (50, 100, 3), dtype=np.uint8)).save(seeds / "seed.png")
    wf = dream_workflow("seeded", autoqueue=False, capture="cap_seeded")
    wf["5"]["inputs"]["seed_folder"] = "seeds"
    state = run_once(comfy, wf, "seeded", 1)
    assert state["iteration"] == 1 and state["last_error"] is None
    src = captured(comfy.base / "output", "cap_seeded", "src")
    assert len(src) == 1 and src[0].shape == (1, 4, 8, 8) and src[0].abs().sum() > 0, "seed encoded by the VAE"


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_control_routes_reject_bad_requests(comfy, prefix):
    path = f"{prefix}/dream_window/stop"
    status, body, _ = comfy.request("POST", path, b'{"session": "dream"}', {"Content-Type": "text/plain"})
    assert status == 415 and "application/json" in json.loads(body)["error"]
    status, body, _ = comfy.request("GET", path)
    assert status == 405
    status, body, _ = comfy.request("POST", path, b"{nope", {"Content-Type": "application/json"})
    assert status == 400 and "not valid JSON" in json.loads(body)["error"]
    status, data = comfy.post_json(path, {"session": "../../etc"})
    assert status == 400 and "invalid session name" in data["error"]
    status, data = comfy.post_json(path, {"session": "never_made"})
    assert status == 404 and "unknown session" in data["error"]
    status, data = comfy.post_json(f"{prefix}/dream_window/explode", {"session": "dream"})
    assert status == 404
    status, data = comfy.post_json(path, ["session"])
    assert status == 400


def test_sessions_route_lists_state(comfy):
    run_once(comfy, dream_workflow("listed", autoqueue=False), "listed", 1)
    listed = comfy.get("/dream_window/sessions")["sessions"]
    entry = next(s for s in listed if s["session"] == "listed")
    assert entry["iteration"] == 1 and entry["frames"] == 1 and entry["state"] == "idle"
    assert entry["disk_bytes"] > 0
    names = [s["session"] for s in comfy.get("/api/dream_window/sessions")["sessions"]]
    assert names == [s["session"] for s in listed]


@pytest.mark.parametrize("node, key, value, entries, words", [
    # ComfyUI lists a failed validate_inputs once per input the function names: the keyframe source
    # names width and height (the multiple-of-8 check ComfyUI does not make), so a bad size is listed twice.
    ("5", "width", 68, 2, ("DreamWindowKeyframeSource", "width must be a multiple of 8 from 64 to 8192, got 68")),
    ("5", "height", 100, 2, ("DreamWindowKeyframeSource", "height must be a multiple of 8 from 64 to 8192, got 100")),
    ("5", "base_seed", -1, 1, ("Value -1 smaller than min of 0", "base_seed")),
    ("5", "seed_mode", "chaos", 1, ("seed_mode: 'chaos' not in ['random', 'sequence']",)),
    ("5", "denoise", 1.5, 1, ("Value 1.5 bigger than max of 1.0", "denoise")),
    ("4", "name", "../escape", 1, ("DreamWindowSession", "invalid session name")),
    ("3", "tuning", '{"injection_probability": 0.3,}', 1,
     ("DreamWindowCache", "tuning is not valid JSON", "line 1 column 31")),
    ("3", "tuning", '[0.3]', 1, ("DreamWindowCache", "tuning must be a JSON object", "got a list")),
    ("3", "tuning", '{"injection_prob": 0.3}', 1,
     ("DreamWindowCache", "unknown tuning key 'injection_prob'", "injection_probability", "reset_policy",
      "collapse_thresholds")),
    ("3", "tuning", '{"injection_probability": "x"}', 1,
     ("DreamWindowCache", "injection_probability must be a number from 0 to 1, got 'x'")),
    ("3", "tuning", '{"injection_probability": 1.5}', 1,
     ("DreamWindowCache", "injection_probability must be a number from 0 to 1, got 1.5")),
    ("3", "tuning", '{"warmup_keyframes": 2.5}', 1,
     ("DreamWindowCache", "warmup_keyframes must be a whole number >= 0, got 2.5")),
    ("3", "tuning", '{"windows": {"color": [2.0, 1.0]}}', 1,
     ("DreamWindowCache", "windows", "'color'", "needs low < high")),
    ("3", "tuning", '{"reset_policy": "sometimes"}', 1,
     ("DreamWindowCache", "reset_policy must be one of 'window', 'partial', 'full', 'none', got 'sometimes'")),
    ("3", "tuning", '{"collapse_thresholds": {"colour": [0.1, 0.2]}}', 1,
     ("DreamWindowCache", "collapse_thresholds", "'colour'", "'color', 'struct'")),
    ("3", "strategy", "telepathy", 1, ("strategy: 'telepathy' not in", "'dual_metric'")),
])
def test_bad_value_is_refused_at_queue_time_with_one_clear_message(comfy, node, key, value, entries, words):
    """Each bad value comes back from POST /prompt as HTTP 400 on its node, as one message naming the input (and,
    for a tuning key, what it allows); ComfyUI repeats a validate_inputs message for each input the function
    names, so the nodes name only the inputs ComfyUI does not check itself."""
    name = f"queued_{zlib.crc32(f'{key}={value}'.encode())}"
    wf = dream_workflow(name, autoqueue=False)
    wf[node]["inputs"][key] = value
    status, data = comfy.post_json("/prompt", {"prompt": wf})
    assert status == 400, data
    assert set(data["node_errors"]) == {node}, data["node_errors"]
    errors = data["node_errors"][node]["errors"]
    assert len(errors) == entries, errors
    messages = {f'{error["message"]}: {error["details"].split(" - ", 1)[-1]}' for error in errors}
    assert len(messages) == 1, messages
    message = messages.pop()
    for word in words:
        assert word in message, (word, message)
    assert comfy.session(name) is None, "nothing ran"
