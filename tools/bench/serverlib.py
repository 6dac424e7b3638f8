"""Shared helpers of the benchmarks that drive a real ComfyUI server.

* ``add_server_args`` / ``open_server``: one ComfyUI (``tools/harness/comfy_process.ComfyServer``)
  with the pack and the bench-only timing pack (``tools/bench/node_timing``) loaded, on the
  synthesised tiny models or a given models folder, optionally with ``--front-end-root``
  (a server without the frontend package, as on the GPU machine).
* ``dream_workflow`` / ``bare_workflow`` / ``controller_workflow``: the bundled dream workflow
  with throttling off, the bare img2img workflow and the replaced controller's img2img graph,
  both with the dream's model, prompts, sampler settings and size.
* ``run_dream`` / ``run_bare`` and ``iteration_stats`` / ``node_stats``: run them and turn
  the server-side prompt and node timings into per-iteration figures.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

from common import BENCH, median

from tools.harness.comfy_process import TINY_SD15, ComfyServer, ensure_models, load_api_workflow

TIMING_PACK = BENCH / "node_timing"
PACK_NODE_PREFIX = "DreamWindow"
MAX_REPEAT = 64
"""ComfyUI's RepeatLatentBatch makes at most 64 latents: the bare workflow's N + 1."""


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """Options that choose the server, its model and its device."""
    parser.add_argument("--models", type=Path,
                        help="models folder (default: the synthesised tiny models, made on first use)")
    parser.add_argument("--checkpoint", default=TINY_SD15, help=f"checkpoint name in models/checkpoints "
                                                                f"(default {TINY_SD15})")
    parser.add_argument("--python", default=os.environ.get("COMFYUI_PYTHON", sys.executable),
                        help="Python that runs ComfyUI (default: COMFYUI_PYTHON, else this one)")
    parser.add_argument("--gpu", action="store_true", help="run the server on the GPU (default: --cpu)")
    parser.add_argument("--front-end-root", type=Path,
                        help="serve this folder as the web UI (for a ComfyUI without the frontend package)")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads of the server and of this process (OMP_NUM_THREADS); 0 keeps torch's "
                             "default (default: 0 with --gpu; 1 without, since on a shared CPU intra-op threads "
                             "make every iteration hostage to the other processes' load)")
    parser.add_argument("--keep-base", action="store_true", help="keep the server's base folder (log, outputs)")


def check_server_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, before a server starts: a models folder without the checkpoint, a missing web
    root, ``--gpu`` where torch sees no CUDA device, negative threads, a ``--size`` below the
    dream workflow's minimum; then resolve and apply ``--threads`` in this process."""
    import torch

    if getattr(args, "size", None) is not None and min(args.size) < 64:
        parser.error("--size: the dream workflow's keyframe source needs at least 64x64")

    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu: torch sees no CUDA device here (leave --gpu out to run on the CPU)")
    if args.threads is not None and args.threads < 0:
        parser.error("--threads must be >= 0")
    args.threads = args.threads if args.threads is not None else (0 if args.gpu else 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.models is not None and not (args.models / "checkpoints" / args.checkpoint).is_file():
        parser.error(f"no checkpoint {args.checkpoint!r} in {args.models / 'checkpoints'}")
    if args.front_end_root is not None and not args.front_end_root.is_dir():
        parser.error(f"--front-end-root: no folder {args.front_end_root}")


def models_dir(args: argparse.Namespace) -> Path:
    """``--models``, else the synthesised tiny models (TAESD and the tiny SD1.5), made on first use."""
    return args.models.resolve() if args.models is not None else ensure_models(("taesd", "sd15"))


@contextmanager
def open_server(args: argparse.Namespace, name: str) -> Iterator[ComfyServer]:
    """A started ComfyUI with the timing pack; stopped (and its base removed) on exit, also
    when this process gets SIGTERM (``timeout``, a CI runner), so no server outlives the bench."""
    base = Path(tempfile.mkdtemp(prefix=f"dw-bench-{name}-"))
    env = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
    python = args.python
    if args.front_end_root is not None:
        env.update(DW_COMFY_REAL_PYTHON=python, DW_COMFY_FRONT_END_ROOT=str(args.front_end_root.resolve()))
        python = str(BENCH / "comfy_python.sh")
    server = ComfyServer(base, env=env, models=models_dir(args), python=python, cpu=not args.gpu,
                         extra_packs={"dw_bench_timing": TIMING_PACK})
    started = time.perf_counter()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        server.start(timeout=300)
        threads = args.threads or "default"
        print(f"ComfyUI started in {time.perf_counter() - started:.1f} s ({'GPU' if args.gpu else 'CPU'}, "
              f"{threads} torch threads; log {server.log_path})", flush=True)
        yield server
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
        if args.keep_base:
            print(f"server base kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


# -- workflows --

def node_id(wf: dict, class_type: str) -> str:
    """The id of the one node of ``class_type`` in an API workflow."""
    ids = [nid for nid, node in wf.items() if node["class_type"] == class_type]
    if len(ids) != 1:
        raise ValueError(f"expected one {class_type} node in the workflow, found {len(ids)}")
    return ids[0]


def dream_workflow(checkpoint: str, size: tuple[int, int], steps: int, frames: int, session: str,
                   max_iterations: int) -> dict:
    """The bundled dream workflow at this size, with throttling off and no delay between iterations."""
    wf = load_api_workflow()
    wf[node_id(wf, "CheckpointLoaderSimple")]["inputs"]["ckpt_name"] = checkpoint
    wf[node_id(wf, "DreamWindowSession")]["inputs"]["name"] = session
    wf[node_id(wf, "DreamWindowKeyframeSource")]["inputs"].update(width=size[0], height=size[1])
    wf[node_id(wf, "KSampler")]["inputs"]["steps"] = steps
    wf[node_id(wf, "DreamWindowInterpolate")]["inputs"]["frames"] = frames
    wf[node_id(wf, "DreamWindowAutoQueue")]["inputs"].update(enabled=True, max_iterations=max_iterations,
                                                               min_delay=0.0, buffer_target=0.0)
    # Acceleration is the same on both sides of a comparison: the bare workflow has none.
    wf[node_id(wf, "DreamWindowCudaGraph")]["inputs"]["enabled"] = False
    return wf


def prompt_texts(dream: dict) -> tuple[str, str]:
    """The dream workflow's first theme: its positive and negative prompt texts."""
    from core.loop.prompts import parse_themes

    theme = parse_themes(dream[node_id(dream, "DreamWindowPrompts")]["inputs"]["themes"])[0]
    return theme.positive, theme.negative


def sampling_nodes(dream: dict, seed: int, latent: list) -> dict:
    """CheckpointLoaderSimple, two CLIPTextEncode (the dream's first theme) and a KSampler
    with the dream's settings and denoise sampling ``latent`` with the checkpoint's model (no
    acceleration node in between); the sampler's id is ``sampler``."""
    ckpt = node_id(dream, "CheckpointLoaderSimple")
    positive, negative = prompt_texts(dream)
    denoise = dream[node_id(dream, "DreamWindowKeyframeSource")]["inputs"]["denoise"]
    return {
        ckpt: copy.deepcopy(dream[ckpt]),
        "positive": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": [ckpt, 1]}},
        "negative": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": [ckpt, 1]}},
        "sampler": {"class_type": "KSampler",
                    "inputs": {**copy.deepcopy(dream[node_id(dream, "KSampler")]["inputs"]), "model": [ckpt, 0],
                               "seed": seed, "denoise": denoise, "positive": ["positive", 0],
                               "negative": ["negative", 0], "latent_image": latent}},
    }


def bare_workflow(dream: dict, frames: int, seed: int) -> dict:
    """Bare img2img with the dream workflow's model, prompts, sampler settings and size:
    ``sampling_nodes`` on a fixed (empty) latent -> RepeatLatentBatch (N + 1 latents) ->
    VAEDecode -> PreviewImage."""
    ckpt = node_id(dream, "CheckpointLoaderSimple")
    source = dream[node_id(dream, "DreamWindowKeyframeSource")]["inputs"]
    wf = sampling_nodes(dream, seed, ["latent", 0])
    wf["latent"] = {"class_type": "EmptyLatentImage",
                    "inputs": {"width": source["width"], "height": source["height"], "batch_size": 1}}
    wf["batch"] = {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["sampler", 0], "amount": frames + 1}}
    wf["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["batch", 0], "vae": [ckpt, 2]}}
    wf["preview"] = {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}}
    return wf


def controller_workflow(dream: dict, image: str, seed: int) -> dict:
    """The replaced controller's img2img graph (``docs/design.md`` §1.1, with core KSampler
    for the third-party FSamplerAdvanced): LoadImage -> VAEEncode -> ``sampling_nodes`` ->
    VAEDecode -> SaveImage (prefix ``dream``)."""
    ckpt = node_id(dream, "CheckpointLoaderSimple")
    wf = sampling_nodes(dream, seed, ["encode", 0])
    wf["load"] = {"class_type": "LoadImage", "inputs": {"image": image}}
    wf["encode"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["load", 0], "vae": [ckpt, 2]}}
    wf["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": [ckpt, 2]}}
    wf["save"] = {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "dream"}}
    return wf


