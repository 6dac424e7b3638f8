"""DreamWindowCudaGraph on a real ComfyUI 0.3.75 on CPU: its wrapper runs every forward eagerly, bit for bit."""

from __future__ import annotations

import re

import pytest
import torch

from helpers.dream_loop import captured, dream_workflow

pytestmark = pytest.mark.e2e

CPU_REASON = "running eagerly: cpu tensors: CUDA graphs need a CUDA device"


GRAPH_NODE = "12"  # the bundled workflows' DreamWindowCudaGraph, between the checkpoint and KSampler


def sequence_workflow(session: str, graphs: bool) -> dict:
    """The bundled loop at test size, replayable seeds, no autoqueue; its CUDA-graph node on or off."""
    wf = dream_workflow(session, capture=f"cap_{session}", autoqueue=False)
    wf["5"]["inputs"]["seed_mode"] = "sequence"
    wf[GRAPH_NODE]["inputs"]["enabled"] = graphs
    return wf


def run_iteration(comfy, wf: dict, session: str, iteration: int) -> str:
    """Queue ``wf`` and wait until the session committed keyframe ``iteration``; returns the prompt id."""
    prompt_id = comfy.queue(wf)
    state = comfy.wait_for(lambda: (s := comfy.session(session)) and (s["iteration"] >= iteration or s["last_error"])
                           and s, timeout=60, what=f"{session} iteration {iteration}")
    assert state["last_error"] is None and state["iteration"] == iteration, state
    return prompt_id


def test_node_is_a_bit_identical_no_op_on_cpu(comfy):
    info = comfy.get("/object_info/DreamWindowCudaGraph")["DreamWindowCudaGraph"]
    assert info["description"] and info["category"] == "dream_window" and all(info["output_tooltips"])
    assert all(spec[1].get("tooltip") for spec in info["input"]["required"].values())

    with_graphs = sequence_workflow("cg_on", graphs=True)
    first = run_iteration(comfy, with_graphs, "cg_on", 1)
    entry = comfy.wait_for(lambda: comfy.get(f"/history/{first}").get(first), what="the prompt in the history")
    cached = {node for event, data in entry["status"]["messages"] if event == "execution_cached"
              for node in data["nodes"]}
    if GRAPH_NODE not in cached:  # a node served from ComfyUI's cache reports no ui
        assert entry["outputs"][GRAPH_NODE]["text"][0].startswith("no CUDA device (cpu)")
    run_iteration(comfy, with_graphs, "cg_on", 2)
    for i in (1, 2):
        run_iteration(comfy, sequence_workflow("cg_off", graphs=False), "cg_off", i)

    output = comfy.base / "output"
    with_node, without = captured(output, "cap_cg_on", "out"), captured(output, "cap_cg_off", "out")
    assert len(with_node) == len(without) == 2
    for a, b in zip(with_node, without):
        assert torch.equal(a, b), "keyframes differ with the node on CPU"
    assert not torch.equal(with_node[0], with_node[1]), "the two keyframes should differ (sequence seeds)"

    # The bundled node's output is cached across sessions of the shared server (same inputs), so its
    # wrapper, and its one-time log line, may come from an earlier test.
    log = comfy.log_path.read_text(errors="replace")
    assert f"DreamWindowCudaGraph #{GRAPH_NODE}: {CPU_REASON}" in log


def test_patches_are_refused_and_clones_after_the_node_share_its_checks(comfy):
    # FreeU (before the node) adds an output-block patch; RescaleCFG (after it) clones the model again.
    wf = sequence_workflow("cg_patched", graphs=True)
    wf["120"] = {"class_type": "FreeU_V2", "inputs": {"model": ["1", 0], "b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}}
    wf[GRAPH_NODE]["inputs"]["model"] = ["120", 0]
    wf["122"] = {"class_type": "RescaleCFG", "inputs": {"model": [GRAPH_NODE, 0], "multiplier": 0.7}}
    wf["6"]["inputs"]["model"] = ["122", 0]
    start = len(comfy.log_path.read_text(errors="replace"))
    run_iteration(comfy, wf, "cg_patched", 1)
    log = comfy.log_path.read_text(errors="replace")[start:]
    # Refused for the patch, not as "outside a sampling run": the clone's run armed the shared wrapper.
    assert log.count(f"DreamWindowCudaGraph #{GRAPH_NODE}: running eagerly: transformer_options patches: "
                     "output_block_patch") == 1
    [fallbacks] = re.findall(rf"DreamWindowCudaGraph #{GRAPH_NODE}: after 1 sampling runs: 0 captures, 0 replays, "
                             r"(\d+) fallbacks", log)
    assert int(fallbacks) >= 2, "both steps of the keyframe went through the wrapper"
