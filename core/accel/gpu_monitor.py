"""The GPU monitor's logic: when the dream yields the GPU to the user's other programs.

Every ``interval`` seconds the monitor looks for (a) a running process whose name contains an
entry of the configured list (case-insensitive), and (b) where ``nvidia-ml-py`` is installed and an
NVIDIA GPU is present, GPU memory pressure: less free VRAM than a threshold (the dream's own use
counts as free, so unloading its model never flaps it), or another process using more than a
threshold. A reason found makes the running sessions yield (``YieldGate``); once no reason has been
found for ``resume_after`` seconds they resume. The probes' own failures (access denied, a vanished
process, no driver) are reported once each through ``OnceLog`` and never stop the checks.

Nothing here imports ComfyUI; the server side (``nodes.monitor``) runs the checks and pauses,
frees and resumes through the live sessions (``core.loop.live_session``) and ComfyUI's adapter.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from ..server_settings import (MONITOR, MONITOR_INTERVAL, MONITOR_KEEP_MODELS, MONITOR_MAX_OTHER_VRAM,
                       MONITOR_MIN_FREE_VRAM, MONITOR_PROCESSES, MONITOR_RESUME_AFTER, Setting)

GB = 1024**3


def has_display(platform: str = sys.platform, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a desktop is attached: on Linux an X or Wayland display; Windows and macOS always."""
    if platform.startswith("linux"):
        return bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))
    return True


@dataclass(frozen=True)
class MonitorConfig:
    enabled: bool
    processes: tuple[str, ...] = ()
    min_free_vram_gb: float = 0.0
    max_other_vram_gb: float = 0.0
    interval: float = 5.0
    resume_after: float = 30.0
    keep_models: bool = False

    @property
    def watches_vram(self) -> bool:
        return self.min_free_vram_gb > 0 or self.max_other_vram_gb > 0

    @classmethod
    def read(cls, value: Callable[[Setting], Any], display: bool) -> "MonitorConfig":
        """The configuration from the settings (``value`` resolves one); ``auto`` is on with a display."""
        mode = value(MONITOR)
        return cls(enabled=mode == "on" or (mode == "auto" and display),
                   processes=value(MONITOR_PROCESSES), min_free_vram_gb=value(MONITOR_MIN_FREE_VRAM),
                   max_other_vram_gb=value(MONITOR_MAX_OTHER_VRAM), interval=value(MONITOR_INTERVAL),
                   resume_after=value(MONITOR_RESUME_AFTER), keep_models=value(MONITOR_KEEP_MODELS))


def matching_process(wanted: Iterable[str], running: Iterable[str]) -> str | None:
    """The first running process name that contains one of ``wanted`` (case-insensitive)."""
    needles = [w.lower() for w in wanted if w]
    for name in running:
        if name and any(needle in name.lower() for needle in needles):
            return name
    return None


@dataclass(frozen=True)
class VramReading:
    """One look at the GPU: free bytes, this process's own bytes, and the largest other process."""

    free: int
    own: int = 0
    other_max: int = 0
    other_name: str = ""


def vram_pressure(reading: VramReading, min_free_gb: float, max_other_gb: float) -> str | None:
    """Why the dream should yield for GPU memory, or None. A threshold of 0 turns its check off."""
    free = (reading.free + reading.own) / GB
    if min_free_gb > 0 and free < min_free_gb:
        return f"free VRAM {free:.1f} GB < {min_free_gb:g} GB"
    other = reading.other_max / GB
    if max_other_gb > 0 and other > max_other_gb:
        return f"{reading.other_name or 'another process'} uses {other:.1f} GB VRAM > {max_other_gb:g} GB"
    return None


class YieldGate:
    """Yield at the first reason; resume once no reason has been seen for ``resume_after`` seconds."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.clear_since: float | None = None

    def update(self, reason: str | None, now: float, resume_after: float) -> str | None:
        """``"yield"``, ``"resume"`` or None (nothing to do) for this check's finding."""
        if reason is not None:
            self.clear_since = None
            first = self.reason is None
            self.reason = reason
            return "yield" if first else None
        if self.reason is None:
            return None
        if self.clear_since is None:
            self.clear_since = now
        if now - self.clear_since >= resume_after:
            self.reason, self.clear_since = None, None
            return "resume"
        return None


