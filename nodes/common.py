"""Pieces every Dream Window node module shares: category, socket types, errors."""

from __future__ import annotations

import math

from ..core.loop.supervisor import ConfigurationError
from . import comfy_adapter as comfy
from .comfy_adapter import io

CATEGORY = "dream_window"
SessionType = io.Custom("DREAM_WINDOW_SESSION")
CacheType = io.Custom("DREAM_WINDOW_CACHE")


def session_input() -> "io.Input":
    return SessionType.Input("session", tooltip="The Dream Window session this node belongs to: "
                                                "wire it from the DreamWindowSession node.")


def fail(node: str, message: str, retry: bool = False) -> RuntimeError:
    """An error that names the node, as users see it in ComfyUI's error dialog.

    A ``ConfigurationError`` (a setting, a wire, a missing file or folder), on which the session pauses at
    once; ``retry=True`` for an error a retry can cure (a failed disk write, a failed cache analysis),
    which the supervisor retries before it pauses.
    """
    return RuntimeError(f"{node}: {message}") if retry else ConfigurationError(f"{node}: {message}")


def log_prefix(session: str, node: str) -> str:
    """``dream_window[<session>]: node <id> <type>``: how a node's log lines start."""
    return f"dream_window[{session}]: node {comfy.executing_node_id()} {node}"


def finite(node: str, **values: float) -> None:
    """Refuse NaN in a FLOAT input when the node runs, naming the input. ComfyUI checks a FLOAT input's
    min and max when the workflow is queued (infinity is refused there), but NaN passes both comparisons."""
    for key, value in values.items():
        if not math.isfinite(value):
            raise fail(node, f"{key} must be a number, got {value}: give it a number")
