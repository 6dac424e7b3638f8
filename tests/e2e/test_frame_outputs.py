"""Frames behave like ComfyUI outputs: the workflow in each frame PNG, the Commit node's keyframe IMAGE
wired into core Preview Image, and the loader node's IMAGE batch of a session's frames."""

from __future__ import annotations

import io
import json
import urllib.parse

import numpy as np
import pytest
from PIL import Image

from helpers.dream_loop import dream_workflow

pytestmark = pytest.mark.e2e

SESSION = "frame_outputs"
WORKFLOW = {"last_node_id": 200, "nodes": [{"id": 9, "type": "DreamWindowCommit", "title": "Commit ☾"}],
            "links": [], "version": 0.4}
"""Stands in for the graph editor's workflow: ComfyUI stores whatever extra_pnginfo holds."""


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def same_image(shown: np.ndarray, frame: np.ndarray) -> bool:
    """Preview Image truncates ``255 * value`` to 8 bits (the frame writer rounds): the same image
    differs by at most one level per channel."""
    return shown.shape == frame.shape and int(np.abs(shown.astype(int) - frame.astype(int)).max()) <= 1


def frames_folder(comfy, session: str):
    return comfy.base / "output" / "dream_window" / session / "frames"


def queue_with_workflow(comfy, prompt: dict) -> str:
    status, data = comfy.post_json("/prompt", {"prompt": prompt, "client_id": comfy.client_id,
                                               "extra_data": {"extra_pnginfo": {"workflow": WORKFLOW}}})
    assert status == 200, data
    return data["prompt_id"]


def finished(comfy, prompt_id: str) -> dict:
    """The prompt's history entry once it has run."""
    return comfy.wait_for(lambda: comfy.get(f"/history/{prompt_id}").get(prompt_id), timeout=90,
                          what=f"prompt {prompt_id} in the history")


def preview(comfy, entry: dict, node: str) -> list[np.ndarray]:
    """The pixels of the images a Preview Image node showed."""
    out = []
    for image in entry["outputs"][node]["images"]:
        query = urllib.parse.urlencode({key: image[key] for key in ("filename", "subfolder", "type")})
        status, body, _ = comfy.request("GET", f"/view?{query}")
        assert status == 200, body[:200]
        out.append(pixels(body))
    return out


@pytest.fixture(scope="module")
def dreamed(comfy):
    """Two iterations of the loop queued with the editor's workflow (the second queued by the
    supervisor, with the prompt alone), with the Commit node's keyframe wired into Preview Image."""
    wf = dream_workflow(SESSION)
    wf["10"]["inputs"]["max_iterations"] = 2
    wf["200"] = {"class_type": "PreviewImage", "inputs": {"images": ["9", 1]}}
    queue_with_workflow(comfy, wf)
    comfy.wait_for(lambda: (comfy.session(SESSION) or {}).get("state") == "stopped", timeout=120,
                   what="two iterations")
    newest = comfy.session(SESSION)["frames"]
    comfy.wait_for(lambda: (frames_folder(comfy, SESSION) / f"frame_{newest:08d}.png").is_file(),
                   what="the last frame on disk")
    return wf, newest


def test_every_frame_carries_the_prompt_and_workflow_as_save_image_writes_them(comfy, dreamed):
    wf, newest = dreamed
    files = sorted(frames_folder(comfy, SESSION).glob("frame_*.png"))
    assert len(files) == newest > 1
    for path in files:
        with Image.open(path) as image:
            assert set(image.text) == {"prompt", "workflow"}, path.name
            assert json.loads(image.text["prompt"]) == wf, path.name
            assert json.loads(image.text["workflow"]) == WORKFLOW, path.name


def test_frames_queued_by_the_session_after_a_reset_carry_the_workflow_too(comfy):
    """The workflow is kept with the session's stored prompt: the iterations its supervisor queues
    (here a start after a reset, which forgets everything the session held in memory) carry it."""
    name = "frame_outputs_reset"
    wf = dream_workflow(name)
    wf["10"]["inputs"]["max_iterations"] = 1
    queue_with_workflow(comfy, wf)
    comfy.wait_for(lambda: (comfy.session(name) or {}).get("state") == "stopped", timeout=120, what="one iteration")
    before = comfy.session(name)["frames"]
    comfy.control("reset", name)
    comfy.control("start", name)
    comfy.wait_for(lambda: (s := comfy.session(name)) and s["state"] == "stopped" and s["frames"] > before,
                   timeout=120, what="one iteration after the reset")
    newest = frames_folder(comfy, name) / f"frame_{comfy.session(name)['frames']:08d}.png"
    comfy.wait_for(newest.is_file, what="the frame after the reset on disk")
    with Image.open(newest) as image:
        assert json.loads(image.text.get("workflow", "null")) == WORKFLOW, image.text.keys()
        assert json.loads(image.text["prompt"]) == wf


def test_the_commit_keyframe_output_feeds_core_preview_image(comfy, dreamed):
    """The last prompt (the supervisor's second iteration) stays in the history: its Preview Image
    shows that iteration's keyframe, the newest frame."""
    _, newest = dreamed
    entries = [entry for entry in comfy.get("/history").values() if "200" in entry["prompt"][2]
               and entry["prompt"][2]["4"]["inputs"]["name"] == SESSION]
    assert len(entries) == 1 and entries[0]["status"]["status_str"] == "success"
    (shown,) = preview(comfy, entries[0], "200")
    assert same_image(shown, pixels((frames_folder(comfy, SESSION) / f"frame_{newest:08d}.png").read_bytes()))


def test_the_loader_node_returns_the_frames_of_a_range(comfy, dreamed):
    _, newest = dreamed
    prompt = {"1": {"class_type": "DreamWindowLoadFrames",
                    "inputs": {"session_name": SESSION, "first": 2, "last": -1, "stride": 4}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    entry = finished(comfy, comfy.queue(prompt))
    assert entry["status"]["status_str"] == "success", entry["status"]
    wanted = list(range(2, newest + 1, 4))
    loaded = preview(comfy, entry, "2")
    assert len(loaded) == len(wanted) > 1
    for index, image in zip(wanted, loaded):
        assert same_image(image, pixels((frames_folder(comfy, SESSION) / f"frame_{index:08d}.png").read_bytes()))


@pytest.mark.parametrize("inputs, message", [
    ({"session_name": "no_such_session"}, "DreamWindowLoadFrames: no session named 'no_such_session'"),
    ({"session_name": "../frame_outputs"}, "DreamWindowLoadFrames: "),
    ({"first": 100000}, "DreamWindowLoadFrames: session 'frame_outputs': no frame from 100000"),
])
def test_the_loader_node_refuses_what_it_cannot_load(comfy, dreamed, inputs, message):
    prompt = {"1": {"class_type": "DreamWindowLoadFrames",
                    "inputs": {"session_name": SESSION, "first": 0, "last": -1, "stride": 1, **inputs}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    entry = finished(comfy, comfy.queue(prompt))
    errors = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    assert len(errors) == 1 and errors[0]["exception_message"].startswith(message), errors
    if "../" in inputs.get("session_name", ""):
        assert "session name" in errors[0]["exception_message"]
