"""A session's settings, each default defined once: playback, the frames kept on disk, the autoqueue
(``SessionSettings``, persisted in ``state.json``) and the cache (``CacheSettings``, what the Dream
Window Cache node gives and what its loop is built from).

The node inputs take their defaults from here; so do playback (``core.window.playback`` defines the player's
own defaults, which these are) and the routes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from ..window.playback import DEFAULT_FPS, DEFAULT_MIN_BUFFER_SECONDS, DEFAULT_TARGET_SECONDS

AUTOQUEUE_FIELDS = {"enabled": bool, "max_iterations": int, "min_delay": float, "buffer_target": float}
"""The autoqueue node's inputs, as the settings they set, with their types."""


@dataclass(frozen=True)
class SessionSettings:
    """What a session runs with; the Session, Commit and AutoQueue nodes set it every iteration."""

    fps: float = DEFAULT_FPS
    """Playback frame rate (the Session node)."""
    min_buffer_seconds: float = DEFAULT_MIN_BUFFER_SECONDS
    """Seconds of frames buffered before playback starts (the Session node)."""
    buffer_target: float = DEFAULT_TARGET_SECONDS
    """The autoqueue holds the next iteration back while this many seconds wait to be played; 0: never."""
    retention: int = 128
    """Played frames kept on disk (the Commit node)."""
    enabled: bool = True
    """Whether the supervisor queues the next iteration (the AutoQueue node; off: one per Queue press)."""
    max_iterations: int = 0
    """Keyframes after which the session stops, counted across restarts; 0: endless."""
    min_delay: float = 0.0
    """Seconds between the end of one iteration and the next."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SessionSettings":
        """The settings as ``state.json`` holds them; what is missing or unknown (a session written by an
        older version of the pack) takes the default."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def to_dict(self) -> dict:
        return asdict(self)

    def with_values(self, **values: Any) -> "SessionSettings":
        return replace(self, **values)

    def playback(self) -> tuple[float, float, float]:
        """(fps, buffer target, minimum buffer): what the player is configured with."""
        return self.fps, self.buffer_target, self.min_buffer_seconds


DEFAULTS = SessionSettings()


@dataclass(frozen=True)
class CacheSettings:
    """The Dream Window Cache node's settings: what flows along the DREAM_WINDOW_CACHE wire (the encoder a
    CLIP strategy needs stays in the node layer). A session's cache loop is rebuilt when they change."""

    name: str
    """The cache folder under ``output/dream_window_cache`` (empty at the node: the session's name)."""
    strategy: str = "dual_metric"
    capacity: int = 50
    eviction: str = "fifo"
    admission: str = "mean"
    logic: str = "all"
    injection: bool = True
    tuning: str = "{}"
    rng_seed: int = 0


CACHE_DEFAULTS = CacheSettings("")


def autoqueue_settings(prompt: dict, name: str, session_node: str, autoqueue_node: str) -> dict:
    """The literal settings of the autoqueue node wired to session ``name`` in an API prompt.

    No autoqueue node means a single-shot run: ``enabled`` is False. Values that arrive
    through links are left to the autoqueue node itself, which records them when it runs.
    """
    session_ids = {nid for nid, node in prompt.items() if isinstance(node, dict)
                   and node.get("class_type") == session_node and (node.get("inputs") or {}).get("name") == name}
    settings: dict = {"enabled": False}
    for node in prompt.values():
        if not isinstance(node, dict) or node.get("class_type") != autoqueue_node:
            continue
        inputs = node.get("inputs") or {}
        if not _reaches(prompt, inputs.get("session"), session_ids):
            continue
        settings["enabled"] = True
        for key, cast in AUTOQUEUE_FIELDS.items():
            value = inputs.get(key)
            if isinstance(value, (bool, int, float)) and not (isinstance(value, float) and math.isnan(value)):
                settings[key] = cast(value)
    return settings


def _reaches(prompt: dict, link, targets: set[str], depth: int = 0) -> bool:
    """Whether the node feeding ``link`` is, or is fed through session wires by, a target node."""
    if not (isinstance(link, list) and link) or depth > 32:
        return False
    nid = str(link[0])
    if nid in targets:
        return True
    node = prompt.get(nid) or {}
    return _reaches(prompt, (node.get("inputs") or {}).get("session"), targets, depth + 1)
