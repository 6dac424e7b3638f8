"""Soak: the bundled dream workflow looping by itself on a real ComfyUI for many iterations.

Queues the bundled API workflow once (tiny models, fast playback with a short throttle, the cache node's admission
``always`` so the cache reaches its capacity, ``max_iterations`` = ``--iterations`` so the loop
stops by itself) and samples, every ``--interval`` seconds, from outside the server:

* server RSS (``VmRSS`` of ``/proc/<pid>/status``), threads (``Threads``) and open file
  handles (entries of ``/proc/<pid>/fd``);
* ComfyUI's history length (``GET /history``);
* the session's frame folder (``frame_*.png`` files) against the commit node's retention;
* the cache (``GET /dream_window/cache/<session>``: size, capacity, tensor files on disk);
* the playback buffer (``GET /dream_window/status/<session>``: ``buffer_filled``).

Growth is the least-squares slope over the samples taken after the warm-up, per 1,000
iterations. Exit status 1 when a bound is broken:

* RSS grows by ``--max-rss-slope`` MB (50) or more per 1,000 iterations after the warm-up;
* the history holds more than two entries beyond what it held before the loop started (the
  supervisor keeps only the newest finished loop prompt);
* the frame folder holds more than the buffer bound below + retention + one iteration's frames
  (written, not yet pruned; retention never deletes an unplayed frame), or, once the loop has
  stopped and playback has shown every frame, anything but the newest ``retention`` frames;
* the cache holds more than its capacity (tensor files: capacity + the two entries one
  keyframe adds before the evicted ones are deleted), or fewer than capacity at the end;
* ``buffer_filled`` exceeds the throttle target (``--buffer-target`` seconds at ``--fps``) + one
  iteration's frames;
* threads or file handles grow: the highest count over the last quarter of the samples
  after the warm-up exceeds the highest over the first quarter by more than the tolerance.

Run: ``python tools/bench/soak.py`` (2,000 iterations, about an hour on two CPU cores);
``--help`` for options. Writes ``tools/bench/results/soak.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools.harness.comfy_process import TINY_SD15, ComfyServer, load_api_workflow  # noqa: E402

SESSION = "soak"
PER = 1000
"""Growth is reported per this many iterations."""
THREAD_TOLERANCE = 3
FD_TOLERANCE = 8
HISTORY_SLACK = 2
CACHE_FILE_SLACK = 2
"""Tensor files one keyframe adds (keyframe and midpoint) before the evicted ones are deleted."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=2000, help="loop iterations (2000)")
    parser.add_argument("--warmup", type=int,
                        help="iterations left out of the growth figures (default: 10%% of --iterations, "
                             "at least 50)")
    parser.add_argument("--size", type=int, default=64, help="frame width and height in pixels (64)")
    parser.add_argument("--steps", type=int, default=1, help="sampler steps (1)")
    parser.add_argument("--frames", type=int, default=10, help="interpolated frames per keyframe pair (10)")
    parser.add_argument("--retention", type=int, default=128, help="frames kept on disk (128, as shipped)")
    parser.add_argument("--capacity", type=int, default=50, help="cache capacity (50, as shipped)")
    parser.add_argument("--fps", type=float, default=30.0, help="playback frame rate (30: playback keeps up)")
    parser.add_argument("--buffer-target", type=float, default=2.0,
                        help="seconds of unplayed frames that hold the next iteration back (2.0)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples (1.0)")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds allowed for the loop (14400)")
    parser.add_argument("--max-rss-slope", type=float, default=50.0,
                        help="MB per 1,000 iterations of RSS growth that fail the run (50)")
    parser.add_argument("--output", type=Path, default=REPO / "tools" / "bench" / "results" / "soak.json",
                        help="JSON results file (tools/bench/results/soak.json)")
    parser.add_argument("--keep-base", action="store_true",
                        help="keep the server's base folder (log, outputs); kept anyway when a bound breaks")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = max(50, args.iterations // 10)
    if args.iterations < 1 or not 0 <= args.warmup <= args.iterations - 10:
        parser.error("--warmup must leave at least 10 iterations of --iterations for the growth figures")
    if args.size < 64 or args.size % 8:
        parser.error("--size must be a multiple of 8, at least 64")
    if min(args.steps, args.retention, args.capacity) < 1 or args.frames < 0 or args.interval <= 0:
        parser.error("--steps, --retention and --capacity must be >= 1, --frames >= 0, --interval > 0")
    if not 0.1 <= args.fps <= 120 or args.buffer_target <= 0:
        parser.error("--fps must be from 0.1 to 120 and --buffer-target > 0 (the throttle bounds the buffer)")
    return args


def soak_workflow(args: argparse.Namespace, session: str = SESSION) -> dict:
    """The bundled API workflow at test size, playing at ``--fps`` behind a ``--buffer-target`` throttle,
    admission ``always``, bounded by ``max_iterations``."""
    wf = load_api_workflow()
    by_type = {node["class_type"]: node["inputs"] for node in wf.values()}
    by_type["CheckpointLoaderSimple"]["ckpt_name"] = TINY_SD15
    by_type["DreamWindowSession"].update(name=session, fps=args.fps, min_buffer_seconds=0.0)
    by_type["DreamWindowKeyframeSource"].update(width=args.size, height=args.size)
    by_type["KSampler"]["steps"] = args.steps
    by_type["DreamWindowInterpolate"]["frames"] = args.frames
    by_type["DreamWindowCommit"]["retention"] = args.retention
    by_type["DreamWindowCache"].update(capacity=args.capacity, admission="always")
    by_type["DreamWindowAutoQueue"].update(enabled=True, max_iterations=args.iterations, min_delay=0.0,
                                           buffer_target=args.buffer_target)
    return wf


# -- readings --

def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS`` (kB) and ``Threads`` of a process, from ``/proc/<pid>/status``."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            values[key] = int(value.split()[0])
    return values


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope_per(xs: list[float], ys: list[float], per: float = PER) -> float | None:
    """Least-squares slope of ``ys`` over ``xs``, times ``per``; None for fewer than two distinct xs."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx * per


def sample(server: ComfyServer, session: str, folders: dict[str, Path]) -> dict:
    """One reading of everything the soak watches."""
    proc = proc_status(server.proc.pid)
    state = server.session(session) or {"iteration": 0, "state": "starting"}
    status = server.get(f"/dream_window/status/{session}") if state["state"] != "starting" else {}
    code, body, _ = server.request("GET", f"/dream_window/cache/{session}")
    cache = json.loads(body) if code == 200 else {}
    return {
        "t": time.monotonic(),
        "iteration": state["iteration"],
        "state": state["state"],
        "rss_mb": proc["VmRSS"] / 1024,
        "threads": proc["Threads"],
        "fds": open_files(server.proc.pid),
        "history": len(server.get("/history")),
        "frame_files": sum(1 for _ in folders["frames"].glob("frame_*.png")) if folders["frames"].is_dir() else 0,
        "cache_size": cache.get("size"),
        "cache_files": (sum(1 for _ in folders["tensors"].glob("*.safetensors"))
                        if folders["tensors"].is_dir() else 0),
        "buffer_filled": status.get("buffer_filled"),
        "frames_played": status.get("frame_number"),
    }


# -- the run --

def run(server: ComfyServer, args: argparse.Namespace, session: str = SESSION) -> dict:
    """Loop ``args.iterations`` iterations on ``server`` and return the report (see ``violations``)."""
    output = server.base / "output"
    folders = {"frames": output / "dream_window" / session / "frames",
               "tensors": output / "dream_window_cache" / session / "tensors"}
    history_before = len(server.get("/history"))
    server.queue(soak_workflow(args, session))
    started = time.monotonic()
    samples: list[dict] = []
    last_print = 0.0
    failure = None
    try:
        while True:
            reading = sample(server, session, folders)
            reading["t"] -= started
            samples.append(reading)
            if reading["t"] - last_print >= 60:
                last_print = reading["t"]
                print(f"  {reading['t']:6.0f} s  iteration {reading['iteration']:5d}  RSS {reading['rss_mb']:7.1f} "
                      f"MB  threads {reading['threads']}  fds {reading['fds']}  history {reading['history']}",
                      flush=True)
            if reading["iteration"] >= args.iterations and reading["state"] != "running":
                break
            if reading["t"] > args.timeout:
                raise TimeoutError(f"the loop did not finish {args.iterations} iterations in {args.timeout} s")
            if reading["state"] in ("paused", "idle"):
                raise RuntimeError(f"the loop stopped ({reading['state']}): {server.session(session)['last_error']}")
            time.sleep(args.interval)
        wall = time.monotonic() - started
        server.wait_for(lambda: not any(server.get("/queue").values()), timeout=120, what="the queue to empty")
        produced = 1 + (args.iterations - 1) * (args.frames + 1)
        server.wait_for(lambda: sample(server, session, folders)["frames_played"] == produced, timeout=120,
                        what="playback to show every frame")
        server.wait_for(lambda: sample(server, session, folders)["frame_files"] == min(args.retention, produced),
                        timeout=60, what="the frame writer to delete the played frames beyond the retention")
        final = sample(server, session, folders)
        final["t"] -= started
    except (AssertionError, OSError, RuntimeError) as exc:  # a 5xx, a dead server, a stalled or paused loop
        if not samples:
            raise
        failure = f"the run broke off at iteration {samples[-1]['iteration']}: {type(exc).__name__}: {exc}"
        print(failure, flush=True)
        wall, final = time.monotonic() - started, samples[-1]
    result = report(args, samples, final, history_before, wall)
    if failure:
        result["violations"].insert(0, failure)
    return result


def _series(samples: list[dict], key: str) -> dict:
    kept = [s for s in samples if s[key] is not None]
    xs, ys = [s["iteration"] for s in kept], [s[key] for s in kept]
    quarter = max(1, len(ys) // 4)
    return {"after_warmup": ys[0] if ys else None, "end": ys[-1] if ys else None, "peak": max(ys, default=None),
            "slope_per_1000": slope_per(xs, ys), "first_quarter_max": max(ys[:quarter], default=None),
            "last_quarter_max": max(ys[-quarter:], default=None), "samples": len(ys)}


def report(args: argparse.Namespace, samples: list[dict], final: dict, history_before: int, wall: float) -> dict:
    after = [s for s in samples if s["iteration"] >= args.warmup]
    frames_per_iteration = args.frames + 1
    produced = 1 + (final["iteration"] - 1) * frames_per_iteration
    buffer_bound = round(args.buffer_target * args.fps) + frames_per_iteration
    result = {
        "iterations": final["iteration"], "warmup": args.warmup, "wall_s": round(wall, 1),
        "seconds_per_iteration": round(wall / max(1, final["iteration"]), 3),
        "settings": {"size": args.size, "steps": args.steps, "frames": args.frames, "retention": args.retention,
                     "capacity": args.capacity, "fps": args.fps, "buffer_target": args.buffer_target,
                     "interval": args.interval},
        "rss_mb": _series(after, "rss_mb"),
        "threads": _series(after, "threads"),
        "fds": _series(after, "fds"),
        "history": {"before": history_before, "peak": max(s["history"] for s in samples), "end": final["history"]},
        "frame_files": {"peak": max(s["frame_files"] for s in samples), "end": final["frame_files"],
                        "retention": args.retention, "produced": produced,
                        "bound": buffer_bound + args.retention + frames_per_iteration},
        "cache": {"peak_size": max((s["cache_size"] or 0) for s in samples), "end_size": final["cache_size"],
                  "peak_files": max(s["cache_files"] for s in samples), "end_files": final["cache_files"],
                  "capacity": args.capacity},
        "buffer": {"peak_filled": max((s["buffer_filled"] or 0) for s in samples),
                   "bound": buffer_bound,
                   "frames_played": final["frames_played"]},
        "samples": samples,
    }
    result["violations"] = violations(result, args.max_rss_slope)
    return result


def violations(result: dict, max_rss_slope: float = 50.0) -> list[str]:
    """Every bound the run broke, in words (empty: all held)."""
    broken = []
    rss = result["rss_mb"]["slope_per_1000"]
    if rss is None or rss >= max_rss_slope:
        broken.append(f"RSS grows {rss} MB per 1,000 iterations after the warm-up (limit {max_rss_slope})")
    history = result["history"]
    if max(history["peak"], history["end"]) > history["before"] + HISTORY_SLACK:
        broken.append(f"ComfyUI history grew from {history['before']} to {history['peak']} entries")
    frames = result["frame_files"]
    if frames["peak"] > frames["bound"]:
        broken.append(f"frame folder held {frames['peak']} files (retention {frames['retention']}, bound "
                      f"{frames['bound']})")
    if frames["end"] != min(frames["retention"], frames["produced"]):
        broken.append(f"frame folder holds {frames['end']} files at the end, expected "
                      f"{min(frames['retention'], frames['produced'])}")
    cache = result["cache"]
    if cache["peak_size"] > cache["capacity"] or cache["peak_files"] > cache["capacity"] + CACHE_FILE_SLACK:
        broken.append(f"cache held {cache['peak_size']} entries / {cache['peak_files']} tensor files "
                      f"(capacity {cache['capacity']})")
    if cache["end_size"] != cache["capacity"] or cache["end_files"] != cache["capacity"]:
        broken.append(f"cache ends with {cache['end_size']} entries / {cache['end_files']} tensor files, "
                      f"not its capacity {cache['capacity']} (admission 'always' must fill it)")
    if result["buffer"]["peak_filled"] > result["buffer"]["bound"]:
        broken.append(f"playback buffer held {result['buffer']['peak_filled']} frames (bound "
                      f"{result['buffer']['bound']})")
    for key, tolerance in (("threads", THREAD_TOLERANCE), ("fds", FD_TOLERANCE)):
        series = result[key]
        if series["last_quarter_max"] > series["first_quarter_max"] + tolerance:
            broken.append(f"{key} grew from {series['first_quarter_max']} to {series['last_quarter_max']} "
                          f"after the warm-up (tolerance {tolerance})")
    return broken


def summary(result: dict) -> str:
    rss, threads, fds = result["rss_mb"], result["threads"], result["fds"]
    lines = [
        f"{result['iterations']} iterations in {result['wall_s']} s ({result['seconds_per_iteration']} s each), "
        f"warm-up {result['warmup']} iterations, {result['settings']}",
        f"server RSS: {rss['after_warmup']:.1f} MB after warm-up, {rss['end']:.1f} MB at the end, peak "
        f"{rss['peak']:.1f} MB, slope {rss['slope_per_1000']:+.2f} MB per 1,000 iterations",
        f"threads: {threads['first_quarter_max']} -> {threads['last_quarter_max']} (first/last quarter max), "
        f"slope {threads['slope_per_1000']:+.2f} per 1,000",
        f"open file handles: {fds['first_quarter_max']} -> {fds['last_quarter_max']}, "
        f"slope {fds['slope_per_1000']:+.2f} per 1,000",
        f"ComfyUI history: {result['history']['before']} before, peak {result['history']['peak']}, "
        f"end {result['history']['end']}",
        f"frame folder: peak {result['frame_files']['peak']} files, end {result['frame_files']['end']} "
        f"(retention {result['frame_files']['retention']}, {result['frame_files']['produced']} frames made)",
        f"cache: peak {result['cache']['peak_size']} entries / {result['cache']['peak_files']} tensor files, end "
        f"{result['cache']['end_size']} / {result['cache']['end_files']} (capacity {result['cache']['capacity']})",
        f"playback buffer: peak buffer_filled {result['buffer']['peak_filled']} (bound {result['buffer']['bound']}), "
        f"{result['buffer']['frames_played']} frames played",
        "bounds: all held" if not result["violations"] else "BOUNDS BROKEN:\n  " + "\n  ".join(result["violations"]),
    ]
    return "\n".join(lines)


def write_report(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="dw-soak-"))
    server = ComfyServer(base)
    print(f"soak: {args.iterations} iterations (warm-up {args.warmup}) on ComfyUI in {base}", flush=True)
    result = None
    try:
        server.start(timeout=300)
        result = run(server, args)
    finally:
        server.stop()
        if args.keep_base or result is None or result["violations"]:
            print(f"server base kept (log: {server.log_path}): {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    print(summary(result))
    write_report(result, args.output)
    print(f"written: {args.output}")
    return 1 if result["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
