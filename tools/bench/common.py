"""Shared helpers of the benchmark scripts: argument types, timing, tables, JSON results,
ComfyUI in-process imports and memory readings.

Every script in ``tools/bench/`` prints a table and writes ``tools/bench/results/<name>.json`` (or the
path given with ``--output``) through ``write_results``; a part that cannot run is reported
with ``skipped(reason)`` and never as zeros.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "tools" / "bench"
RESULTS = BENCH / "results"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

LATENT_SCALE = 8
"""Pixels per latent cell of the SD-family VAEs (sizes must be multiples of it)."""


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number >= 0")
    return value


def frame_size(text: str) -> tuple[int, int]:
    """An argparse type: ``WIDTHxHEIGHT`` in pixels, both positive multiples of 8."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT (for example 512x256)") from None
    if width < LATENT_SCALE or height < LATENT_SCALE or width % LATENT_SCALE or height % LATENT_SCALE:
        raise argparse.ArgumentTypeError(f"{text}: width and height must be positive multiples of {LATENT_SCALE}")
    return width, height


def output_arg(parser: argparse.ArgumentParser, name: str) -> None:
    """Add the ``--output`` option every benchmark has (default ``tools/bench/results/<name>.json``)."""
    parser.add_argument("--output", type=Path, default=RESULTS / f"{name}.json", help="JSON results file")


# -- timing --

def device_sync(device: Any) -> None:
    """Wait for queued GPU work on ``device`` (a torch device or name); no-op on the CPU."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(work: Callable[[], Any], device: Any = "cpu") -> tuple[Any, float]:
    """Run ``work`` once and return its result and wall time in ms (GPU work included)."""
    device_sync(device)
    start = time.perf_counter()
    result = work()
    device_sync(device)
    return result, (time.perf_counter() - start) * 1e3


def median(values: Iterable[float]) -> float | None:
    """The median, or None for no values."""
    values = list(values)
    return statistics.median(values) if values else None


def ratio(slow: float | None, fast: float | None) -> float | None:
    """``slow / fast``, or None when either side is missing or ``fast`` is 0."""
    return slow / fast if slow is not None and fast else None


def fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    """A number for a table cell; a missing value prints as ``n/a`` (never as 0)."""
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


# -- tables and results --

def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a titled plain-text table; the first column is left-aligned, the others right."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def skipped(part: str, reason: str) -> dict[str, str]:
    """Say plainly that ``part`` did not run, and return its JSON record."""
    print(f"\n{part}: NOT RUN - {reason}")
    return {"skipped": reason}


def machine_info() -> dict[str, Any]:
    """Platform, Python, torch and device facts for the results file."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15_min": os.getloadavg(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_results(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` plus the machine facts as JSON and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine_info(), **data}, indent=2))
    print(f"\nresults: {path}")


# -- ComfyUI in-process --

def import_comfy() -> str:
    """Make the harness's ComfyUI (``COMFYUI_DIR``, else ``.harness/ComfyUI``) importable in this
    process and pick its device.

    Sets ``comfy.cli_args.args.cpu`` only when torch sees no CUDA device. Returns the torch
    device name ComfyUI will use.
    """
    import torch

    from tools.harness.comfy_process import COMFYUI_DIR

    directory = COMFYUI_DIR.resolve()
    if not (directory / "comfy" / "sd.py").is_file():
        raise FileNotFoundError(f"no ComfyUI at {directory} (run tools/harness/setup_comfyui.sh or set COMFYUI_DIR)")
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = not torch.cuda.is_available()
    import comfy.model_management as mm

    return str(mm.get_torch_device())


def comfy_vae(state_dict: dict):
    """``comfy.sd.VAE`` from a state dict, resident on ComfyUI's device: fp16 on CUDA (the
    replaced controller's dtype), fp32 on the CPU. Call ``import_comfy`` first."""
    import comfy.model_management as mm
    import comfy.sd
    import torch

    dtype = torch.float16 if torch.cuda.is_available() else torch.float32
    vae = comfy.sd.VAE(sd=state_dict, dtype=dtype)
    mm.load_models_gpu([vae.patcher], force_full_load=True)
    return vae


# -- memory --

def rss_mb(pid: int) -> float | None:
    """Resident set size of process ``pid`` in MiB (``VmRSS`` of ``/proc/<pid>/status``)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def gpu_memory_used_mb() -> float | None:
    """Memory in use on GPU 0 in MiB from ``nvidia-smi`` (whole device), or None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10, check=False)
        return float(out.stdout.strip().splitlines()[0]) if out.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def slope_per(xs: Sequence[float], ys: Sequence[float], per: float) -> float | None:
    """Least-squares slope of ``ys`` over ``xs`` scaled to ``per`` units of x (None if < 2 distinct xs)."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx * per
