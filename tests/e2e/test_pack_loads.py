"""The pack as ComfyUI sees it: nodes, tooltips, JS, templates and the UI workflow twin."""

from __future__ import annotations

import json

import pytest

from helpers.dream_loop import NODE_IDS
from tools.harness.build_ui_workflow import has_control, input_specs, is_widget
from tools.harness.comfy_process import PACK_NAME, REPO

pytestmark = pytest.mark.e2e

FRONTEND_ONLY = {"Note", "MarkdownNote"}
MODEL_COMBOS = {("CheckpointLoaderSimple", "ckpt_name"): "checkpoints", ("CLIPVisionLoader", "clip_name"): "clip_vision"}
"""Model inputs of the bundled workflows, with the models folder their files go in."""


def test_nodes_load_with_descriptions_and_tooltips(comfy):
    info = comfy.get("/object_info")
    log = comfy.log_path.read_text(errors="replace")
    assert not [line for line in log.splitlines() if "IMPORT FAILED" in line and PACK_NAME in line]
    for node_id in NODE_IDS:
        node = info[node_id]
        assert node["python_module"].startswith("custom_nodes."), node["python_module"]
        assert node["description"] and node["category"] == "dream_window"
        for section in ("required", "optional"):
            for name, spec in node["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert len(node["output_tooltips"]) == len(node["output"]) and all(node["output_tooltips"])
    assert info["DreamWindowCommit"]["output_node"] and info["DreamWindowAutoQueue"]["output_node"]


def test_js_and_templates_are_served(comfy):
    assert f"/extensions/{PACK_NAME}/js/dream_window.js" in comfy.get("/extensions")
    status, body, _ = comfy.request("GET", f"/extensions/{PACK_NAME}/js/dream_window.js")
    assert status == 200 and b"registerExtension" in body
    assert sorted(comfy.get("/workflow_templates")[PACK_NAME]) == ["dream_window", "dream_window_clip"], \
        "API twins stay out of the browser"
    for name in ("dream_window", "dream_window_clip"):
        status, body, headers = comfy.request("GET", f"/api/workflow_templates/{PACK_NAME}/{name}.jpg")
        assert status == 200 and headers["Content-Type"] == "image/jpeg", "template browser thumbnail"
    status, body, _ = comfy.request("GET", f"/api/workflow_templates/{PACK_NAME}/dream_window.json")
    assert status == 200 and json.loads(body) == json.loads((REPO / "workflows" / "dream_window.json").read_text())


def widget_specs(info: dict):
    return [(name, spec) for name, spec in input_specs(info) if is_widget(spec)]


def check_value(node_type: str, name: str, spec: list, value):
    opts = spec[1] if len(spec) > 1 else {}
    if (node_type, name) in MODEL_COMBOS:
        assert isinstance(value, str) and value.endswith((".safetensors", ".ckpt")), value
    elif isinstance(spec[0], list) or spec[0] == "COMBO":
        options = spec[0] if isinstance(spec[0], list) else opts["options"]
        assert value in options, f"{node_type}.{name}={value!r} not in {options}"
    elif spec[0] in ("INT", "FLOAT"):
        assert isinstance(value, (int, float)) and not isinstance(value, bool)
        assert opts.get("min", value) <= value <= opts.get("max", value), f"{node_type}.{name}={value}"
    elif spec[0] == "BOOLEAN":
        assert isinstance(value, bool)
    else:
        assert isinstance(value, str)


def ui_to_api(ui: dict, object_info: dict) -> dict:
    """Convert the UI workflow back to API form (how the frontend queues it)."""
    links = {link[0]: link for link in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        info = object_info[node["type"]]
        inputs, values = {}, iter(node["widgets_values"])
        for name, spec in widget_specs(info):
            value = next(values)
            if has_control(name, spec):
                assert next(values) in ("fixed", "randomize", "increment", "decrement")
            check_value(node["type"], name, spec, value)
            inputs[name] = value
        assert next(values, None) is None, f"{node['type']} has extra widget values"
        for slot in node["inputs"]:
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


@pytest.mark.parametrize("name", ["dream_window", "dream_window_clip"])
def test_ui_workflow_matches_object_info_and_its_api_twin(comfy, name):
    object_info = comfy.get("/object_info")
    ui = json.loads((REPO / "workflows" / f"{name}.json").read_text())
    for node in ui["nodes"]:
        assert node["type"] in object_info or node["type"] in FRONTEND_ONLY, node["type"]
    assert any(n["type"] in FRONTEND_ONLY and "Queue" in n["widgets_values"][0] for n in ui["nodes"]), "a Note explains start/stop"
    api = json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())
    for nid, node in api.items():
        node.pop("_meta", None)
        # Each model names its public download where the frontend's missing-model dialog looks for it.
        models = [{"name": value, "directory": MODEL_COMBOS[node["class_type"], key]}
                  for key, value in node["inputs"].items() if (node["class_type"], key) in MODEL_COMBOS]
        offered = next(n for n in ui["nodes"] if str(n["id"]) == nid)["properties"].get("models", [])
        assert [{"name": m["name"], "directory": m["directory"]} for m in offered] == models, (nid, offered)
        assert all(m["url"].startswith("https://huggingface.co/") and m["url"].endswith(".safetensors")
                   for m in offered), offered
    rebuilt = ui_to_api(ui, object_info)
    assert rebuilt.keys() == api.keys()
    for nid, node in api.items():
        for key, value in node["inputs"].items():
            assert rebuilt[nid]["inputs"][key] == value, (nid, key, rebuilt[nid]["inputs"][key], value)


def test_bundled_api_workflow_has_the_documented_defaults():
    api = json.loads((REPO / "workflows" / "api" / "dream_window.json").read_text())
    assert api["1"]["class_type"] == "CheckpointLoaderSimple"
    src, sampler = api["5"]["inputs"], api["6"]["inputs"]
    assert (src["width"], src["height"], src["denoise"]) == (512, 256, 0.2)
    assert (sampler["steps"], sampler["cfg"], sampler["sampler_name"], sampler["scheduler"]) == (10, 6.0, "euler", "karras")
    assert api["7"]["inputs"]["frames"] == 10
    cache = api["3"]["inputs"]
    assert (cache["strategy"], cache["capacity"], cache["eviction"]) == ("dual_metric", 50, "fifo")
    assert api["5"]["inputs"]["mode"] == "hybrid" and api["5"]["inputs"]["cache"] == ["3", 0]
    assert api["12"]["inputs"] == {"model": ["1", 0], "enabled": True} and api["6"]["inputs"]["model"] == ["12", 0], \
        "CUDA graphs on by default (a no-op without CUDA), after the recorded GPU run"
