"""Test variants of the bundled API workflow (only whitelisted fields change), what a loop wrote (captured
latents, where a restart resumes) and its frame stream."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from pathlib import Path

import torch
from safetensors.torch import load_file

from tools.harness.comfy_process import REPO, TINY_SD15, load_api_workflow

NODE_IDS = ["DreamWindowSession", "DreamWindowKeyframeSource", "DreamWindowInterpolate", "DreamWindowCommit",
            "DreamWindowAutoQueue", "DreamWindowPrompts", "DreamWindowCache", "DreamWindowCudaGraph",
            "DreamWindowLoadFrames"]
"""The pack's nodes, by node id."""
TEST_PACKS = {"dw_test_pack": REPO / "tests" / "fixtures" / "dw_test_pack"}

# Fields a test may change in the bundled workflow; everything else must stay as shipped.
WHITELIST = {("1", "ckpt_name"), ("5", "width"), ("5", "height"), ("6", "steps"), ("4", "name"),
             ("10", "enabled"), ("10", "max_iterations"), ("10", "buffer_target"), ("3", "injection"),
             ("3", "tuning"), ("3", "strategy"), ("3", "cache_name"), ("5", "mode"), ("5", "seed_folder"),
             ("11", "clip_name"), ("7", "frames"), ("12", "enabled")}


def dream_workflow(session: str = "dream", size: int = 64, steps: int = 2, capture: str | None = None,
                  fault: bool = False, autoqueue: bool = True, injection: bool = False,
                  name: str = "dream_window") -> dict:
    """The bundled API workflow at test size with tiny models; optional captures and fault node.

    Injection is off unless asked for, so the sampler input is always the previous keyframe.
    """
    wf = load_api_workflow(name)
    wf["3"]["inputs"]["injection"] = injection
    wf["1"]["inputs"]["ckpt_name"] = TINY_SD15
    wf["4"]["inputs"]["name"] = session
    wf["5"]["inputs"].update(width=size, height=size)
    wf["6"]["inputs"]["steps"] = steps
    wf["10"]["inputs"]["enabled"] = autoqueue
    wf["10"]["inputs"]["buffer_target"] = 0.0  # throttling off: generate as fast as possible
    if capture:
        # Independent capture with core SaveLatent: the sampler's input and its output.
        wf["100"] = {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": f"{capture}/src"}}
        wf["101"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": f"{capture}/out"}}
    if fault:
        wf["102"] = {"class_type": "DWTestFault", "inputs": {"latent": ["5", 0]}}
        wf["6"]["inputs"]["latent_image"] = ["102", 0]
    return wf


def changed_fields(wf: dict, name: str = "dream_window") -> set[tuple[str, str]]:
    """(node, input) pairs of the shipped nodes whose value differs from the bundled file."""
    shipped = load_api_workflow(name)
    diff = set()
    for nid, node in shipped.items():
        assert wf[nid]["class_type"] == node["class_type"]
        for key, value in node["inputs"].items():
            if wf[nid]["inputs"].get(key) != value and not (nid, key) == ("6", "latent_image"):
                diff.add((nid, key))
    return diff


def captured(output: Path, capture: str, kind: str) -> list[torch.Tensor]:
    files = sorted((output / capture).glob(f"{kind}_*.latent"))
    return [load_file(str(f))["latent_tensor"] for f in files]


def resume_point(session_folder: Path) -> tuple[int, torch.Tensor | None, bool]:
    """Where a restarted server resumes the session stored in ``session_folder``: (keyframe, its
    latent, whether it goes back one). The newest committed keyframe, unless its own frame (the
    last the frame writer writes) is not on disk: then the keyframe before, whose pair is redone."""
    state = json.loads((session_folder / "state.json").read_text())
    recent = load_file(str(session_folder / state["latents_file"])) if state.get("latents_file") else {}
    kept = [recent[key] for key in sorted(recent, key=lambda key: int(key.split("_")[1]))]
    k = state["iteration"]
    newest_frame = session_folder / "frames" / f"frame_{state['next_frame'] - 1:08d}.png"
    if k >= 1 and state.get("stats", {}).get("frames_last_iteration") and not newest_frame.exists():
        return k - 1, (kept[-2] if len(kept) > 1 else None), True
    return k, (kept[-1] if kept else None), False


def read_stream(comfy, session: str, count: int | None, fmt: str | None = None,
                timeout: float = 60) -> tuple[dict, list]:
    """The response headers and ``count`` parts, as (headers, body, arrival time), of ``session``'s stream;
    ``count`` None reads every part until the server ends the stream."""
    query = "&".join(([f"limit={count}"] if count else []) + ([f"format={fmt}"] if fmt else []))
    with urllib.request.urlopen(f"{comfy.url}/dream_window/stream/{session}?{query}", timeout=timeout) as resp:
        parts = []
        while count is None or len(parts) < count:
            line = resp.readline()
            if not line and count is None:
                break
            assert line, f"the stream ended after {len(parts)} parts"
            if not line.strip():
                continue  # the CRLF that closes a part
            assert line.strip() == b"--dwframe", line
            headers = {}
            while line := resp.readline().strip():
                key, value = line.decode().split(":", 1)
                headers[key.strip().lower()] = value.strip()
            body = resp.read(int(headers["content-length"]))
            parts.append((headers, body, time.monotonic()))
        return dict(resp.headers), parts


@contextlib.contextmanager
def held_iteration(comfy):
    """The session's next iteration held in flight (by the test pack's fault node, between Keyframe Source
    and the sampler) until the block ends."""
    inputs = comfy.base / "input"
    inputs.mkdir(parents=True, exist_ok=True)
    (inputs / "dwtest_hold").touch()
    try:
        comfy.wait_for((inputs / "dwtest_held").exists, timeout=60, what="an iteration held in flight")
        yield
    finally:
        (inputs / "dwtest_hold").unlink(missing_ok=True)


def running_with_a_keyframe(comfy, name: str) -> int:
    """Queue the test-size workflow with the fault node for ``name``; the log's length once it made one."""
    comfy.queue(dream_workflow(name, fault=True))
    comfy.wait_for(lambda: (comfy.session(name) or {}).get("iteration", 0) >= 1, timeout=60, what="a first keyframe")
    return len(comfy.log_tail(10 ** 9))
