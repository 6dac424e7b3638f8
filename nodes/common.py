"""Pieces every Dream Window node module shares: category, socket types, errors."""

from __future__ import annotations

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
