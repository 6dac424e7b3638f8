"""The bundled UI workflows, loaded in the real graph editor, queue exactly their API twins."""

from __future__ import annotations

import json

import pytest

from helpers.browser import open_graph_editor
from tools.harness.comfy_process import REPO

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

UI_WORKFLOWS = sorted(path.name for path in (REPO / "workflows").glob("*.json"))

# Loads a UI workflow the way the editor opens a file, then reads back the node types the frontend does
# not know, every node's widget values and the API prompt the Queue button would send.
LOAD_AND_CONVERT = """async (workflow) => {
  const app = window.comfyAPI.app.app;
  await app.loadGraphData(workflow, true, false);
  const widgets = {};
  for (const node of app.graph.nodes) {
    widgets[String(node.id)] = (node.widgets ?? []).map((widget) => widget.value);
  }
  const unknown = app.graph.nodes.map((node) => node.type)
    .filter((type) => !(type in window.LiteGraph.registered_node_types));
  const { output } = await app.graphToPrompt();
  return { unknown, widgets, output };
}"""


@pytest.fixture(scope="module")
def editor(comfy, open_page):
    """The graph editor, loaded once for the module: (page, Console)."""
    return open_graph_editor(comfy, open_page, "workflows")


@pytest.mark.parametrize("name", UI_WORKFLOWS)
def test_ui_workflow_queues_its_api_twin(editor, name):
    page, console = editor
    ui = json.loads((REPO / "workflows" / name).read_text())
    api = json.loads((REPO / "workflows" / "api" / name).read_text())
    loaded = page.evaluate(LOAD_AND_CONVERT, ui)
    assert not loaded["unknown"], f"{name}: nodes the frontend does not know: {loaded['unknown']}"

    # The widgets the frontend creates hold exactly the values the file lists, slot for slot.
    for node in ui["nodes"]:
        assert loaded["widgets"][str(node["id"])] == node["widgets_values"], (
            f"{name}: node {node['id']} {node['type']}: the frontend's widgets hold "
            f"{loaded['widgets'][str(node['id'])]}, the file lists {node['widgets_values']}")

    # The prompt the Queue button sends is the API twin, input for input.
    output = loaded["output"]
    assert sorted(output) == sorted(api), f"{name}: nodes {sorted(output)} vs the API twin's {sorted(api)}"
    for node_id, node in api.items():
        assert output[node_id]["class_type"] == node["class_type"]
        assert output[node_id]["inputs"] == node["inputs"], (
            f"{name}: node {node_id} {node['class_type']}: the frontend queues {output[node_id]['inputs']}, "
            f"the API twin holds {node['inputs']}")
    assert not console.problems(), console.problems()
