"""Pieces every Dream Window node module shares: category, socket types, input checks, errors."""

from __future__ import annotations

import math

from ..core.loop.supervisor import fail
from .comfy_adapter import io

CATEGORY = "dream_window"
SessionType = io.Custom("DREAM_WINDOW_SESSION")
CacheType = io.Custom("DREAM_WINDOW_CACHE")

__all__ = ["CATEGORY", "CacheType", "SessionType", "fail", "finite", "output_linked", "session_input"]


def session_input() -> "io.Input":
    return SessionType.Input("session", tooltip="The Dream Window session this node belongs to: "
                                                "wire it from the DreamWindowSession node.")


def finite(node: str, **values: float) -> None:
    """Refuse NaN in a FLOAT input when the node runs, naming the input. ComfyUI checks a FLOAT input's
    min and max when the workflow is queued (infinity is refused there), but NaN passes both comparisons."""
    for key, value in values.items():
        if not math.isfinite(value):
            raise fail(node, f"{key} must be a number, got {value}: give it a number")


def output_linked(prompt: dict | None, node_id: str | None, index: int) -> bool:
    """Whether any node of the queued ``prompt`` takes output ``index`` of node ``node_id`` (True when
    the prompt is unknown)."""
    if prompt is None or node_id is None:
        return True
    link = [str(node_id), index]
    return any(isinstance(value, list) and len(value) == 2 and [str(value[0]), value[1]] == link
               for node in prompt.values() if isinstance(node, dict)
               for value in (node.get("inputs") or {}).values())
