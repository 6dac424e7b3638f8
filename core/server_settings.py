"""The pack's server settings: a ComfyUI setting, an environment override, a default.

A user sets them once in ComfyUI's settings dialog (category "Dream Window"; the web extension
registers them under the ids below and the frontend stores them in the user's
``comfy.settings.json``). On a headless server, where nobody opens the dialog, the environment
variable of a setting overrides whatever is stored. ``resolve`` picks the value (environment,
then the stored setting, then the default) and checks it; a bad value is reported with where it
came from and what to write instead, and the default is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .accel import torch_threads

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise ValueError("use true or false (1 or 0)")


def parse_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("use a text value")
    return value.strip()


def parse_names(value: Any) -> tuple[str, ...]:
    """A list of process names: comma- or newline-separated text, or a JSON list of strings."""
    if isinstance(value, str):
        value = value.replace("\n", ",").split(",")
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError("use process names separated by commas, e.g. eldenring.exe, cyberpunk")
    return tuple(name.strip() for name in value if name.strip())


def parse_mode(value: Any) -> str:
    """``auto`` (on where a display is attached), ``on`` or ``off``; true/false read as on/off."""
    text = str(value).strip().lower() if isinstance(value, (str, bool)) else None
    text = {"true": "on", "false": "off", "1": "on", "0": "off"}.get(text, text)
    if text in ("auto", "on", "off"):
        return text
    raise ValueError("use auto, on or off")


def number(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        try:
            result = float(value) if not isinstance(value, bool) else float("nan")
        except (TypeError, ValueError):
            result = float("nan")
        if not low <= result <= high:  # NaN fails too
            raise ValueError(f"use a number from {low:g} to {high:g}")
        return result
    return parse


@dataclass(frozen=True)
class Setting:
    id: str
    """The ComfyUI setting id (``DreamWindow.<Name>``), as the web extension registers it."""
    env: str
    """The environment variable that overrides it (headless servers)."""
    default: Any
    parse: Callable[[Any], Any]


RESUME_ON_START = Setting("DreamWindow.ResumeOnStart", "DREAM_WINDOW_RESUME_ON_START", False, parse_bool)
TORCH_THREADS = Setting("DreamWindow.TorchThreads", "DREAM_WINDOW_TORCH_THREADS", "auto", torch_threads.parse_setting)
SESSIONS_FOLDER = Setting("DreamWindow.SessionsFolder", "DREAM_WINDOW_SESSIONS_FOLDER", "", parse_text)
MONITOR = Setting("DreamWindow.Monitor.Enabled", "DREAM_WINDOW_MONITOR", "auto", parse_mode)
MONITOR_PROCESSES = Setting("DreamWindow.Monitor.Processes", "DREAM_WINDOW_MONITOR_PROCESSES", (), parse_names)
MONITOR_MIN_FREE_VRAM = Setting("DreamWindow.Monitor.MinFreeVramGB", "DREAM_WINDOW_MONITOR_MIN_FREE_VRAM_GB", 0.0,
                                number(0, 1024))
MONITOR_MAX_OTHER_VRAM = Setting("DreamWindow.Monitor.MaxOtherVramGB", "DREAM_WINDOW_MONITOR_MAX_OTHER_VRAM_GB", 0.0,
                                 number(0, 1024))
MONITOR_INTERVAL = Setting("DreamWindow.Monitor.CheckInterval", "DREAM_WINDOW_MONITOR_INTERVAL", 5.0, number(0.2, 3600))
MONITOR_RESUME_AFTER = Setting("DreamWindow.Monitor.ResumeAfter", "DREAM_WINDOW_MONITOR_RESUME_AFTER", 30.0,
                               number(0, 86400))
MONITOR_KEEP_MODELS = Setting("DreamWindow.Monitor.KeepModels", "DREAM_WINDOW_MONITOR_KEEP_MODELS", False, parse_bool)


def resolve(setting: Setting, stored: Mapping[str, Any], environ: Mapping[str, str],
            warn: Callable[[str], None]) -> Any:
    """The setting's value: its environment variable when set, else the stored ComfyUI setting, else
    the default. A value that does not parse is passed to ``warn`` (saying where it came from and
    what to use) and the default is used."""
    if setting.env in environ:
        source, raw = f"environment variable {setting.env}", environ[setting.env]
    elif stored.get(setting.id) is not None:
        source, raw = f"ComfyUI setting {setting.id} (Settings > Dream Window)", stored[setting.id]
    else:
        return setting.default
    try:
        return setting.parse(raw)
    except ValueError as exc:
        warn(f"{source}={raw!r}: {exc}; using the default {setting.default!r}")
        return setting.default


def sessions_root(folder: str, output_dir: Path) -> Path:
    """The folder holding the sessions: ``SESSIONS_FOLDER`` as given when absolute, else inside ComfyUI's
    output folder (``""``: its ``dream_window`` folder)."""
    return output_dir / (Path(folder).expanduser() if folder else Path("dream_window"))