class OnceLog:
    """Reports each distinct problem once (a failing probe fails on every check)."""

    def __init__(self, report: Callable[[str], None]):
        self.report = report
        self.seen: set[str] = set()

    def __call__(self, message: str) -> None:
        if message not in self.seen:
            self.seen.add(message)
            self.report(message)


def process_names() -> list[str]:
    """Names of the running processes; a process that vanishes or hides its name is skipped."""
    import psutil

    names = []
    for proc in psutil.process_iter():
        try:
            names.append(proc.name())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return names


class VramUnavailable(RuntimeError):
    """The VRAM check cannot run in this process (no ``nvidia-ml-py``, no NVIDIA driver or GPU)."""


class NvmlProbe:
    """GPU memory through ``nvidia-ml-py`` (``pynvml``): ``read()`` gives a ``VramReading`` of GPU
    ``index``, or raises ``VramUnavailable`` saying why the VRAM check is off."""

    def __init__(self, index: int = 0, pid: int | None = None):
        self.index, self.pid = index, os.getpid() if pid is None else pid
        self._nvml: Any = None
        self._handle: Any = None

    def _open(self) -> None:
        try:
            import pynvml
        except ImportError as exc:
            raise VramUnavailable("nvidia-ml-py is not installed (pip install nvidia-ml-py)") from exc
        try:
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
        except pynvml.NVMLError as exc:
            raise VramUnavailable(f"no NVIDIA GPU or driver ({exc})") from exc
        self._nvml = pynvml

    def read(self) -> VramReading:
        if self._nvml is None:
            self._open()
        nvml, handle = self._nvml, self._handle
        free = int(nvml.nvmlDeviceGetMemoryInfo(handle).free)
        own, other_max, other_name = 0, 0, ""
        processes = (nvml.nvmlDeviceGetComputeRunningProcesses(handle)
                     + nvml.nvmlDeviceGetGraphicsRunningProcesses(handle))
        for proc in processes:
            used = int(proc.usedGpuMemory or 0)
            if proc.pid == self.pid:
                own += used
            elif used > other_max:
                other_max, other_name = used, f"pid {proc.pid}"
        return VramReading(free=free, own=own, other_max=other_max, other_name=other_name)


class Checker:
    """One check: the first reason to yield, or None; each probe failure is reported once and the other
    probes still run."""

    def __init__(self, report: Callable[[str], None], processes: Callable[[], list[str]] = process_names,
                 vram: Callable[[], VramReading] | None = None):
        self.once = OnceLog(report)
        self.processes = processes
        self.vram = vram or NvmlProbe().read
        self.vram_off: str | None = None

    def check(self, config: MonitorConfig) -> str | None:
        reasons = [self._processes(config), self._vram(config)]
        return next((r for r in reasons if r is not None), None)

    def _processes(self, config: MonitorConfig) -> str | None:
        if not config.processes:
            return None
        try:
            found = matching_process(config.processes, self.processes())
        except Exception as exc:
            self.once(f"cannot list the running processes ({type(exc).__name__}: {exc}); the process check "
                      f"finds nothing until it can")
            return None
        return f"yielding to {found}" if found else None

    def _vram(self, config: MonitorConfig) -> str | None:
        if not config.watches_vram or self.vram_off is not None:
            return None
        try:
            reading = self.vram()
        except VramUnavailable as exc:
            self.vram_off = str(exc)
            self.once(f"GPU memory check off: {exc}")
            return None
        except Exception as exc:
            self.once(f"cannot read GPU memory ({type(exc).__name__}: {exc}); the VRAM check finds nothing "
                      f"until it can")
            return None
        return vram_pressure(reading, config.min_free_vram_gb, config.max_other_vram_gb)
