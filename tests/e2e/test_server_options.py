"""What a server's own files and flags change: the open_clip choices list what models/clip_vision holds,
and ``--disable-metadata`` keeps the workflow out of the frames, as it does for Save Image.

One server for the module: started with ``--disable-metadata`` on a models folder that holds an open_clip
weights file besides the harness's tiny models."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from helpers.dream_loop import dream_workflow
from tools.harness.comfy_process import ComfyServer, ensure_models

pytestmark = pytest.mark.e2e

WEIGHTS = "dw_test_open_clip_vit_b_32.safetensors"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("options")
    models, shared = base / "models_src", ensure_models()
    models.mkdir()
    for folder in shared.iterdir():
        if folder.name != "clip_vision":
            (models / folder.name).symlink_to(folder, target_is_directory=True)
    (models / "clip_vision").mkdir()
    for path in (shared / "clip_vision").iterdir():
        (models / "clip_vision" / path.name).symlink_to(path)
    (models / "clip_vision" / WEIGHTS).write_bytes(b"never loaded: only listed")
    srv = ComfyServer(base / "comfy", models=models, args=("--disable-metadata",)).start()
    yield srv
    srv.stop()


def test_open_clip_inputs_are_choices_of_what_is_installed(server):
    import open_clip

    optional = server.get("/object_info/DreamWindowCache")["DreamWindowCache"]["input"]["optional"]
    weights, config = optional["open_clip_weights"], optional["open_clip_config"]
    assert weights[0][0] == "" and WEIGHTS in weights[0], weights
    assert weights[1]["default"] == ""
    assert config[0] == open_clip.list_models() and config[1]["default"] == "ViT-B-32"
    assert "tooltip" in weights[1] and "tooltip" in config[1]


@pytest.mark.parametrize("field, value", [("open_clip_weights", "not_installed.safetensors"),
                                          ("open_clip_config", "ViT-Nope")])
def test_a_name_not_in_the_list_is_refused_when_queued(server, field, value):
    wf = dream_workflow("refused")
    wf["3"]["inputs"][field] = value
    status, data = server.post_json("/prompt", {"prompt": wf})
    assert status == 400, data
    errors = data["node_errors"]["3"]["errors"]
    assert [(e["type"], e["extra_info"]["input_name"]) for e in errors] == [("value_not_in_list", field)], errors
    assert value in errors[0]["details"]
    assert not (server.base / "output" / "dream_window" / "refused").exists()


def test_with_disable_metadata_frames_carry_no_workflow(server):
    wf = dream_workflow("no_metadata", autoqueue=False)
    status, data = server.post_json("/prompt", {"prompt": wf, "extra_data": {"extra_pnginfo": {"workflow": {"n": 1}}}})
    assert status == 200, data
    frame = server.base / "output" / "dream_window" / "no_metadata" / "frames" / "frame_00000001.png"
    # The commit writes the frames first and state.json after them: wait for the keyframe to be durable.
    server.wait_for(lambda: (s := server.session("no_metadata")) and s["iteration"] == 1, timeout=90,
                    what="the first keyframe")
    assert json.loads((frame.parents[1] / "state.json").read_text())["iteration"] == 1
    with Image.open(frame) as image:
        assert image.text == {}
        image.load()
