"""Pieces every Dream Window node module shares: category, socket types, errors."""

from __future__ import annotations

import math

from . import comfy_adapter as comfy
from .comfy_adapter import io

CATEGORY = "dream_window"
SessionType = io.Custom("DREAM_WINDOW_SESSION")
CacheType = io.Custom("DREAM_WINDOW_CACHE")


def session_input() -> "io.Input":
    return SessionType.Input("session", tooltip="The Dream Window session this node belongs to: "
                                                "wire it from the DreamWindowSession node.")


def fail(node: str, message: str) -> RuntimeError:
    """An error that names the node, as users see it in ComfyUI's error dialog."""
    return RuntimeError(f"{node}: {message}")


def log_prefix(session: str, node: str) -> str:
    """``dream_window[<session>]: node <id> <type>``: how a node's log lines start."""
    return f"dream_window[{session}]: node {comfy.executing_node_id()} {node}"


def widget_error(cls, values: dict) -> str | None:
    """The first literal input of node class ``cls`` outside its declared options or range, as an
    error naming the node and the allowed values; None when every value fits.

    ComfyUI 0.3.75 never checks a V3 combo's options, an INT's step (the frontend rounds to it), nor
    the min/max of the inputs a node's ``validate_inputs`` receives, so the Dream Window nodes check
    their own widgets with this: an INT with a step must be a multiple of it (width and height: of 8).
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
            step = spec.step if isinstance(spec, io.Int.Input) and (spec.step or 1) > 1 else None
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            fits = (number and math.isfinite(value) and (spec.min is None or value >= spec.min)
                    and (spec.max is None or value <= spec.max) and not (step and value % step))
            if not fits:
                kind = f"a multiple of {step}" if step else "a number"
                return f"{schema.node_id}: {spec.id} must be {kind} from {spec.min} to {spec.max}, got {shown}"
    return None
