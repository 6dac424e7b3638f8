"""Memory over a long dream loop: the server's resident memory and, where ``nvidia-smi``
exists, the GPU memory in use, sampled while the bundled workflow loops by itself
(throttling off); growth as the least-squares slope over the samples taken after a warm-up,
per 1,000 iterations.

* RSS: ``VmRSS`` of ``/proc/<server pid>/status`` (the ComfyUI process);
* GPU: ``nvidia-smi --query-gpu=memory.used`` for the whole device (torch's own counters live
  inside the server process and are not reachable from here); reported as unavailable
  without ``nvidia-smi``.

This is one side only: the pack's loop over many iterations (a leak shows as a slope; there
is no bare counterpart to divide by). Writes ``tools/bench/results/memory.json``.

Run: ``python tools/bench/memory.py`` (``--help`` for options; ``--gpu`` for a CUDA server).
"""

from __future__ import annotations

import argparse
import sys
import time

import serverlib as sl
from common import (
    fmt,
    frame_size,
    gpu_memory_used_mb,
    non_negative_float,
    output_arg,
    positive_int,
    print_table,
    rss_mb,
    slope_per,
    write_results,
)

PER = 1000
"""Growth is reported per this many iterations."""
MIN_SLOPE = 10
"""Iterations after the warm-up that the slope needs at least."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; nonsense values are refused, device-dependent defaults filled in."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=positive_int, help="loop iterations (default 200 with --gpu, else 1000)")
    parser.add_argument("--warmup", type=int, help="iterations left out of the slope (default 10%% of --iterations)")
    parser.add_argument("--size", type=frame_size, help="frame size WxH (default 512x256 with --gpu, else 64x64)")
    parser.add_argument("--steps", type=positive_int, help="sampler steps (default 10 with --gpu, else 1)")
    parser.add_argument("--frames", type=positive_int, help="interpolated frames, N (default 10 with --gpu, else 1)")
    parser.add_argument("--interval", type=non_negative_float, default=0.25, help="seconds between samples (0.25)")
    parser.add_argument("--timeout", type=positive_int, default=900, help="seconds allowed for the loop (900)")
    sl.add_server_args(parser)
    output_arg(parser, "memory")
    args = parser.parse_args(argv)
    sl.check_server_args(parser, args)
    if args.interval <= 0:
        parser.error("--interval must be > 0 seconds")
    args.iterations = args.iterations or (200 if args.gpu else 1000)
    if args.iterations < MIN_SLOPE:
        parser.error(f"--iterations must be >= {MIN_SLOPE}: the slope needs at least {MIN_SLOPE} iterations")
    args.warmup = args.iterations // 10 if args.warmup is None else args.warmup
    if not 0 <= args.warmup <= args.iterations - MIN_SLOPE:
        parser.error(f"--warmup must be between 0 and {args.iterations - MIN_SLOPE} (--iterations - {MIN_SLOPE}) "
                     f"so that at least {MIN_SLOPE} iterations make the slope")
    args.size = args.size or ((512, 256) if args.gpu else (64, 64))
    args.steps = args.steps or (10 if args.gpu else 1)
    args.frames = args.frames or (10 if args.gpu else 1)
    return args


def sample_loop(server, iterations: int, interval: float, timeout: float) -> list[dict]:
    """Samples ``{t, iteration, rss_mb, gpu_mb}`` until ``iterations`` prompts have finished.

    Finished iterations are counted from the timing pack's prompt records, so that sampling
    asks nothing of the pack itself while it loops."""
    samples: list[dict] = []
    done = 0
    deadline = time.monotonic() + timeout
    start = time.monotonic()
    while time.monotonic() < deadline:
        records = sl.fetch_timings(server)
        failed = [r["prompt_id"] for r in records if not r["success"]]
        if failed:
            raise RuntimeError(f"iteration prompts failed: {failed}; server log:\n{server.log_tail(3000)}")
        done += len(records)
        samples.append({"t": time.monotonic() - start, "iteration": done,
                        "rss_mb": rss_mb(server.proc.pid), "gpu_mb": gpu_memory_used_mb()})
        if done >= iterations:
            return samples
        time.sleep(interval)
    raise TimeoutError(f"the loop did not finish {iterations} iterations in {timeout} s (at {done})")


def growth(samples: list[dict], key: str, warmup: int) -> dict:
    """After-warm-up level, end, peak and slope per ``PER`` iterations of one series."""
    kept = [s for s in samples if s["iteration"] >= warmup and s[key] is not None]
    if not kept:
        return {"unavailable": "no samples" if key == "rss_mb" else "nvidia-smi is not available"}
    return {"after_warmup": kept[0][key], "end": kept[-1][key], "peak": max(s[key] for s in kept),
            "slope_per_1000": slope_per([s["iteration"] for s in kept], [s[key] for s in kept], PER),
            "samples": len(kept)}


def main(argv: list[str] | None = None) -> int:
    """Run the loop while sampling, print the table, write the JSON; returns the exit status."""
    args = parse_args(argv)
    w, h = args.size
    print(f"{args.iterations} iterations (warm-up {args.warmup}), {w}x{h}, {args.steps} steps, N={args.frames}, "
          f"sampled every {args.interval} s", flush=True)
    wf = sl.dream_workflow(args.checkpoint, args.size, args.steps, args.frames, "bench_memory", args.iterations)
    with sl.open_server(args, "memory") as server:
        sl.fetch_timings(server)
        server.queue(wf)
        started = time.monotonic()
        samples = sample_loop(server, args.iterations, args.interval, args.timeout)
        wall = time.monotonic() - started
    series = {"rss_mb": growth(samples, "rss_mb", args.warmup), "gpu_mb": growth(samples, "gpu_mb", args.warmup)}
    rows = []
    for name, label in (("rss_mb", "server RSS (MiB)"), ("gpu_mb", "GPU memory used (MiB)")):
        data = series[name]
        if "unavailable" in data:
            rows.append([label, "unavailable", "", "", data["unavailable"]])
        else:
            rows.append([label, fmt(data["after_warmup"], 1), fmt(data["end"], 1), fmt(data["peak"], 1),
                         fmt(data["slope_per_1000"], 2)])
    print_table(f"memory over {args.iterations} iterations ({wall:.0f} s, {wall / args.iterations * 1e3:.0f} ms per "
                f"iteration); slope over iterations {args.warmup}..{args.iterations}",
                ["series", "after warm-up", "end", "peak", f"growth per {PER:,} iterations"], rows)
    write_results(args.output, {"iterations": args.iterations, "warmup": args.warmup, "size": [w, h],
                                "steps": args.steps, "frames": args.frames, "checkpoint": args.checkpoint,
                                "device": "cuda" if args.gpu else "cpu", "threads": args.threads, "wall_s": wall,
                                "series": series,
                                "samples": samples})
    return 0


if __name__ == "__main__":
    sys.exit(main())
