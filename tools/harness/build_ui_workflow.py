"""Builds the UI-format workflows (what the graph editor loads) from their API twins.

    python tools/harness/build_ui_workflow.py

For every ``workflows/api/X.json`` this writes ``workflows/X.json`` with a layout, links,
widget values in ComfyUI's widget order and a Note node explaining start and stop. The API
workflows are the source of truth; node definitions come from ``GET /object_info`` of a
throw-away ComfyUI server with the pack loaded. Each loader node names where its model comes
from (``properties.models``), as ComfyUI's own templates do.
"""

from __future__ import annotations

import json
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.harness.comfy_process import REPO, ComfyServer  # noqa: E402

NOTE = """Dream Window — an endless dream loop

Start: press Queue (Run) once. The AutoQueue node's supervisor keeps queueing the workflow on the server
by itself, so you can close the browser. Frames go to output/dream_window/<session>/frames and
output/dream_window/<session>/current_frame.png always shows the newest one.

Stop / pause / resume: the Dream Window panel, or POST /dream_window/stop | pause | resume | start with
{"session": "dream"} (Content-Type: application/json). A failed iteration is retried 3 times, then the session
pauses with the error in GET /dream_window/sessions. ComfyUI's Cancel pauses the session.

Changing width/height of a running session needs a reset (POST /dream_window/reset).
Load any SD1.5-family checkpoint in Load Checkpoint."""

COLUMNS = {"1": (40, 120), "2": (420, 60), "3": (860, 560), "4": (40, 420), "5": (420, 600), "6": (860, 120),
           "7": (1240, 120), "9": (1600, 120), "10": (1600, 520), "11": (40, 860),
           "12": (40, 700)}
MODEL_DOWNLOADS = {
    "v1-5-pruned-emaonly.safetensors": (
        "checkpoints",
        "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/v1-5-pruned-emaonly.safetensors"),
    "clip_vision_vit_l.safetensors": (
        "clip_vision", "https://huggingface.co/openai/clip-vit-large-patch14/resolve/main/model.safetensors"),
}
"""Model file → (models folder, public download URL) for every model a bundled workflow names. The frontend's
missing-model dialog offers these downloads; the pack itself downloads nothing."""
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
LEGACY_SEED_NAMES = ("seed", "noise_seed")
"""INT inputs the frontend gives a "control after generate" widget unless the input says otherwise."""


def is_widget(spec: list) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def has_control(name: str, spec: list) -> bool:
    """Whether the frontend adds a "control after generate" widget after this input's widget."""
    options = spec[1] if len(spec) > 1 else {}
    return bool(options.get("control_after_generate", spec[0] == "INT" and name in LEGACY_SEED_NAMES))


def input_specs(info: dict) -> list[tuple[str, list]]:
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items() if k != "hidden"}
    out = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            out.append((name, info["input"][section][name]))
    return out


def node_properties(node: dict) -> dict:
    """A node's properties as the editor saves them, plus the download of each model it loads."""
    models = [{"name": value, "url": MODEL_DOWNLOADS[value][1], "directory": MODEL_DOWNLOADS[value][0]}
              for value in node["inputs"].values() if isinstance(value, str) and value in MODEL_DOWNLOADS]
    return {"Node name for S&R": node["class_type"], **({"models": models} if models else {})}


def build(object_info: dict, api: dict) -> dict:
    nodes, links = [], []
    outputs_links: dict[tuple[str, int], list[int]] = {}
    for nid, node in api.items():
        for key, value in node["inputs"].items():
            if isinstance(value, list):
                link_id = len(links) + 1
                links.append([link_id, int(value[0]), value[1], int(nid), key, None])
                outputs_links.setdefault((str(value[0]), value[1]), []).append(link_id)
    for order, (nid, node) in enumerate(api.items()):
        info = object_info[node["class_type"]]
        inputs, widgets = [], []
        for name, spec in input_specs(info):
            value = node["inputs"].get(name, spec[1].get("default") if len(spec) > 1 else None)
            linked = isinstance(node["inputs"].get(name), list)
            typ = "COMBO" if isinstance(spec[0], list) else spec[0]
            if linked:
                entry = {"name": name, "type": typ, "link": None}
                if is_widget(spec):
                    entry["widget"] = {"name": name}
                inputs.append(entry)
            if is_widget(spec):
                widgets.append(value if not linked else spec[1].get("default"))
                if has_control(name, spec):
                    widgets.append("fixed" if linked else "randomize")
        for slot, entry in enumerate(inputs):
            for link in links:
                if link[3] == int(nid) and link[4] == entry["name"]:
                    entry["link"] = link[0]
        outputs = []
        for slot, typ in enumerate(info["output"]):
            name = info["output_name"][slot] if info.get("output_name") else typ
            outputs.append({"name": name, "type": typ, "links": outputs_links.get((nid, slot), []), "slot_index": slot})
        nodes.append({"id": int(nid), "type": node["class_type"], "pos": list(COLUMNS.get(nid, (40, 40 + 60 * order))),
                      "size": [320, 180], "flags": {}, "order": order, "mode": 0, "inputs": inputs,
                      "outputs": outputs, "title": node.get("_meta", {}).get("title", info["display_name"]),
                      "properties": node_properties(node), "widgets_values": widgets})
    for link in links:
        target = next(n for n in nodes if n["id"] == link[3])
        link[4] = next(i for i, e in enumerate(target["inputs"]) if e["name"] == link[4])
        source = next(n for n in nodes if n["id"] == link[1])
        link[5] = source["outputs"][link[2]]["type"]
    note_id = max(n["id"] for n in nodes) + 1
    nodes.append({"id": note_id, "type": "Note", "pos": [40, 1100], "size": [760, 300], "flags": {},
                  "order": len(nodes), "mode": 0, "inputs": [], "outputs": [], "title": "How to start and stop",
                  "properties": {}, "widgets_values": [NOTE], "color": "#432", "bgcolor": "#653"})
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, "dream-window/" + json.dumps(api, sort_keys=True))),
            "revision": 0, "last_node_id": note_id, "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def main() -> None:
    with tempfile.TemporaryDirectory() as base:
        server = ComfyServer(Path(base)).start()
        try:
            object_info = server.get("/object_info")
        finally:
            server.stop()
    for api_path in sorted((REPO / "workflows" / "api").glob("*.json")):
        api = json.loads(api_path.read_text())
        target = REPO / "workflows" / api_path.name
        target.write_text(json.dumps(build(object_info, api), indent=2) + "\n")
        print(f"wrote {target.relative_to(REPO)}")


if __name__ == "__main__":
    main()
