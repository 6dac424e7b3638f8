"""Every node and route, fed invalid values: each row names what its error must say (the node or the
route, and the fix); the server keeps running and the session's committed state does not change.

Node rows are small hand-built graphs posted to ``POST /prompt``: a value ComfyUI or the node's
``validate_inputs`` refuses comes back as HTTP 400 with ``node_errors`` (nothing runs, so
``state.json`` keeps its bytes); a value only the node can judge fails at run time and shows in
the session's ``last_error`` (``state.json`` then records the error, never a keyframe), or, when
the session node itself fails before the session records the iteration, in ComfyUI's history. Route
rows complement the e2e tests (``test_bad_input.py``, ``test_window_routes.py``), which already
cover unknown actions and sessions, broken JSON, text/plain, GET on control routes and the
frame/stream/export values they list.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

import pytest
import torch
from safetensors.torch import save_file

from helpers.dream_loop import dream_workflow
from tools.harness.comfy_process import TINY_SD15

pytestmark = pytest.mark.e2e

S = "badin"
LONG = "x" * 10_000
NAN, INF = math.nan, math.inf


def session(**inputs) -> dict:
    return {"class_type": "DreamWindowSession", "inputs": {"name": S, "fps": 3.5, "min_buffer_seconds": 10.0, **inputs}}


def graph(**nodes) -> dict:
    """Nodes by id; ``s`` is the session unless given."""
    return {"s": session(), **nodes}


def show(link: list) -> dict:
    return {"class_type": "PreviewAny", "inputs": {"source": link}}


def source(**inputs) -> dict:
    return {"class_type": "DreamWindowKeyframeSource",
            "inputs": {"session": ["s", 0], "width": 64, "height": 64, "denoise": 0.2, "seed_mode": "random",
                       "base_seed": 0, "mode": "hybrid", **inputs}}


def interpolate(keyframe: list, **inputs) -> dict:
    return {"class_type": "DreamWindowInterpolate",
            "inputs": {"session": ["s", 0], "keyframe": keyframe, "frames": 2, "method": "slerp", "easing": "linear",
                       **inputs}}


def load_latent(name: str) -> dict:
    return {"class_type": "LoadLatent", "inputs": {"latent": name}}


def commit(latents: list, images: list | None, **inputs) -> dict:
    return {"class_type": "DreamWindowCommit",
            "inputs": {"session": ["s", 0], "latents": latents, "seed": 0, "retention": 128,
                       **({"images": images} if images is not None else {}), **inputs}}


def empty_image(batch: int) -> dict:
    return {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": batch, "color": 0}}


def autoqueue(**inputs) -> dict:
    return {"class_type": "DreamWindowAutoQueue",
            "inputs": {"session": ["s", 0], "enabled": False, "max_iterations": 0, "min_delay": 0.0,
                       "buffer_target": 0.0, **inputs}}


def cache(**inputs) -> dict:
    return {"class_type": "DreamWindowCache",
            "inputs": {"session": ["s", 0], "cache_name": "", "strategy": "dual_metric", "capacity": 50,
                       "eviction": "fifo", "admission": "mean", "logic": "all", "injection": False, "rng_seed": 0,
                       "tuning": "{}", **inputs}}


def with_cache(**inputs) -> dict:
    return graph(c=cache(**inputs), k=source(cache=["c", 0]), out=show(["k", 2]))


def prompts(**inputs) -> dict:
    return graph(ckpt={"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_SD15}},
                 p={"class_type": "DreamWindowPrompts",
                    "inputs": {"session": ["s", 0], "clip": ["ckpt", 1], "themes": "a calm sea",
                               "rotation_interval": 20, "time_of_day": False, **inputs}},
                 out=show(["p", 2]))


def nan_in_sampler() -> dict:
    """The bundled workflow (one iteration) with NaN for KSampler's cfg: ComfyUI checks no core float for NaN,
    and JSON cannot store the workflow in state.json."""
    wf = dream_workflow(S, autoqueue=False)
    wf["6"]["inputs"]["cfg"] = NAN
    return wf


@dataclass(frozen=True)
class NodeRow:
    id: str
    prompt: dict
    words: tuple[str, ...]
    runtime: bool = False
    """False: refused at validation (HTTP 400); True: fails when it runs (the session's last_error)."""
    recorded: bool = True
    """False: a run-time failure before the session records the iteration, read from ComfyUI's history."""


NODE_ROWS = [
    # DreamWindowSession
    NodeRow("session-empty-name", graph(s=session(name=""), out=show(["s", 0])),
            ("DreamWindowSession", "invalid session name", "letters, digits")),
    NodeRow("session-very-long-name", graph(s=session(name=LONG), out=show(["s", 0])),
            ("DreamWindowSession", "invalid session name", "1-64 characters")),
    NodeRow("session-fps-nan", graph(s=session(fps=NAN), out=show(["s", 0])),
            ("DreamWindowSession", "fps must be a number, got nan"), runtime=True, recorded=False),
    NodeRow("session-fps-inf", graph(s=session(fps=INF), out=show(["s", 0])),
            ("DreamWindowSession", "Value inf bigger than max of 120.0", "fps")),
    NodeRow("session-fps-wrong-type", graph(s=session(fps="fast"), out=show(["s", 0])),
            ("DreamWindowSession", "Failed to convert an input value to a FLOAT value", "fps, fast")),
    NodeRow("session-negative-buffer", graph(s=session(min_buffer_seconds=-1.0), out=show(["s", 0])),
            ("DreamWindowSession", "Value -1.0 smaller than min of 0.0", "min_buffer_seconds")),
    # DreamWindowKeyframeSource
    NodeRow("source-width-not-multiple-of-8", graph(k=source(width=68), out=show(["k", 2])),
            ("DreamWindowKeyframeSource", "width must be a multiple of 8 from 64 to 8192, got 68")),
    NodeRow("source-huge-width", graph(k=source(width=10**9), out=show(["k", 2])),
            ("DreamWindowKeyframeSource", "width must be a multiple of 8 from 64 to 8192")),
    NodeRow("source-negative-height", graph(k=source(height=-64), out=show(["k", 2])),
            ("DreamWindowKeyframeSource", "height must be a multiple of 8 from 64 to 8192")),
    NodeRow("source-denoise-nan", graph(k=source(denoise=NAN), out=show(["k", 2])),
            ("DreamWindowKeyframeSource", "denoise must be a number, got nan"), runtime=True),
    NodeRow("source-unknown-seed-mode", graph(k=source(seed_mode="chaos"), out=show(["k", 2])),
            ("DreamWindowKeyframeSource", "Value not in list", "seed_mode: 'chaos' not in ['random', 'sequence']")),
    NodeRow("source-seed-folder-nul", graph(k=source(seed_folder="seeds\x00"), out=show(["k", 2])),
            ("DreamWindowKeyframeSource", "seed_folder", "not a usable folder name", "give a folder inside"),
            runtime=True),
    NodeRow("source-seed-folder-very-long", graph(k=source(seed_folder=LONG), out=show(["k", 2])),
            ("DreamWindowKeyframeSource", "seed_folder", "not a usable folder name", "clear seed_folder"),
            runtime=True),
    NodeRow("source-interpolate-without-cache", graph(k=source(mode="interpolate"), out=show(["k", 2])),
            ("DreamWindowKeyframeSource", "wire a Dream Window Cache"), runtime=True),
    # DreamWindowInterpolate
    NodeRow("interpolate-negative-frames", graph(l=load_latent("dw_bad_one.latent"),
                                                 i=interpolate(["l", 0], frames=-1), out=show(["i", 0])),
            ("DreamWindowInterpolate", "Value -1 smaller than min of 0", "frames")),
    NodeRow("interpolate-huge-frames", graph(l=load_latent("dw_bad_one.latent"),
                                             i=interpolate(["l", 0], frames=10**9), out=show(["i", 0])),
            ("DreamWindowInterpolate", "Value 1000000000 bigger than max of 512", "frames")),
    NodeRow("interpolate-zero-size-latent", graph(l=load_latent("dw_bad_zero.latent"), i=interpolate(["l", 0]),
                                                  out=show(["i", 0])),
            ("DreamWindowInterpolate", "(1, 4, 0, 0)", "set the sampler's batch size to 1"), runtime=True),
    NodeRow("interpolate-batch-of-two", graph(l=load_latent("dw_bad_two.latent"), i=interpolate(["l", 0]),
                                              out=show(["i", 0])),
            ("DreamWindowInterpolate", "(2, 4, 8, 8)", "set the sampler's batch size to 1"), runtime=True),
    NodeRow("interpolate-size-mismatch", graph(l=load_latent("dw_bad_big.latent"), i=interpolate(["l", 0]),
                                               out=show(["i", 0])),
            ("DreamWindowInterpolate", "does not match the previous one", "reset the session"), runtime=True),
    NodeRow("interpolate-unknown-method", graph(l=load_latent("dw_bad_one.latent"),
                                                i=interpolate(["l", 0], method="cubic"), out=show(["i", 0])),
            ("DreamWindowInterpolate", "Value not in list", "method: 'cubic' not in ['slerp', 'lerp']")),
    NodeRow("interpolate-unknown-divisor", graph(l=load_latent("dw_bad_one.latent"),
                                                 i=interpolate(["l", 0], divisor="4"), out=show(["i", 0])),
            ("DreamWindowInterpolate", "Value not in list", "divisor: '4' not in ['1', '1.5', '2', '3']")),
    NodeRow("interpolate-divisor-without-vae", graph(l=load_latent("dw_bad_one.latent"),
                                                     i=interpolate(["l", 0], divisor="2"), out=show(["i", 0])),
            ("DreamWindowInterpolate", "wire the checkpoint's VAE into 'vae'", "set divisor to 1"), runtime=True),
    # DreamWindowCommit
    NodeRow("commit-mismatched-batches", graph(l=load_latent("dw_bad_two.latent"), img=empty_image(3),
                                               c=commit(["l", 0], ["img", 0])),
            ("DreamWindowCommit", "but 3 images", "wire both here"), runtime=True),
    NodeRow("commit-without-frames", graph(l=load_latent("dw_bad_one.latent"), c=commit(["l", 0], None)),
            ("DreamWindowCommit", "no frames reached Commit", "wire the checkpoint's VAE into the Interpolate "
             "node's 'vae'", "or VAE Decode of its output into 'images'"), runtime=True),
    NodeRow("commit-frames-decoded-twice",
            graph(ckpt={"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_SD15}},
                  l=load_latent("dw_bad_one.latent"), i=interpolate(["l", 0], vae=["ckpt", 2]), img=empty_image(3),
                  c=commit(["i", 0], ["img", 0])),
            ("DreamWindowCommit", "decoded these frames already", "remove the link into 'images'",
             "or unwire the Interpolate node's 'vae'"), runtime=True),
    NodeRow("commit-zero-retention", graph(l=load_latent("dw_bad_one.latent"), img=empty_image(1),
                                           c=commit(["l", 0], ["img", 0], retention=0)),
            ("DreamWindowCommit", "Value 0 smaller than min of 1", "retention")),
    NodeRow("commit-negative-seed", graph(l=load_latent("dw_bad_one.latent"), img=empty_image(1),
                                          c=commit(["l", 0], ["img", 0], seed=-5)),
            ("DreamWindowCommit", "Value -5 smaller than min of 0", "seed")),
    NodeRow("commit-nan-in-a-core-node", nan_in_sampler(),
            ("DreamWindowCommit", "cannot save the session state", "NaN or infinity in an input: fix that input"),
            runtime=True),
    # DreamWindowAutoQueue
    NodeRow("autoqueue-min-delay-nan", graph(a=autoqueue(min_delay=NAN)),
            ("DreamWindowAutoQueue", "min_delay must be a number, got nan"), runtime=True),
    NodeRow("autoqueue-buffer-target-inf", graph(a=autoqueue(buffer_target=INF)),
            ("DreamWindowAutoQueue", "Value inf bigger than max of 3600.0", "buffer_target")),
    NodeRow("autoqueue-negative-max-iterations", graph(a=autoqueue(max_iterations=-1)),
            ("DreamWindowAutoQueue", "Value -1 smaller than min of 0", "max_iterations")),
    NodeRow("autoqueue-max-iterations-wrong-type", graph(a=autoqueue(max_iterations="forever")),
            ("DreamWindowAutoQueue", "Failed to convert an input value to a INT value", "max_iterations, forever")),
    # DreamWindowCache
    NodeRow("cache-name-traversal", with_cache(cache_name="../escape"),
            ("DreamWindowCache", "invalid cache name", "letters, digits"), runtime=True),
    NodeRow("cache-tuning-not-an-object", with_cache(tuning="[1, 2]"),
            ("DreamWindowCache", "tuning must be a JSON object")),
    NodeRow("cache-tuning-metric-of-another-strategy", with_cache(tuning='{"windows": {"cosine": [0.5, 0.9]}}'),
            ("DreamWindowCache", "no such metric 'cosine'", "'dual_metric' has 'color', 'struct'"), runtime=True),
    NodeRow("cache-zero-capacity", with_cache(capacity=0),
            ("DreamWindowCache", "Value 0 smaller than min of 1", "capacity")),
    NodeRow("cache-unknown-strategy", with_cache(strategy="telepathy"),
            ("DreamWindowCache", "Value not in list", "strategy: 'telepathy' not in", "'dual_metric'")),
    NodeRow("cache-clip-vision-missing", with_cache(strategy="clip_vision"),
            ("DreamWindowCache", "needs a CLIP_VISION input", "wire a Load CLIP Vision node"), runtime=True),
    NodeRow("cache-open-clip-weights-missing", with_cache(strategy="open_clip", open_clip_weights="nowhere.pt"),
            ("DreamWindowCache", "Value not in list", "open_clip_weights: 'nowhere.pt' not in")),
    NodeRow("cache-open-clip-weights-empty", with_cache(strategy="open_clip", open_clip_weights=""),
            ("DreamWindowCache", "needs open_clip_weights", "models/clip_vision"), runtime=True),
    # DreamWindowPrompts
    NodeRow("prompts-empty-themes", prompts(themes=""),
            ("DreamWindowPrompts", "theme list is empty", "write at least")),
    NodeRow("prompts-zero-interval", prompts(rotation_interval=0),
            ("DreamWindowPrompts", "Value 0 smaller than min of 1", "rotation_interval")),
    # DreamWindowCudaGraph
    NodeRow("cuda-graph-missing-model", {"g": {"class_type": "DreamWindowCudaGraph", "inputs": {"enabled": True}},
                                         "out": show(["g", 0])},
            ("DreamWindowCudaGraph", "model", "Required input is missing")),
]


@pytest.fixture(scope="module")
def badin(comfy):
    """Session ``badin`` after one committed keyframe (autoqueue off), and the latent files the rows load."""
    inputs = comfy.base / "input"
    inputs.mkdir(parents=True, exist_ok=True)
    for name, shape in (("one", (1, 4, 8, 8)), ("zero", (1, 4, 0, 0)), ("two", (2, 4, 8, 8)), ("big", (1, 4, 16, 16))):
        save_file({"latent_tensor": torch.ones(shape), "latent_format_version_0": torch.tensor([])},
                  str(inputs / f"dw_bad_{name}.latent"))
    comfy.queue(dream_workflow(S, autoqueue=False))
    comfy.wait_for(lambda: (comfy.session(S) or {}).get("iteration") == 1, timeout=120, what="one keyframe")
    folder = comfy.base / "output" / "dream_window" / S
    comfy.wait_for(lambda: (folder / "frames" / "frame_00000001.png").exists(), timeout=30, what="the first frame")
    return folder


def execution_error(comfy, prompt_id: str) -> str | None:
    """The exception message ComfyUI's history holds for a failed prompt; None until it has one."""
    status = (comfy.get(f"/history/{prompt_id}").get(prompt_id) or {}).get("status") or {}
    return next((data["exception_message"] for event, data in status.get("messages", [])
                 if event == "execution_error"), None)


def committed(folder) -> dict:
    """Everything a keyframe commit changes."""
    state = json.loads((folder / "state.json").read_text())
    return {"keys": {k: state[k] for k in ("iteration", "next_frame", "latents_file", "seeds")},
            "latents": (folder / state["latents_file"]).read_bytes(),
            "frames": sorted(p.name for p in (folder / "frames").iterdir())}


@pytest.mark.parametrize("row", NODE_ROWS, ids=lambda row: row.id)
def test_node_rejects_bad_input_with_a_clear_error(comfy, badin, row):
    state_bytes, before = (badin / "state.json").read_bytes(), committed(badin)
    started = time.time()
    status, data = comfy.post_json("/prompt", {"prompt": row.prompt, "client_id": comfy.client_id})
    if not row.runtime:
        assert status == 400, data
        text = json.dumps(data["node_errors"], ensure_ascii=False)
        assert (badin / "state.json").read_bytes() == state_bytes, "a refused prompt touches nothing"
    else:
        assert status == 200, data
        if row.recorded:
            error = comfy.wait_for(lambda: (e := comfy.session(S)["last_error"]) and e["at"] >= started and e,
                                   timeout=60, what=f"{row.id} to fail")
            text = error["message"]
        else:
            text = comfy.wait_for(lambda: execution_error(comfy, data["prompt_id"]), timeout=60,
                                  what=f"{row.id} to fail")
        assert committed(badin) == before, "a failed iteration commits nothing"
    for words in row.words:
        assert words in text, (row.id, words, text[:2000])
    assert "traceback" not in text.lower(), (row.id, text[:2000])
    assert comfy.get("/system_stats")["system"], "the server keeps running"


@dataclass(frozen=True)
class RouteRow:
    id: str
    method: str
    path: str
    status: int
    words: tuple[str, ...]
    body: bytes | tuple[bytes, ...] | None = None  # a tuple goes out chunked, without a length
    headers: dict = field(default_factory=lambda: {"Content-Type": "application/json"})


def body(obj) -> bytes:
    return json.dumps(obj).encode()


ROUTE_ROWS = [
    RouteRow("start-non-utf8-body", "POST", "/dream_window/start", 400,
             ("/dream_window/start", "not valid JSON", '{"session": "<name>"}'), b'{"session": "\xff\xfe\xfa"}'),
    RouteRow("pause-nan-session", "POST", "/dream_window/pause", 400,
             ("/dream_window/pause", "invalid session name", "letters, digits"), b'{"session": NaN}'),
    RouteRow("stop-session-wrong-type", "POST", "/dream_window/stop", 400,
             ("/dream_window/stop", "invalid session name", "letters, digits"), body({"session": 12})),
    RouteRow("reset-empty-session", "POST", "/dream_window/reset", 400,
             ("/dream_window/reset", "invalid session name", "1-64 characters"), body({"session": ""})),
    RouteRow("delete-missing-session-key", "POST", "/dream_window/delete", 400,
             ("/dream_window/delete", '{"session": "<name>"}'), body({"name": S})),
    RouteRow("resume-huge-body", "POST", "/dream_window/resume", 413,
             ("/dream_window/resume", "body too large", "at most 65536 bytes"), body({"session": S, "pad": LONG * 7})),
    RouteRow("resume-huge-chunked-body", "POST", "/dream_window/resume", 413,
             ("/dream_window/resume", "body too large", "at most 65536 bytes"),
             (body({"session": S, "pad": LONG})[:-1],) + (b" " * 16384,) * 4 + (b"}",)),
    RouteRow("start-client-id-wrong-type", "POST", "/dream_window/start", 400,
             ("/dream_window/start", "client_id must be a string"), body({"session": S, "client_id": 5})),
    RouteRow("export-fps-nan", "POST", "/dream_window/export", 400,
             ("/dream_window/export", "fps must be a number in (0, 120]"), b'{"session": "badin", "fps": NaN}'),
    RouteRow("export-fps-infinite", "POST", "/dream_window/export", 400,
             ("/dream_window/export", "fps must be a number in (0, 120]"), b'{"session": "badin", "fps": Infinity}'),
    RouteRow("export-first-float", "POST", "/dream_window/export", 400,
             ("/dream_window/export", "first must be a frame index from 1"), body({"session": S, "first": 1.5})),
    RouteRow("export-last-negative", "POST", "/dream_window/export", 400,
             ("/dream_window/export", "last must be a frame index from 1"), body({"session": S, "last": -1})),
    RouteRow("export-empty-format", "POST", "/dream_window/export", 400,
             ("/dream_window/export", "format must be one of", "webp"), body({"session": S, "format": ""})),
    RouteRow("status-very-long-name", "GET", f"/dream_window/status/{'x' * 2000}", 400,
             ("/dream_window/status/", "invalid session name", "1-64 characters")),
    RouteRow("status-unknown-session", "GET", "/dream_window/status/never_made", 404,
             ("/dream_window/status/never_made", "unknown session", "GET /dream_window/sessions")),
    RouteRow("cache-non-utf8-name", "GET", "/dream_window/cache/%FF%FE", 400,
             ("/dream_window/cache/", "invalid session name")),
    RouteRow("frame-index-nan", "GET", f"/dream_window/frame/{S}?index=NaN", 400,
             (f"/dream_window/frame/{S}", "index must be a whole number from 1 to")),
    RouteRow("frame-index-empty", "GET", f"/dream_window/frame/{S}?index=", 400,
             (f"/dream_window/frame/{S}", "index must be a whole number from 1 to")),
    RouteRow("stream-limit-float", "GET", f"/dream_window/stream/{S}?limit=2.5", 400,
             (f"/dream_window/stream/{S}", "limit must be a whole number from 1 to")),
    RouteRow("stream-format-non-utf8", "GET", f"/dream_window/stream/{S}?format=%FF", 400,
             (f"/dream_window/stream/{S}", "format must be jpeg or png")),
    RouteRow("view-empty-looking-name", "GET", "/dream_window/view/%20", 400,
             ("/dream_window/view/", "invalid session name")),
    RouteRow("assets-unknown-file", "GET", "/dream_window/assets/viewer.mjs%00", 404,
             ("/dream_window/assets/", "no such viewer file")),
]


@pytest.mark.parametrize("row", ROUTE_ROWS, ids=lambda row: row.id)
def test_route_rejects_bad_input_with_a_clear_error(comfy, badin, row):
    state_bytes = (badin / "state.json").read_bytes()
    for prefix in ("", "/api"):
        status, raw, headers = comfy.request(row.method, prefix + row.path, row.body,
                                             row.headers if row.body is not None else {})
        assert status == row.status, (row.id, prefix, status, raw[:300])
        assert headers["Content-Type"].startswith("application/json")
        message = json.loads(raw)["error"]
        for words in row.words:
            assert words in message, (row.id, words, message[:500])
    assert (badin / "state.json").read_bytes() == state_bytes, "the session's state is unchanged"
    assert comfy.session(S)["iteration"] == 1
