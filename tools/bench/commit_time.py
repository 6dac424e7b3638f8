"""Commit's executor time: the pack's asynchronous commit against the commit it replaced, in one process.

    python tools/bench/commit_time.py [--size 512x256] [--frames 10] [--repeats 30] [--device cuda]

The frames lie on ``--device`` (the CPU by default; on a GPU machine where the decode leaves them),
the keyframe latent on the CPU (ComfyUI's intermediate device).

* **replaced** (rebuilt here): the decoded IMAGE batch made uint8 on the CPU, the keyframe latent and
  ``state.json`` written and fsynced (``Session.commit_keyframe``), then the frames handed to the
  frame writer;
* **pack**: ``LoopService.commit`` of the uint8 frames the Interpolate node decoded (the bundled
  workflow's path), no cache wired: the keyframe staged in memory, the frames handed to the writer as a
  ``FrameBatch`` with the durable commit behind them;
* **pack, cache analysis in Commit / on its worker**: the same with a dual_metric cache wired in (the
  bundled workflow's), its keyframe analysis (embed, admit, collapse analysis) in Commit (the default)
  or handed to the cache worker (tuning ``background_analysis``).

Each side commits into a session of its own (its stored prompt is the bundled workflow, as a running
session's is), taking turns; the frame writer is drained between two commits, untimed, so each side
starts with it idle (a worker's analysis may still run). Also reported: the time until the keyframe is
durable (its frames, latents and state written). Medians of ``--repeats`` commits each. Results:
tools/bench/results/commit_time.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]

from common import fmt, frame_size, median, output_arg, positive_int, print_table, ratio, write_results  # noqa: E402
from core.loop.frames import png_text, to_uint8  # noqa: E402
from core.loop.live_session import Host, LiveSessions  # noqa: E402
from core.loop.loop_service import LoopService  # noqa: E402
from core.loop.session_settings import CacheSettings  # noqa: E402

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "dream_window.json"
SESSION = "commit_bench"
TARGET_MS = 3.0


def host(folder: Path) -> Host:
    """The loop service's view of a server, without one: folders under ``folder``, the CPU as device."""
    return Host(sessions_folder=lambda: folder / "sessions", cache_root=lambda: folder / "caches",
                input_folder=lambda: folder, backend=None, send_event=lambda event, data: None,
                run_on_server_loop=lambda fn, *args: None, executing_prompt_id=lambda: None,
                executing_node_id=lambda: None, intermediate_device=lambda: torch.device("cpu"),
                before_first_writer=lambda: None)


def replaced_commit(service: LoopService, name: str, latents: torch.Tensor, images: torch.Tensor, text: bytes,
                    cache: CacheSettings | None) -> None:
    """The replaced commit: uint8 on the CPU, the keyframe durable before returning, then the writer."""
    live = service.sessions.get(name)
    frames = to_uint8(images.cpu()).numpy()
    first, _ = live.session.commit_keyframe(latents[-1:], 1, images.shape[0], {})
    live.memory.iteration = None
    live.writer().submit(first, frames, text)


def pack_commit(service: LoopService, name: str, latents: torch.Tensor, frames: torch.Tensor, text: bytes,
                cache: CacheSettings | None) -> None:
    """The pack's Commit of the frames the Interpolate node decoded (uint8, in the iteration's record)."""
    service.sessions.get(name).memory.iteration.frames = frames
    service.commit(name, latents, None, 1, 64, cache, text)


SIDES = {"replaced": (replaced_commit, None), "pack": (pack_commit, None),
         "pack, cache analysis in Commit": (pack_commit, "{}"),
         "pack, cache analysis on its worker": (pack_commit, json.dumps({"background_analysis": True}))}
"""Each side: its commit and, for a side with a cache (dual_metric, as the bundled workflow's), its tuning."""


def timed(service: LoopService, name: str, commit, latents: torch.Tensor, images: torch.Tensor, text: bytes,
          cache: CacheSettings | None) -> tuple[float, float]:
    """One commit: (ms on the caller's thread, ms until the writer has written and committed it)."""
    service.begin(name, 8.0, 1.0, None, None, None)
    latents = latents.clone()  # a keyframe of its own, as the sampler's
    start = time.perf_counter()
    commit(service, name, latents, images, text, cache)
    returned = time.perf_counter()
    service.sessions.get(name).writer().flush()
    return (returned - start) * 1e3, (time.perf_counter() - start) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=frame_size, default=(512, 256), help="WxH (512x256)")
    parser.add_argument("--frames", type=positive_int, default=10, help="interpolated frames N (10)")
    parser.add_argument("--repeats", type=positive_int, default=30)
    parser.add_argument("--device", default="cpu", help="where the decoded frames lie (cpu)")
    output_arg(parser, "commit_time")
    args = parser.parse_args()
    width, height = args.size
    prompt = json.loads(WORKFLOW.read_text("utf-8"))
    text = png_text(prompt, None)
    latents = torch.randn(args.frames + 1, 4, height // 8, width // 8)
    images = torch.rand(args.frames + 1, height, width, 3, device=args.device)
    frames = to_uint8(images)
    times: dict[str, list[tuple[float, float]]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as folder:
        service = LoopService(LiveSessions(host(Path(folder))))
        sides = {}
        for index, (side, (commit, tuning)) in enumerate(SIDES.items()):
            name = f"{SESSION}_{index}"
            live = service.sessions.get(name, create=True)
            live.session.prompt, live.session.state = prompt, "running"  # a loop: the next iteration follows
            live.change_settings(enabled=True)
            cache = CacheSettings(name, tuning=tuning) if tuning is not None else None
            if cache is not None:
                service.configure_cache(name, cache)
            batch = images if commit is replaced_commit else frames
            sides[side] = (name, commit, batch, cache)
            service.begin(name, 8.0, 1.0, None, None, None)
            commit(service, name, latents[-1:], batch[-1:], text, cache)  # the first keyframe: one frame
        for round_ in range(args.repeats + 1):
            for side, (name, commit, batch, cache) in sides.items():
                measured = timed(service, name, commit, latents, batch, text, cache)
                if round_:  # the first round warms up
                    times[side].append(measured)
        for name, *_ in sides.values():
            service.sessions.delete(name)
    executor = {side: median(t for t, _ in pairs) for side, pairs in times.items()}
    durable = {side: median(d for _, d in pairs) for side, pairs in times.items()}
    results = {"size": [width, height], "frames": args.frames, "repeats": args.repeats, "device": args.device,
               "threads": torch.get_num_threads(), "target_ms": TARGET_MS,
               "executor_ms": executor, "until_written_and_durable_ms": durable,
               "executor_speedup": {side: ratio(executor["replaced"], ms) for side, ms in executor.items()}}
    print_table(f"Commit, {width}x{height}, N = {args.frames}, frames on {args.device}, medians of {args.repeats} "
                f"commits (ms; target: {TARGET_MS:g} ms on the executor)",
                ["side", "executor time", "replaced / side", "until frames and keyframe are on disk"],
                [[side, fmt(ms, 2), fmt(results["executor_speedup"][side], 1, "x"), fmt(durable[side], 1)]
                 for side, ms in executor.items()])
    write_results(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
