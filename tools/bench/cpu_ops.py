"""Benchmark: the pack's per-iteration tensor work on the CPU, where ComfyUI keeps latents and
images between nodes, against the textbook formulation it replaced.

    python tools/bench/cpu_ops.py [--size 512x256] [--frames 10 32] [--repeats 30]

* **slerp**: the batch of interpolated latents between two keyframes (``[4, H/8, W/8]``,
  float32), ``core.loop.interpolation.interpolate`` against the textbook global slerp
  (``(wa ua + wb ub) * magnitude``, one temporary per operation);
* **to uint8**: the decoded batch (N + 1 frames) to uint8 for the frame writer,
  ``core.loop.frames.to_uint8`` against the out-of-place chain ``clamp, mul, round, to``.

Each runs at torch's default intra-op thread count and at 1 thread, with the machine otherwise
idle and with a frame-writer thread encoding PNGs back to back (as in the loop). Medians of
``--repeats`` calls, all cases in the same run. Results: tools/bench/results/cpu_ops.json.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]

from common import fmt, frame_size, median, output_arg, positive_int, print_table, ratio, write_results  # noqa: E402
from core.loop import interpolation  # noqa: E402
from core.loop.frames import encode_png, to_uint8  # noqa: E402
from frame_encode import dream_frame  # noqa: E402


def textbook_slerp(a: torch.Tensor, b: torch.Tensor, count: int) -> torch.Tensor:
    """The baseline: the same global slerp written out term by term."""
    t = interpolation.frame_times(count).view(-1, 1)
    va, vb = a.reshape(-1).double(), b.reshape(-1).double()
    na, nb = va.norm(), vb.norm()
    ua, ub = va / (na + interpolation.EPS), vb / (nb + interpolation.EPS)
    omega = torch.acos(torch.clamp(torch.dot(va, vb) / (na * nb), -1.0, 1.0))
    wa, wb = torch.sin((1.0 - t) * omega) / torch.sin(omega), torch.sin(t * omega) / torch.sin(omega)
    out = (wa * ua + wb * ub) * ((1.0 - t) * na + t * nb)
    return out.reshape(count, *a.shape).to(a.dtype)


def textbook_uint8(images: torch.Tensor) -> torch.Tensor:
    """The baseline: the out-of-place chain the frame writer used before."""
    return images.to("cpu", torch.float32).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)


def timed(work, repeats: int) -> float:
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append((time.perf_counter() - start) * 1e3)
    return median(times)


class BusyWriter:
    """A thread encoding frames back to back while the block runs."""

    def __init__(self, width: int, height: int):
        self.frame = dream_frame(width, height)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            encode_png(self.frame)

    def __enter__(self):
        self.thread.start()

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=frame_size, default=(512, 256), help="WxH (512x256)")
    parser.add_argument("--frames", type=positive_int, nargs="+", default=[10, 32], help="N (10 32)")
    parser.add_argument("--repeats", type=positive_int, default=30)
    output_arg(parser, "cpu_ops")
    args = parser.parse_args()
    width, height = args.size
    a, b = torch.randn(4, height // 8, width // 8), torch.randn(4, height // 8, width // 8)
    for n in args.frames:
        if not torch.allclose(interpolation.interpolate(a, b, n), textbook_slerp(a, b, n), atol=1e-5):
            raise SystemExit(f"N={n}: the two slerps disagree")
    cases = []
    for n in args.frames:
        images = torch.rand(n + 1, height, width, 3) * 1.2 - 0.1
        if not torch.equal(to_uint8(images), textbook_uint8(images)):
            raise SystemExit(f"N={n}: the two uint8 conversions disagree")
        cases.append((f"slerp N={n}", lambda n=n: textbook_slerp(a, b, n), lambda n=n: interpolation.interpolate(a, b, n)))
        cases.append((f"to uint8 {n + 1} frames", lambda i=images: textbook_uint8(i), lambda i=images: to_uint8(i)))
    default_threads = torch.get_num_threads()
    rows, results = [], {"size": [width, height], "default_threads": default_threads, "cases": []}
    for threads in dict.fromkeys((default_threads, 1)):
        torch.set_num_threads(threads)
        for busy in (False, True):
            for name, baseline, pack in cases:
                if busy:
                    with BusyWriter(width, height):
                        base_ms, pack_ms = timed(baseline, args.repeats), timed(pack, args.repeats)
                else:
                    base_ms, pack_ms = timed(baseline, args.repeats), timed(pack, args.repeats)
                load = "writer busy" if busy else "idle"
                results["cases"].append({"case": name, "threads": threads, "load": load,
                                         "baseline_ms": base_ms, "pack_ms": pack_ms})
                rows.append([name, threads, load, fmt(base_ms, 3), fmt(pack_ms, 3), fmt(ratio(base_ms, pack_ms), 2, "x")])
    torch.set_num_threads(default_threads)
    print_table(f"CPU tensor work per iteration, {width}x{height}, medians of {args.repeats} calls (ms)",
                ["work", "threads", "load", "textbook", "pack", "speed-up"], rows)
    write_results(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