# -- running and timing --

def fetch_timings(server: ComfyServer) -> list[dict]:
    """Finished prompts' server-side timings since the last fetch (oldest first)."""
    return sorted(server.get("/dw_bench/timings")["records"], key=lambda r: r["start"])


def set_node_timing(server: ComfyServer, enabled: bool, profile: str | None = None) -> None:
    """Switch the timing pack's per-node timing (with device synchronisation) on or off; with
    ``profile``, that node class also runs under cProfile (``GET /dw_bench/profile``)."""
    status, data = server.post_json("/dw_bench/node_timing", {"enabled": enabled, "profile": profile})
    if status != 200:
        raise RuntimeError(f"the timing pack did not answer ({status}: {data}); is tools/bench/node_timing loaded?")


def wait_idle(server: ComfyServer, timeout: float) -> None:
    """Wait until nothing is queued or running."""
    def idle() -> bool:
        q = server.get("/queue")
        return not q["queue_running"] and not q["queue_pending"]
    server.wait_for(idle, timeout=timeout, what="the queue to empty")


def run_dream(server: ComfyServer, wf: dict, warmup: int, iterations: int, timeout: float) -> list[dict]:
    """Queue the dream workflow once; the loop runs ``warmup + iterations`` iterations by
    itself (its ``max_iterations``); return the timings of the last ``iterations``. Progress
    is read from the timing pack's prompt records: nothing is asked of the pack while it loops."""
    fetch_timings(server)
    server.queue(wf)
    total = warmup + iterations
    records: list[dict] = []

    def finished() -> bool:
        records.extend(fetch_timings(server))
        if any(not r["success"] for r in records):
            raise RuntimeError(f"a dream iteration failed; server log:\n{server.log_tail(3000)}")
        return len(records) >= total

    server.wait_for(finished, timeout=timeout, what=f"{total} dream iterations", interval=0.2)
    wait_idle(server, timeout=60)
    records.extend(fetch_timings(server))
    if len(records) != total:
        raise RuntimeError(f"dream loop: {len(records)} prompts ran, {total} expected (max_iterations); "
                           f"server log:\n{server.log_tail(3000)}")
    return records[warmup:]


