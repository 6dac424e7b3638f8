"""One iteration of the dream loop as a typed record: what its nodes decided and when they ran.

The loop service opens an ``Iteration`` when the Session node runs (first in every iteration), the
keyframe source fills in the mode and its decision, the Prompts node the theme it chose, Interpolate
and Commit their times; the commit step records it in the session and closes it. A failed iteration's
record is dropped when the next one opens, with the decision it proposed, so a retry decides again
from the committed state (see ``docs/architecture.md``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..cache.injection import ACTION_NONE

MODES = ("hybrid", "img2img", "interpolate")


@dataclass(frozen=True)
class PromptChoice:
    """The theme the Prompts node chose; the commit consumes its rotation slot (normal keyframes only)."""

    positive: str
    themes: int
    interval: int


@dataclass(frozen=True)
class WalkTarget:
    """Interpolate mode: the cached entry the walk slerps towards (None: no entry, the first keyframe)."""

    entry_id: str | None
    latent: torch.Tensor


@dataclass
class Iteration:
    """The record of the iteration that makes keyframe ``keyframe``."""

    keyframe: int
    mode: str = "hybrid"
    decision: dict | None = None
    """The injection decision (``InjectionDecision.to_dict``), when the policy made one."""
    walk: WalkTarget | None = None
    prompt: PromptChoice | None = None
    frames: torch.Tensor | None = None
    """The frames Interpolate decoded with the workflow's VAE (uint8 ``[B, H, W, C]`` on the VAE's device:
    the in-between frames, then the keyframe), for Commit."""
    started: float = field(default_factory=time.monotonic)
    source_done: float | None = None
    sampled: float | None = None
    interpolated: float | None = None
    decoded: float | None = None

    @property
    def injected(self) -> bool:
        """Whether a cache or seed blend replaced the sampler's input."""
        return self.decision is not None and self.decision["action"] != ACTION_NONE

    @property
    def walking(self) -> bool:
        return self.mode == "interpolate"

    @staticmethod
    def now() -> float:
        return time.monotonic()

    @staticmethod
    def span(start: float | None, end: float | None) -> float | None:
        return end - start if start is not None and end is not None and end >= start else None

    def timings(self) -> dict[str, float | None]:
        """The keyframe time (the sampler's part), the batch decode time and the whole iteration's."""
        return {"keyframe_time": self.span(self.source_done, self.sampled),
                "batch_decode_time": self.span(self.interpolated, self.decoded),
                "iteration_time": self.span(self.started, self.decoded)}

    def stats(self, previous: dict, frames: int) -> dict:
        """The session's stats after this iteration: its times (and their running means), its mode, its
        decision and prompt."""
        stats = dict(previous)
        timings = self.timings()
        stats["keyframe_time"] = timings["keyframe_time"]
        stats["batch_decode_time"] = timings["batch_decode_time"]
        if timings["iteration_time"] is not None:
            stats["iteration_time"] = timings["iteration_time"]
        for kind in ("iteration", "keyframe"):
            value = timings[f"{kind}_time"]
            if value is not None:  # running means; status.json's generation_time is the keyframe one
                count = stats.get(f"{kind}s_timed", 0)
                stats[f"mean_{kind}_time"] = (stats.get(f"mean_{kind}_time", 0.0) * count + value) / (count + 1)
                stats[f"{kind}s_timed"] = count + 1
        stats["frames_last_iteration"] = frames
        stats["mode"] = self.mode
        if self.decision is not None:
            stats["last_decision"] = self.decision
        if self.prompt is not None:
            stats["prompt"] = self.prompt.positive
        return stats
