"""The pack's server settings as this server has them (see ``core.server_settings``): the environment
variable, else ComfyUI's stored setting, else the default. Read again on every use, so a value
changed in the settings dialog takes effect without a restart wherever the value is read later."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..core.server_settings import SESSIONS_FOLDER, Setting, resolve, sessions_root
from . import comfy_adapter as adapter

log = logging.getLogger("dream_window")

_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("dream_window: %s", message)


def value(setting: Setting, stored: dict | None = None) -> Any:
    """The setting's current value; ``stored`` (ComfyUI's settings, read once by the caller for several
    settings) is read from ComfyUI when not given. A bad value is logged once and its default used."""
    return resolve(setting, adapter.stored_settings() if stored is None else stored, os.environ, _warn_once)


def sessions_folder() -> Path:
    """Where the sessions (their state and frames) are kept."""
    return sessions_root(value(SESSIONS_FOLDER), Path(adapter.output_directory()))
