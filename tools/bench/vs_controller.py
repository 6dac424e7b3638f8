"""Loop versus the replaced controller: frames produced per second by the native loop and by
a faithful re-creation of the replaced external controller, against the same ComfyUI server
and model, at the same size and sampler settings.

**Replaced controller** (``docs/design.md`` §1.1; ``requests`` and
``websocket-client`` like the replaced controller), two threads as in its async pipeline:

* keyframe loop, per keyframe: the source PNG (the seed: PNG encode with ``optimize=True``;
  afterwards the previous keyframe's downloaded PNG, size checked with ``PIL.open``),
  ``POST /upload/image``, ``POST /prompt`` of the img2img graph LoadImage -> VAEEncode ->
  KSampler -> VAEDecode -> SaveImage, a **new websocket per keyframe** opened after queueing
  and read until ``executed``/``execution_success``, ``GET /history/{id}`` (asked again while
  the prompt is not filed yet: ``executed`` comes first), ``GET /view``; the keyframe goes to
  the interpolation queue (at most 10 waiting, as in the replaced controller);
* interpolation worker, per keyframe: PNG decode + local VAE encode of the keyframe, then for
  the pair (previous, new): the per-frame path of ``tools/bench/interp_path.py`` (per-frame slerp,
  one decode per frame, PNG encode, PNG decode), with its **own copy of the VAE** loaded from
  the same checkpoint in the client process, like the replaced controller's second VAE.

Left out, which only makes the replaced controller look faster: collapse detection and cache analysis
(4 more PNG decodes per keyframe), the display's PNG decode + encode per frame, disk writes.

**Native loop**: the bundled dream workflow queued once, throttling off.

Figures: frames per second in steady state, (N + 1) / median cycle, where a cycle is the
time between consecutive pairs finished by the worker (controller) or consecutive iteration
starts (native); the server-side gap between one prompt's end and the next one's start; the
controller's keyframe round trip and how much of it is spent outside the server's execution
(HTTP, websocket, PNG). Writes ``tools/bench/results/vs_controller.json``.

Run: ``python tools/bench/vs_controller.py`` (``--help`` for options; ``--gpu`` for a CUDA server).
"""

from __future__ import annotations

import argparse
import io
import json
import queue
import random
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import numpy as np
import replaced_controller
import serverlib as sl
from common import (
    comfy_vae,
    fmt,
    frame_size,
    import_comfy,
    median,
    output_arg,
    positive_int,
    print_table,
    ratio,
    skipped,
    write_results,
)
from PIL import Image