def run_bare(server: ComfyServer, dream: dict, frames: int, warmup: int, iterations: int,
             timeout: float) -> list[dict]:
    """Queue ``warmup + iterations`` bare prompts back to back (distinct seeds, so every
    one samples); return the timings of the last ``iterations``."""
    fetch_timings(server)
    total = warmup + iterations
    for seed in range(total):
        server.queue(bare_workflow(dream, frames, seed))
    wait_idle(server, timeout=timeout)
    records = fetch_timings(server)
    failed = [r for r in records if not r["success"]]
    if failed or len(records) != total:
        raise RuntimeError(f"bare img2img: {len(records)} prompts ran, {len(failed)} failed, {total} expected; "
                           f"server log:\n{server.log_tail(3000)}")
    return records[warmup:]


def iteration_stats(runs: list[list[dict]]) -> dict[str, Any]:
    """Median per-iteration figures in ms over runs of consecutive prompts: ``period`` (start
    to the next start: the loop's wall time per iteration), ``executing`` (start to end) and
    ``gap`` (end to the next start). Consecutive means within one run."""
    periods = [(b["start"] - a["start"]) * 1e3 for run in runs for a, b in pairwise(run)]
    gaps = [(b["start"] - a["end"]) * 1e3 for run in runs for a, b in pairwise(run)]
    records = [r for run in runs for r in run]
    return {"iterations": len(records), "period_ms": median(periods),
            "executing_ms": median((r["end"] - r["start"]) * 1e3 for r in records),
            "gap_ms": median(gaps), "gap_max_ms": max(gaps) if gaps else None}


def node_stats(records: list[dict]) -> dict[str, Any]:
    """Per prompt, each node class's time summed (cached nodes excluded), then the median
    over prompts; ``pack_ms`` is the sum over the pack's own node classes."""
    per_class: dict[str, list[float]] = defaultdict(list)
    pack: list[float] = []
    for record in records:
        sums: dict[str, float] = defaultdict(float)
        for node in record["nodes"]:
            if not node["cached"]:
                sums[node["class_type"]] += node["ms"]
        for class_type, ms in sums.items():
            per_class[class_type].append(ms)
        pack.append(sum(ms for c, ms in sums.items() if c.startswith(PACK_NODE_PREFIX)))
    return {"per_class_ms": {c: median(v) for c, v in sorted(per_class.items())},
            "pack_ms": median(pack) if records else None, "prompts": len(records)}
