"""Pieces every Dream Window node module shares: category, socket types, input checks, errors."""

from __future__ import annotations

import math

from ..core.loop.supervisor import fail
from .comfy_adapter import io

CATEGORY = "dream_window"
SessionType = io.Custom("DREAM_WINDOW_SESSION")
CacheType = io.Custom("DREAM_WINDOW_CACHE")

__all__ = ["CATEGORY", "CacheType", "SessionType", "fail", "finite", "session_input"]


def session_input() -> "io.Input":
    return SessionType.Input("session", tooltip="The Dream Window session this node belongs to: "
                                                "wire it from the DreamWindowSession node.")


def finite(node: str, **values: float) -> None:
    """Refuse NaN in a FLOAT input when the node runs, naming the input. ComfyUI checks a FLOAT input's
    min and max when the workflow is queued (infinity is refused there), but NaN passes both comparisons."""
    for key, value in values.items():
        if not math.isfinite(value):
            raise fail(node, f"{key} must be a number, got {value}: give it a number")
