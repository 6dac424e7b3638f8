"""CPU benchmark: the frame writer's PNG encoder against Pillow's, and what each costs the
executor thread while it runs.

    python tools/bench/frame_encode.py [--size 512x256] [--rounds 7]

The frame writer encodes every frame on a thread of its own while ComfyUI's executor thread runs
the next keyframe, whose sampler is mostly Python between GPU kernels: the encoder's CPU time and
any time it holds the GIL are taken from that thread. Measured here, with a dream-like frame
(smooth colour fields plus grain):

* **encode**: ms per frame and file size, the pack's ``core.loop.frames.encode_png`` (PNG "Up" filter
  in numpy, ``zlib.compress`` at level 1) against Pillow's ``save(format="PNG",
  compress_level=1)`` (the baseline, what the pack used before);
* **executor slowdown**: a pure-Python workload's time on the main thread while a writer thread
  encodes frames back to back, divided by its time with no writer, for each encoder. The three
  cases run interleaved, ``--rounds`` times, and medians are compared, so machine load affects
  them alike.

Results: tools/bench/results/frame_encode.json.
"""

from __future__ import annotations

import argparse
import io
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]

from common import fmt, frame_size, median, output_arg, positive_int, print_table, ratio, write_results  # noqa: E402
from core.loop.frames import encode_png  # noqa: E402


def pillow_png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


ENCODERS = {"pillow (baseline)": pillow_png, "dream window": encode_png}


def dream_frame(width: int, height: int) -> np.ndarray:
    x = np.linspace(0, 6, width)[None, :, None]
    y = np.linspace(0, 3, height)[:, None, None]
    smooth = (np.sin(x * np.array([1.0, 1.3, 0.7]) + y * np.array([1.0, 2.0, 3.0])) * 0.5 + 0.5) * 235
    grain = np.random.default_rng(0).random((height, width, 3)) * 20
    return (smooth + grain).clip(0, 255).astype(np.uint8)


def python_work(n: int = 200_000) -> float:
    """Seconds for a pure-Python loop: stands for the sampler's Python on the executor thread."""
    start, total = time.perf_counter(), 0
    for i in range(n):
        total += i * i
    return time.perf_counter() - start


def with_writer(encode, frame: np.ndarray, repeats: int) -> float:
    """Median seconds of ``python_work`` while a thread encodes ``frame`` back to back."""
    stop = threading.Event()

    def writer():
        while not stop.is_set():
            encode(frame)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        return median(python_work() for _ in range(repeats))
    finally:
        stop.set()
        thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=frame_size, default=(512, 256), help="WxH (512x256)")
    parser.add_argument("--rounds", type=positive_int, default=7, help="interleaved rounds (7)")
    output_arg(parser, "frame_encode")
    args = parser.parse_args()
    frame = dream_frame(*args.size)
    for name, encode in ENCODERS.items():
        decoded = np.asarray(Image.open(io.BytesIO(encode(frame))))
        if not np.array_equal(decoded, frame):
            raise SystemExit(f"{name}: the PNG does not decode to the frame")

    encode_ms = {name: [] for name in ENCODERS}
    work = {"no writer": [], **{name: [] for name in ENCODERS}}
    for _ in range(args.rounds):
        for name, encode in ENCODERS.items():
            start = time.perf_counter()
            for _ in range(5):
                encode(frame)
            encode_ms[name].append((time.perf_counter() - start) / 5 * 1e3)
        work["no writer"].append(median(python_work() for _ in range(3)))
        for name, encode in ENCODERS.items():
            work[name].append(with_writer(encode, frame, 3))

    alone = median(work["no writer"])
    results = {"size": list(args.size), "rounds": args.rounds, "encoders": {}}
    rows = []
    for name, encode in ENCODERS.items():
        size = len(encode(frame))
        ms, slowed = median(encode_ms[name]), median(work[name])
        results["encoders"][name] = {"encode_ms": ms, "bytes": size, "executor_slowdown": ratio(slowed, alone)}
        rows.append((name, fmt(ms), f"{size / 1024:.0f}", fmt(ratio(slowed, alone), suffix="x")))
    base, ours = (results["encoders"][n] for n in ENCODERS)
    results["encode_speedup"] = ratio(base["encode_ms"], ours["encode_ms"])
    results["size_ratio"] = ratio(ours["bytes"], base["bytes"])
    print_table(f"PNG encode of one {args.size[0]}x{args.size[1]} frame, medians of {args.rounds} rounds",
                ("encoder", "ms/frame", "KiB", "executor slowdown while it encodes"), rows)
    print(f"\nencode speed-up vs Pillow: {fmt(results['encode_speedup'])}x; "
          f"file size vs Pillow: {fmt(results['size_ratio'])}x; "
          f"executor slowdown {fmt(base['executor_slowdown'])}x (Pillow) vs {fmt(ours['executor_slowdown'])}x (ours)")
    write_results(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