QUEUE_MAX = 10
"""The replaced controller's interpolation queue bound (its InterpolationWorker)."""
WS_RECV_TIMEOUT = 1.0
GENERATION_TIMEOUT = 120.0
"""The replaced controller's per-keyframe websocket wait (``performance.generation_timeout``)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; nonsense values are refused, device-dependent defaults filled in."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=positive_int, nargs="+", default=[10, 32],
                        help="interpolated frames per keyframe pair, N (default 10 32)")
    parser.add_argument("--size", type=frame_size, help="frame size WxH (default 512x256 with --gpu, else 64x64)")
    parser.add_argument("--steps", type=positive_int, default=10, help="sampler steps (10)")
    parser.add_argument("--keyframes", type=positive_int,
                        help="keyframes per side and N, after one warm-up (default 8 with --gpu, else 4)")
    parser.add_argument("--timeout", type=positive_int, default=600, help="seconds allowed per side (600)")
    sl.add_server_args(parser)
    output_arg(parser, "vs_controller")
    args = parser.parse_args(argv)
    sl.check_server_args(parser, args)
    args.size = args.size or ((512, 256) if args.gpu else (64, 64))
    args.keyframes = args.keyframes or (8 if args.gpu else 4)
    if args.keyframes < 3:
        parser.error("--keyframes must be >= 3 (two finished pairs make one cycle)")
    return args


def client_vae(models, checkpoint: str):
    """The checkpoint's VAE, loaded a second time in this (client) process."""
    from safetensors.torch import load_file

    prefix = "first_stage_model."
    state = load_file(str(models / "checkpoints" / checkpoint))
    return comfy_vae({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with one file and ``overwrite=true``; returns (body, content type)."""
    boundary = f"dwbench{random.getrandbits(64):016x}"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class Controller:
    """The replaced controller's keyframe loop and interpolation worker (module docstring)."""

    def __init__(self, server, dream: dict, vae, size: tuple[int, int], frames: int, tag: str):
        import requests
        import websocket

        self.server, self.dream, self.vae, self.frames, self.tag = server, dream, vae, frames, tag
        self.size = size
        self.http = requests.Session()
        self.websocket = websocket
        self.client_id = str(time.time())
        self.round_trips_ms: list[float] = []
        self.pairs_done: list[float] = []
        self.prompt_ids: list[str] = []

    def keyframe(self, source: bytes, index: int) -> bytes:
        """One keyframe round trip; returns the new keyframe's PNG bytes."""
        if Image.open(io.BytesIO(source)).size != self.size:  # the replaced controller's size check (header only)
            raise ValueError(f"keyframe {index} is not {self.size[0]}x{self.size[1]}")
        name = f"dw_ctrl_{self.tag}_{index:05d}.png"
        start = time.perf_counter()
        body, content_type = multipart("image", name, source)
        self.http.post(f"{self.server.url}/upload/image", data=body, headers={"Content-Type": content_type},
                       timeout=30).raise_for_status()
        wf = sl.controller_workflow(self.dream, name, random.getrandbits(32))
        reply = self.http.post(f"{self.server.url}/prompt", json={"prompt": wf, "client_id": self.client_id},
                               timeout=10)
        if reply.status_code != 200:
            raise RuntimeError(f"POST /prompt refused the controller's graph ({reply.status_code}): {reply.text[:800]}")
        prompt_id = reply.json()["prompt_id"]
        self.wait(prompt_id)
        history = self.history(prompt_id)
        image = next(img for out in history["outputs"].values() for img in out.get("images", []))
        query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
        png = self.http.get(f"{self.server.url}/view?{query}", timeout=10).content
        self.round_trips_ms.append((time.perf_counter() - start) * 1e3)
        self.prompt_ids.append(prompt_id)
        return png

    def history(self, prompt_id: str) -> dict:
        """``GET /history/{id}``, asked again while the entry is not there yet: ``executed``
        (which the replaced controller accepts) comes before ComfyUI files the prompt in its history."""
        deadline = time.monotonic() + GENERATION_TIMEOUT
        while time.monotonic() < deadline:
            entry = self.http.get(f"{self.server.url}/history/{prompt_id}", timeout=10).json()
            if prompt_id in entry:
                return entry[prompt_id]
        raise TimeoutError(f"keyframe prompt {prompt_id} never reached the history")

    def wait(self, prompt_id: str) -> None:
        """A new websocket, opened after queueing, read until this prompt is done."""
        ws = self.websocket.create_connection(f"ws://127.0.0.1:{self.server.port}/ws?clientId={self.client_id}")
        ws.settimeout(WS_RECV_TIMEOUT)
        deadline = time.monotonic() + GENERATION_TIMEOUT
        try:
            while time.monotonic() < deadline:
                try:
                    message = ws.recv()
                except self.websocket.WebSocketTimeoutException:
                    continue
                if not isinstance(message, str):
                    continue
                event = json.loads(message)
                data = event.get("data") or {}
                if data.get("prompt_id") != prompt_id:
                    continue
                if event["type"] in ("executed", "execution_success"):
                    return
                if event["type"] == "execution_error":
                    raise RuntimeError(f"keyframe prompt failed: {data.get('exception_message')}")
            raise TimeoutError(f"keyframe prompt {prompt_id} did not finish in {GENERATION_TIMEOUT} s")
        finally:
            ws.close()

    def interpolate(self, keyframes: queue.Queue) -> None:
        """The worker: encode each keyframe once, then the N frames of each pair, frame by frame."""
        previous = None
        while (png := keyframes.get()) is not None:
            latent = replaced_controller.encode_keyframe(self.vae, png)
            if previous is not None:
                pair = replaced_controller.SlerpPair.of(previous, latent)
                latents = [replaced_controller.slerp_frame(pair, t)
                           for t in replaced_controller.frame_times(self.frames)]
                images = [replaced_controller.decode_frame(self.vae, z) for z in latents]
                for data in [replaced_controller.png_encode(image) for image in images]:
                    replaced_controller.png_decode(data)
                self.pairs_done.append(time.perf_counter())
            previous = latent

    def run(self, seed_png: bytes, count: int) -> None:
        """``count`` keyframes through both threads, until the last pair is interpolated."""
        keyframes: queue.Queue = queue.Queue(maxsize=QUEUE_MAX)
        with ThreadPoolExecutor(1, thread_name_prefix="interpolation-worker") as pool:
            worker = pool.submit(self.interpolate, keyframes)
            try:
                source = seed_png
                for index in range(count):
                    source = self.keyframe(source, index)
                    if worker.done():
                        break
                    keyframes.put(source)
            finally:
                if not worker.done():
                    keyframes.put(None)
            worker.result()


def seed_png(size: tuple[int, int], seed: int) -> bytes:
    """The first keyframe's source: a random image, PNG-encoded with ``optimize=True``."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def controller_side(server, args: argparse.Namespace, vae, frames: int) -> dict:
    """The re-created controller at one N (one warm-up keyframe, then ``keyframes``)."""
    dream = sl.dream_workflow(args.checkpoint, args.size, args.steps, frames, "unused", 0)
    ctl = Controller(server, dream, vae, args.size, frames, f"n{frames}")
    sl.fetch_timings(server)
    ctl.run(seed_png(args.size, frames), 1 + args.keyframes)
    records = {r["prompt_id"]: r for r in sl.fetch_timings(server)}
    mine = [records[p] for p in ctl.prompt_ids if p in records][1:]
    cycles = [(b - a) * 1e3 for a, b in pairwise(ctl.pairs_done)]
    server_ms = [(r["end"] - r["start"]) * 1e3 for r in mine]
    outside = [trip - srv for trip, srv in zip(ctl.round_trips_ms[1:], server_ms)]
    cycle = median(cycles)
    return {"keyframes": args.keyframes, "cycle_ms": cycle, "fps": (frames + 1) / cycle * 1e3 if cycle else None,
            "gap_ms": sl.iteration_stats([mine])["gap_ms"], "round_trip_ms": median(ctl.round_trips_ms[1:]),
            "server_executing_ms": median(server_ms), "outside_server_ms": median(outside)}


def native_side(server, args: argparse.Namespace, frames: int) -> dict:
    """The dream loop at one N (one warm-up iteration, then ``keyframes``)."""
    wf = sl.dream_workflow(args.checkpoint, args.size, args.steps, frames, f"vs_n{frames}", 1 + args.keyframes)
    stats = sl.iteration_stats([sl.run_dream(server, wf, 1, args.keyframes, args.timeout)])
    period = stats["period_ms"]
    return {**stats, "cycle_ms": period, "fps": (frames + 1) / period * 1e3 if period else None}


def main(argv: list[str] | None = None) -> int:
    """Measure both sides, print the tables, write the JSON; returns the exit status."""
    args = parse_args(argv)
    w, h = args.size
    device = import_comfy()
    models = sl.models_dir(args)
    print(f"{w}x{h}, {args.steps} steps, N = {args.frames}, {args.keyframes} keyframes per side (+1 warm-up); "
          f"client VAE on {device}", flush=True)
    try:
        import requests  # noqa: F401
        import websocket  # noqa: F401
        missing = None
    except ImportError as exc:
        missing = f"the replaced controller's HTTP/websocket libraries are missing ({exc.name}): " \
                  f"pip install requests websocket-client"
    results: dict = {"size": [w, h], "steps": args.steps, "checkpoint": args.checkpoint,
                     "device": "cuda" if args.gpu else "cpu", "client_device": device, "threads": args.threads,
                     "rows": []}
    with sl.open_server(args, "vs") as server:
        vae = client_vae(models, args.checkpoint) if missing is None else None
        for n, frames in enumerate(args.frames):
            row: dict = {"frames": frames}
            order = ("native", "controller") if n % 2 == 0 else ("controller", "native")
            for side in order:
                if side == "native":
                    row["native"] = native_side(server, args, frames)
                elif missing is None:
                    row["controller"] = controller_side(server, args, vae, frames)
                else:
                    row["controller"] = skipped(f"controller at N={frames}", missing)
            row["speedup"] = ratio(row["native"]["fps"], row["controller"].get("fps"))
            results["rows"].append(row)
            print(f"  N={frames}: native/controller {fmt(row['speedup'])}x", flush=True)
    print_table(f"frames per second, steady state; {w}x{h}, {args.steps} steps, {args.checkpoint}",
                ["N", "native fps", "controller fps", "native/controller", "native gap ms", "controller gap ms",
                 "ctl KF round trip ms", "of it outside server ms", "ctl cycle ms"],
                [[r["frames"], fmt(r["native"]["fps"]), fmt(r["controller"].get("fps")), fmt(r["speedup"], 2, "x"),
                  fmt(r["native"]["gap_ms"]), fmt(r["controller"].get("gap_ms")),
                  fmt(r["controller"].get("round_trip_ms"), 1), fmt(r["controller"].get("outside_server_ms"), 1),
                  fmt(r["controller"].get("cycle_ms"), 1)] for r in results["rows"]])
    results["note"] = (f"Each process runs {args.threads or 'the default number of'} torch CPU thread(s): the "
                       f"controller's client interpolates in a process of its own, in parallel with the server "
                       f"sampling the next keyframe (on a CPU, on a core of its own); the native loop samples and "
                       f"decodes in the server alone, one after the other.")
    print(f"\n{results['note']}")
    write_results(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
