"""The ``status.json`` document: one schema, in the key order the Rainmeter widget reads.

``build_status`` writes a single document holding the controller keys, the daemon keys
and the pack's own fields, ordered so the widget's regex, which needs keys of both in one
order, matches it (``STATUS_KEYS`` is the full order; the tests hold the regex).

What the fields mean (``docs/design.md`` §15):

* ``buffer_target`` is ``target_seconds * fps`` frames (105 at the defaults);
* ``current_prompt`` is the real prompt, truncated to ``PROMPT_MAX_CHARS``;
* ``status`` can be "paused" (and "buffering", "stopped", "error");
* ``is_buffering`` means "waiting for frames" (initial fill or a gap), not
  "below the 30 s target";
* the collapse and diversity values are whatever the cache layer reports, or
  null while it reports nothing; never a constant 0.0: ``cache_avg_similarity``
  is the mean combined similarity over the pairs of cached entries and
  ``cache_diversity_score`` is ``1 - cache_avg_similarity``, floored at 0;
* ``current_mode`` is the keyframe source's mode of the last keyframe ("hybrid",
  "img2img" or "interpolate"; ``NO_MODE`` before the first), not a constant;
* ``generation_time`` is the mean time of making a keyframe (the sampler's
  part), not of a whole iteration;
* ``state`` can be "interrupted": the server stopped while the session was
  running, and nothing runs it until it is started again.

Mapping of the daemon-era keys inside ComfyUI, where there is no daemon:
``daemon_status`` is "running" and ``comfyui_status`` "ready" whenever the pack
writes a status; ``controller_status`` follows the session state (generating,
paused, stopped, error, interrupted); ``daemon_uptime_hours`` equals ``uptime_hours``; the
restart counters stay 0. The timing fields are ``keyframe_time``, ``batch_decode_time``
and ``fps_achieved``.

Rainmeter constraints honoured: ``cache_size`` is always an integer (0 while the
cache reports nothing), because the widget's ``([0-9]+)`` cannot match null;
``current_prompt`` is never empty (``NO_PROMPT`` stands in), because
``"([^"]+)`` needs one character; times are non-negative and rounded.

Writing the file atomically is the caller's job; ``status_json`` and
``status_json_bytes`` give the text to write (JSON, indent 2, UTF-8).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from .playback import BufferMetrics

PROMPT_MAX_CHARS = 100
"""Longest ``current_prompt`` written; longer prompts end in ``...``."""

NO_PROMPT = "generating..."
"""``current_prompt`` before any prompt is known."""

NO_MODE = "idle"
"""``current_mode`` before the session's first keyframe."""

STATUS_KEYS: tuple[str, ...] = (
    "frame_number",
    "generation_time",
    "status",
    "current_mode",
    "current_prompt",
    "cache_size",
    "cache_injections",
    "uptime_minutes",
    "uptime_hours",
    "daemon_status",
    "comfyui_status",
    "controller_status",
    "daemon_uptime_hours",
    "comfyui_restarts",
    "controller_restarts",
    "buffer_filled",
    "buffer_target",
    "is_buffering",
    "buffer_seconds",
    "buffer_percentage",
    "keyframes_generated",
    "interpolations_generated",
    "collapse_recent_similarity",
    "collapse_overall_similarity",
    "collapse_frames_analyzed",
    "total_seed_injections",
    "collapse_frequency",
    "collapse_trend",
    "cache_diversity_score",
    "cache_avg_similarity",
    "state",
    "error_message",
    "paused_reason",
    "target_fps",
    "fps_achieved",
    "keyframe_time",
    "batch_decode_time",
    "buffer_target_seconds",
    "last_update",
)
"""Every key of ``status.json``, in order: the controller keys with the
daemon keys merged in where the widget needs them, then the new fields."""


class SessionState(str, Enum):
    """The state of a session as reported in the ``state`` field."""

    RUNNING = "running"
    PAUSED = "paused"
    BUFFERING = "buffering"
    STOPPED = "stopped"
    ERROR = "error"
    INTERRUPTED = "interrupted"


_STATUS_WORD = {
    SessionState.RUNNING: "live",
    SessionState.PAUSED: "paused",
    SessionState.BUFFERING: "buffering",
    SessionState.STOPPED: "stopped",
    SessionState.ERROR: "error",
    SessionState.INTERRUPTED: "interrupted",
}
"""``status`` for each state ("live" while running)."""

_CONTROLLER_STATUS = {
    SessionState.RUNNING: "generating",
    SessionState.PAUSED: "paused",
    SessionState.BUFFERING: "generating",
    SessionState.STOPPED: "stopped",
    SessionState.ERROR: "error",
    SessionState.INTERRUPTED: "interrupted",
}
"""``controller_status`` for each state, in the widget's vocabulary."""


