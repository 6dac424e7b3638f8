"""Commit's executor time: the pack's asynchronous commit against the commit it replaced, in one process.

    python tools/bench/commit_time.py [--size 512x256] [--frames 10] [--repeats 30] [--device cuda]

The decoded batch lies on ``--device`` (the CPU by default; on a GPU machine where VAE Decode leaves
it there), the keyframe latent on the CPU (ComfyUI's intermediate device).

* **replaced** (rebuilt here): the decoded batch made uint8 on the CPU, the keyframe latent and
  ``state.json`` written and fsynced (``Session.commit_keyframe``), then the frames handed to the
  frame writer;
* **pack**: ``LoopService.commit`` (no cache wired): the keyframe staged in memory, the frames handed
  to the writer as a ``FrameBatch`` with the durable commit behind them.

Both sides commit into the same session (its stored prompt is the bundled workflow, as a running
session's is), alternating; the frame writer is drained between two commits, untimed, so each side
starts with it idle. Also reported: the time until the pack's keyframe is durable (its frames, latents
and state written). Medians of ``--repeats`` commits each. Results: tools/bench/results/commit_time.json.
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

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "dream_window.json"
SESSION = "commit_bench"


def host(folder: Path) -> Host:
    """The loop service's view of a server, without one: folders under ``folder``, the CPU as device."""
    return Host(sessions_folder=lambda: folder / "sessions", cache_root=lambda: folder / "caches",
                input_folder=lambda: folder, backend=None, send_event=lambda event, data: None,
                run_on_server_loop=lambda fn, *args: None, executing_prompt_id=lambda: None,
                executing_node_id=lambda: None, intermediate_device=lambda: torch.device("cpu"),
                before_first_writer=lambda: None)


def replaced_commit(service: LoopService, latents: torch.Tensor, images: torch.Tensor, text: bytes) -> None:
    """The replaced commit: uint8 on the CPU, the keyframe durable before returning, then the writer."""
    live = service.sessions.get(SESSION)
    frames = to_uint8(images.cpu()).numpy()
    first, _ = live.session.commit_keyframe(latents[-1:], 1, images.shape[0], {})
    live.memory.iteration = None
    live.writer().submit(first, frames, text)


def pack_commit(service: LoopService, latents: torch.Tensor, images: torch.Tensor, text: bytes) -> None:
    service.commit(SESSION, latents, images, 1, 64, None, text)


def timed(service: LoopService, commit, latents: torch.Tensor, images: torch.Tensor,
          text: bytes) -> tuple[float, float]:
    """One commit: (ms on the caller's thread, ms until the writer has written and committed it)."""
    service.begin(SESSION, 8.0, 1.0, None, None, None)
    latents = latents.clone()  # a keyframe of its own, as the sampler's
    start = time.perf_counter()
    commit(service, latents, images, text)
    returned = time.perf_counter()
    service.sessions.get(SESSION).writer().flush()
    return (returned - start) * 1e3, (time.perf_counter() - start) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=frame_size, default=(512, 256), help="WxH (512x256)")
    parser.add_argument("--frames", type=positive_int, default=10, help="interpolated frames N (10)")
    parser.add_argument("--repeats", type=positive_int, default=30)
    parser.add_argument("--device", default="cpu", help="where the decoded images lie (cpu)")
    output_arg(parser, "commit_time")
    args = parser.parse_args()
    width, height = args.size
    prompt = json.loads(WORKFLOW.read_text("utf-8"))
    text = png_text(prompt, None)
    latents = torch.randn(args.frames + 1, 4, height // 8, width // 8)
    images = torch.rand(args.frames + 1, height, width, 3, device=args.device)
    times = {"replaced": [], "pack": []}
    with tempfile.TemporaryDirectory() as folder:
        service = LoopService(LiveSessions(host(Path(folder))))
        live = service.sessions.get(SESSION, create=True)
        live.session.prompt, live.session.state = prompt, "running"  # a loop: the next iteration follows
        live.change_settings(enabled=True)
        pack_commit(service, latents[-1:], images[-1:], text)  # the first keyframe: one frame
        for round_ in range(args.repeats + 1):
            for name, commit in (("replaced", replaced_commit), ("pack", pack_commit)):
                measured = timed(service, commit, latents, images, text)
                if round_:  # the first round warms up
                    times[name].append(measured)
        service.sessions.delete(SESSION)
    executor = {name: median(t for t, _ in pairs) for name, pairs in times.items()}
    durable = {name: median(d for _, d in pairs) for name, pairs in times.items()}
    results = {"size": [width, height], "frames": args.frames, "repeats": args.repeats, "device": args.device,
               "threads": torch.get_num_threads(),
               "executor_ms": executor, "until_written_and_durable_ms": durable,
               "executor_speedup": ratio(executor["replaced"], executor["pack"])}
    print_table(f"Commit, {width}x{height}, N = {args.frames}, images on {args.device}, medians of {args.repeats} "
                f"commits (ms)",
                ["", "replaced", "pack", "replaced / pack"],
                [["executor time", fmt(executor["replaced"], 2), fmt(executor["pack"], 2),
                  fmt(results["executor_speedup"], 1, "x")],
                 ["until frames and keyframe are on disk", fmt(durable["replaced"], 1), fmt(durable["pack"], 1),
                  fmt(ratio(durable["replaced"], durable["pack"]), 2, "x")]])
    write_results(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
