"""Pieces every Dream Window node module shares: category, socket types, errors."""

from __future__ import annotations

import math

from ..core.supervisor import ConfigurationError
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


def widget_error(cls, values: dict) -> str | None:
    """The first literal input of node class ``cls`` outside its declared options or range, as an
    error naming the node and the allowed values; None when every value fits.

    ComfyUI 0.3.75 never checks a V3 combo's options, and checks no min/max of the inputs a node's
    ``validate_inputs`` receives, so the Dream Window nodes check their own widgets with this.
    Linked inputs arrive as None (unknown before the run) and are skipped.
    """
    schema = cls.define_schema()
    for spec in schema.inputs:
        value = values.get(spec.id)
        if value is None:
            continue
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        if isinstance(spec, io.Combo.Input) and value not in spec.options:
            return f"{schema.node_id}: {spec.id} {shown} is not one of {', '.join(map(repr, spec.options))}"
        if isinstance(spec, (io.Int.Input, io.Float.Input)):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or not (
                    (spec.min is None or value >= spec.min) and (spec.max is None or value <= spec.max)):
                return f"{schema.node_id}: {spec.id} must be a number from {spec.min} to {spec.max}, got {shown}"
    return None