@dataclass(frozen=True)
class CacheStats:
    """What the cache, injection and collapse layer reports; None means "not known yet"."""

    cache_size: int = 0
    cache_injections: int | None = None
    total_seed_injections: int | None = None
    collapse_recent_similarity: float | None = None
    collapse_overall_similarity: float | None = None
    collapse_frames_analyzed: int | None = None
    collapse_frequency: float | None = None
    collapse_trend: str | None = None
    """The detector's latest status: "ok", "converging" or "collapsed"."""
    cache_diversity_score: float | None = None
    cache_avg_similarity: float | None = None


def truncate_prompt(prompt: str, limit: int = PROMPT_MAX_CHARS) -> str:
    """Collapse whitespace and cut ``prompt`` to at most ``limit`` characters, ending in ``...``."""
    text = " ".join(prompt.split())
    if len(text) <= limit:
        return text
    return text[: limit - 3].rstrip() + "..."


def _number(value: float | None, digits: int) -> float | None:
    """Round a finite number; None for None, NaN or infinity (JSON has no NaN)."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


def _seconds(value: float | None) -> float:
    """Return a non-negative, finite duration rounded to ms, as the widget's ``[0-9.]+`` needs."""
    return max(0.0, _number(value, 3) or 0.0)


def build_status(
    *,
    state: SessionState | str,
    buffer: BufferMetrics,
    uptime_seconds: float,
    current_prompt: str = "",
    mode: str | None = None,
    generation_time: float = 0.0,
    keyframe_time: float | None = None,
    batch_decode_time: float | None = None,
    keyframes_generated: int = 0,
    interpolations_generated: int = 0,
    cache: CacheStats | None = None,
    error_message: str | None = None,
    paused_reason: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Build the status document, keys in ``STATUS_KEYS`` order.

    ``state`` is the session's state; a running session whose player is
    buffering is reported as "buffering". ``mode`` is the keyframe source's mode of
    the last keyframe (None before the first). ``generation_time`` is the mean
    keyframe time, ``keyframe_time`` and ``batch_decode_time`` the latest ones
    (seconds). ``paused_reason`` says why the GPU monitor paused the session (None otherwise).
    ``frame_number`` is the number of frames played. ``now`` (default:
    the local time) dates ``last_update``. Raises ``ValueError`` for an unknown
    state or an "error" state without a message.
    """
    state = SessionState(state)
    if state is SessionState.ERROR and not error_message:
        raise ValueError("An 'error' status needs an error_message saying what went wrong.")
    if state is SessionState.RUNNING and buffer.is_buffering:
        state = SessionState.BUFFERING
    cache = cache or CacheStats()
    uptime = _seconds(uptime_seconds)
    uptime_hours = round(uptime / 3600.0, 2)
    values: dict[str, Any] = {
        "frame_number": buffer.frames_played,
        "generation_time": _seconds(generation_time),
        "status": _STATUS_WORD[state],
        "current_mode": mode or NO_MODE,
        "current_prompt": truncate_prompt(current_prompt) or NO_PROMPT,
        "cache_size": int(cache.cache_size),
        "cache_injections": cache.cache_injections,
        "uptime_minutes": round(uptime / 60.0, 2),
        "uptime_hours": uptime_hours,
        "daemon_status": "running",
        "comfyui_status": "ready",
        "controller_status": _CONTROLLER_STATUS[state],
        "daemon_uptime_hours": uptime_hours,
        "comfyui_restarts": 0,
        "controller_restarts": 0,
        "buffer_filled": buffer.frames_ready,
        "buffer_target": buffer.target_frames,
        "is_buffering": buffer.is_buffering,
        "buffer_seconds": _number(buffer.seconds_buffered, 2),
        "buffer_percentage": _number(buffer.percentage, 1),
        "keyframes_generated": keyframes_generated,
        "interpolations_generated": interpolations_generated,
        "collapse_recent_similarity": _number(cache.collapse_recent_similarity, 4),
        "collapse_overall_similarity": _number(cache.collapse_overall_similarity, 4),
        "collapse_frames_analyzed": cache.collapse_frames_analyzed,
        "total_seed_injections": cache.total_seed_injections,
        "collapse_frequency": _number(cache.collapse_frequency, 4),
        "collapse_trend": cache.collapse_trend,
        "cache_diversity_score": _number(cache.cache_diversity_score, 4),
        "cache_avg_similarity": _number(cache.cache_avg_similarity, 4),
        "state": state.value,
        "error_message": error_message,
        "paused_reason": paused_reason,
        "target_fps": buffer.fps,
        "fps_achieved": _number(buffer.fps_achieved, 2),
        "keyframe_time": _number(keyframe_time, 3),
        "batch_decode_time": _number(batch_decode_time, 3),
        "buffer_target_seconds": buffer.target_seconds,
        "last_update": (now or datetime.now()).isoformat(),
    }
    return {key: values[key] for key in STATUS_KEYS}


def status_json(status: Mapping[str, Any]) -> str:
    """Serialise a status document as the file's text: JSON, indent 2, non-ASCII kept."""
    return json.dumps(status, indent=2, ensure_ascii=False, allow_nan=False)


def status_json_bytes(status: Mapping[str, Any]) -> bytes:
    """``status_json`` encoded as UTF-8, ready for an atomic byte write."""
    return status_json(status).encode("utf-8")
