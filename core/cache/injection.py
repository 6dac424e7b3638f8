"""Injection policy (``docs/design.md`` §12): when to re-introduce a cached frame
or a seed image into the loop, which one, and how to blend it in latent space.

Decision for keyframe ``k`` (the one about to be made), in this order:

1. **Warm-up**: ``k <= warmup_keyframes`` (10): no injection (the caller must not feed
   the collapse detector either; see :meth:`InjectionPolicy.in_warmup`).
2. **Rate update** from the collapse verdict of the previous keyframe:
   ``scale_injection`` -> ``rate = base + (1 - base) * scaled``; ``force_cache`` ->
   unchanged (the injection is forced below); otherwise ``rate = base`` (0.15).
3. **Seed injection**, only when ``k - last_seed_kf > seed_injection_cooldown`` (2):
   forced when the share of cache injections among the recent decisions (10) is
   above 0.30; else forced when the share of collapse verdicts among the last 20 is
   above 0.3; else drawn with 0.20 while the cache holds fewer than 10 entries; else
   drawn with ``0.02 + 0.13 * min(total_cache_injections / 50, 1)``.
4. **Cache injection**: forced by ``force_cache`` (ignores the cooldown), else drawn
   with the current rate when ``k - last_cache_kf > injection_cooldown`` (2). The
   entry is drawn from the "related but different" window (see
   :func:`select_candidate`); none in the window means no injection.

An empty cache never injects from the cache and never raises. Every random choice
uses the ``numpy.random.Generator`` passed in, so a run can be replayed; the state
(counters and windows) round-trips through a JSON-able dict.

Bookkeeping: a decision without injection appends False to the
recent-decision window and a cache injection True, while a seed injection appends
nothing; the last five injected cache ids are down-weighted (x0.1).

:func:`choose_walk_target` serves the ``interpolate`` mode: it picks the next cached
keyframe or seed image to slerp towards with the same window and weighting.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .collapse import ACTION_FORCE, ACTION_SCALE, CollapseResult
from .similarity import SimilarityStrategy
from .tuning_values import flag, number, pair, per_metric

CACHE_BLEND_WEIGHT = 0.75
SEED_BLEND_WEIGHT = 0.85
ACTION_NONE = "none"
ACTION_CACHE = "cache"
ACTION_SEED = "seed"


@dataclass(frozen=True)
class InjectionConfig:
    """Policy parameters; the defaults are those of ``docs/design.md`` §12.

    Attributes:
        windows: per-metric open interval ``(lo, hi)`` of "related but different".
        warmup_keyframes: no injection while the keyframe number is <= this.
        injection_probability: base cache-injection rate per keyframe.
        injection_cooldown: keyframes after a cache injection without a drawn one.
        seed_injection_cooldown: keyframes after a seed injection without any seed.
        force_seed_injection_frequency: force a seed above this cache-injection share.
        force_seed_collapse_frequency: force a seed above this collapse share.
        seed_injection_floor: seed probability at 0 cache injections.
        seed_injection_max: seed probability after ``seed_injection_ramp`` of them.
        seed_injection_ramp: cache injections to ramp from floor to max.
        seed_injection_boost_threshold: cache size below which the boost applies.
        seed_injection_boost_probability: seed probability while bootstrapping.
        recent_decisions: decisions in the cache-injection-share window.
        collapse_history: verdicts in the collapse-share window.
        recent_ids: injected ids remembered for the anti-loop penalty.
        recent_penalty: weight factor for a recently injected id.
        weight_sharpness: ``w = exp(weight_sharpness * score)``.
        prioritise_trigger: score only the metrics that triggered the collapse
            verdict; False uses the max over all metrics.
        blend_weight: latent weight of a cached frame (for :func:`blend_latents`).
        seed_blend_weight: latent weight of a seed image.
    """

    windows: Mapping[str, tuple[float, float]]
    warmup_keyframes: int = 10
    injection_probability: float = 0.15
    injection_cooldown: int = 2
    seed_injection_cooldown: int = 2
    force_seed_injection_frequency: float = 0.30
    force_seed_collapse_frequency: float = 0.3
    seed_injection_floor: float = 0.02
    seed_injection_max: float = 0.15
    seed_injection_ramp: int = 50
    seed_injection_boost_threshold: int = 10
    seed_injection_boost_probability: float = 0.20
    recent_decisions: int = 10
    collapse_history: int = 20
    recent_ids: int = 5
    recent_penalty: float = 0.1
    weight_sharpness: float = 2.0
    prioritise_trigger: bool = False
    blend_weight: float = CACHE_BLEND_WEIGHT
    seed_blend_weight: float = SEED_BLEND_WEIGHT

    def __post_init__(self) -> None:
        object.__setattr__(self, "windows", check_windows(self.windows))
        probabilities = (
            "injection_probability",
            "force_seed_injection_frequency",
            "force_seed_collapse_frequency",
            "seed_injection_floor",
            "seed_injection_max",
            "seed_injection_boost_probability",
            "blend_weight",
            "seed_blend_weight",
        )
        for name in probabilities:
            number(name, getattr(self, name), 0, 1)
        for name in (
            "warmup_keyframes",
            "injection_cooldown",
            "seed_injection_cooldown",
            "seed_injection_boost_threshold",
        ):
            number(name, getattr(self, name), 0, whole=True)
        for name in ("seed_injection_ramp", "recent_decisions", "collapse_history", "recent_ids"):
            number(name, getattr(self, name), 1, whole=True)
        number("recent_penalty", self.recent_penalty, 0, 1, above=True)
        number("weight_sharpness", self.weight_sharpness, 0)
        flag("prioritise_trigger", self.prioritise_trigger)

    @classmethod
    def for_strategy(cls, strategy: SimilarityStrategy, **overrides: Any) -> InjectionConfig:
        """The defaults with the strategy's candidate windows; ``overrides`` replace fields
        (``windows`` per metric)."""
        given = per_metric("windows", overrides.pop("windows", {}), strategy, "[low, high]")
        return cls(windows={**strategy.defaults.candidate_window, **given}, **overrides)


def check_windows(windows: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """Per-metric ``(lo, hi)`` windows (non-empty, pairs of numbers, ``lo < hi``), as tuples."""
    if not windows:
        raise ValueError("at least one candidate window is needed")
    checked = {}
    for metric, window in windows.items():
        lo, hi = pair(f"windows {metric!r}", window)
        if not lo < hi:
            raise ValueError(f"windows {metric!r} needs low < high, got {list(window)}")
        checked[metric] = (lo, hi)
    return checked


@dataclass(frozen=True)
class Candidate:
    """The entry drawn from the candidate window.

    Attributes:
        entry_id: its id.
        index: its position in the ids passed in.
        score: its dissimilarity score.
        probability: the probability it was drawn with.
        candidates: how many entries were in the window.
        similarities: its per-metric similarity to the current frame.
    """

    entry_id: str
    index: int
    score: float
    probability: float
    candidates: int
    similarities: Mapping[str, float]


def dissimilarity_scores(
    similarities: Mapping[str, np.ndarray | torch.Tensor],
    windows: Mapping[str, tuple[float, float]],
    priority: Collection[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Window membership and dissimilarity score of every entry.

    An entry is in the window when ANY metric's similarity lies in its open interval.
    Per metric, ``d = 1 - (s - lo) / (hi - lo)`` (not clipped);
    the score is the max of ``d`` over ``priority`` metrics (all metrics when None).

    Returns:
        ``(in_window bool [M], score float [M])``.
    """
    metrics = list(windows)
    sims = np.stack([np.asarray(similarities[m], dtype=np.float64).ravel() for m in metrics])
    lo = np.array([windows[m][0] for m in metrics])[:, None]
    hi = np.array([windows[m][1] for m in metrics])[:, None]
    in_window = ((sims > lo) & (sims < hi)).any(axis=0)
    dissim = 1.0 - (sims - lo) / (hi - lo)
    rows = [i for i, m in enumerate(metrics) if priority is None or m in priority]
    if not rows:
        raise ValueError(f"no priority metric among {metrics}: {sorted(priority or [])}")
    return in_window, dissim[rows].max(axis=0)


def _draw(
    ids: Sequence[str],
    positions: np.ndarray,
    scores: np.ndarray,
    rng: np.random.Generator,
    recent_ids: Collection[str],
    penalty: float,
    sharpness: float,
) -> tuple[int, float]:
    """Weighted draw among ``positions``: ``exp(sharpness*score)``, x penalty if recent."""
    weights = np.exp(sharpness * scores[positions])
    if recent_ids:
        candidate_ids = map(ids.__getitem__, positions.tolist())
        is_recent = np.fromiter(
            map(set(recent_ids).__contains__, candidate_ids), dtype=bool, count=positions.size
        )
        weights[is_recent] *= penalty
    probabilities = weights / weights.sum()
    pick = int(rng.choice(len(positions), p=probabilities))
    return int(positions[pick]), float(probabilities[pick])


def select_candidate(
    ids: Sequence[str],
    similarities: Mapping[str, np.ndarray | torch.Tensor],
    windows: Mapping[str, tuple[float, float]],
    rng: np.random.Generator,
    *,
    recent_ids: Collection[str] = (),
    penalty: float = 0.1,
    sharpness: float = 2.0,
    priority: Collection[str] | None = None,
    exclude: Collection[str] = (),
) -> Candidate | None:
    """Draw a "related but different" entry, or None when the window is empty.

    Args:
        ids: entry ids, aligned with the similarity arrays.
        similarities: ``{metric: [M]}`` similarity of the current frame to each entry.
        windows: per-metric open intervals ``(lo, hi)``.
        rng: the seeded generator (one draw when there is a candidate).
        recent_ids: ids whose weight is multiplied by ``penalty``.
        penalty: weight factor for recent ids (0.1).
        sharpness: weights are ``exp(sharpness * score)`` (2.0).
        priority: metrics the score is taken over (None: all).
        exclude: ids never chosen (e.g. the current frame).
    """
    in_window, scores = dissimilarity_scores(similarities, windows, priority)
    if len(ids) != in_window.size:
        raise ValueError(f"{len(ids)} ids but {in_window.size} similarities")
    if exclude:
        excluded = set(exclude)
        in_window &= np.array([entry_id not in excluded for entry_id in ids], dtype=bool)
    positions = np.flatnonzero(in_window)
    if positions.size == 0:
        return None
    index, probability = _draw(ids, positions, scores, rng, recent_ids, penalty, sharpness)
    return Candidate(
        entry_id=ids[index],
        index=index,
        score=float(scores[index]),
        probability=probability,
        candidates=int(positions.size),
        similarities={m: float(np.asarray(similarities[m]).ravel()[index]) for m in windows},
    )


@dataclass(frozen=True)
class InjectionDecision:
    """What happens on one keyframe, and why.

    Attributes:
        keyframe: the keyframe number decided for.
        action: ``"none"``, ``"cache"`` or ``"seed"``.
        reason: human-readable explanation (recorded in the session stats).
        entry_id: the cached entry to blend in (``action == "cache"``).
        seed_index: index of the seed image to blend in (``action == "seed"``).
        forced: the injection was forced rather than drawn.
        probabilities: the rates and shares used (``cache_rate``, ``seed``...).
    """

    keyframe: int
    action: str
    reason: str
    entry_id: str | None = None
    seed_index: int | None = None
    forced: bool = False
    probabilities: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)} | {
            "probabilities": dict(self.probabilities)
        }


@dataclass
class InjectionState:
    """Counters and windows of the policy (JSON-able through :meth:`to_dict`)."""

    current_rate: float
    last_cache_kf: int = 0
    last_seed_kf: int = 0
    total_cache_injections: int = 0
    total_seed_injections: int = 0
    recent_cache_decisions: deque[bool] = field(default_factory=deque)
    collapse_history: deque[bool] = field(default_factory=deque)
    recent_ids: deque[str] = field(default_factory=deque)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "current_rate": self.current_rate,
            "last_cache_kf": self.last_cache_kf,
            "last_seed_kf": self.last_seed_kf,
            "total_cache_injections": self.total_cache_injections,
            "total_seed_injections": self.total_seed_injections,
            "recent_cache_decisions": list(self.recent_cache_decisions),
            "collapse_history": list(self.collapse_history),
            "recent_ids": list(self.recent_ids),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InjectionState:
        """Parse what :meth:`to_dict` produced."""
        return cls(
            current_rate=float(data["current_rate"]),
            last_cache_kf=int(data["last_cache_kf"]),
            last_seed_kf=int(data["last_seed_kf"]),
            total_cache_injections=int(data["total_cache_injections"]),
            total_seed_injections=int(data["total_seed_injections"]),
            recent_cache_decisions=deque(bool(v) for v in data["recent_cache_decisions"]),
            collapse_history=deque(bool(v) for v in data["collapse_history"]),
            recent_ids=deque(str(v) for v in data["recent_ids"]),
        )


class InjectionPolicy:
    """Decides, per keyframe, between no injection, a cache injection and a seed."""

    def __init__(self, config: InjectionConfig) -> None:
        self.config = config
        self.state = self._windows(InjectionState(current_rate=config.injection_probability))

    def _windows(self, state: InjectionState) -> InjectionState:
        """Give the state's deques this config's lengths."""
        state.recent_cache_decisions = deque(
            state.recent_cache_decisions, maxlen=self.config.recent_decisions
        )
        state.collapse_history = deque(state.collapse_history, maxlen=self.config.collapse_history)
        state.recent_ids = deque(state.recent_ids, maxlen=self.config.recent_ids)
        return state

    def state_dict(self) -> dict[str, Any]:
        """The policy state as a JSON-able dict."""
        return self.state.to_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict`."""
        self.state = self._windows(InjectionState.from_dict(state))

    def in_warmup(self, keyframe: int) -> bool:
        """True while keyframe ``keyframe`` is in the warm-up (no detector, no injection)."""
        return keyframe <= self.config.warmup_keyframes

    def seed_probability(self, cache_size: int) -> float:
        """Probability of a drawn seed injection (boost or ramp), collapse share aside."""
        cfg = self.config
        if cache_size < cfg.seed_injection_boost_threshold:
            return cfg.seed_injection_boost_probability
        progress = min(self.state.total_cache_injections / cfg.seed_injection_ramp, 1.0)
        return (
            cfg.seed_injection_floor
            + (cfg.seed_injection_max - cfg.seed_injection_floor) * progress
        )

    def decide(
        self,
        keyframe: int,
        rng: np.random.Generator,
        *,
        cache_ids: Sequence[str],
        similarities: Mapping[str, np.ndarray | torch.Tensor],
        seed_count: int = 0,
        collapse: CollapseResult | None = None,
    ) -> InjectionDecision:
        """Decide for keyframe ``keyframe`` and update the state as if it is carried out.

        Args:
            keyframe: number of the keyframe about to be made (``completed + 1``).
            rng: the session's seeded generator.
            cache_ids: ids of the cached entries.
            similarities: ``{metric: [M]}`` similarity of the last completed keyframe
                to each cached entry (the same values the admission check uses).
            seed_count: number of seed images available (0 disables seed injection).
            collapse: the detector's verdict for the last completed keyframe (None
                during warm-up or without a detector).

        After an injection, call the detector's ``reset_after_injection`` before it analyses
        the injected keyframe.
        """
        cfg, state = self.config, self.state
        if self.in_warmup(keyframe):
            state.recent_cache_decisions.append(False)
            return InjectionDecision(
                keyframe, ACTION_NONE, f"warm-up (keyframe {keyframe} <= {cfg.warmup_keyframes})"
            )
        if collapse is not None:
            state.collapse_history.append(collapse.is_collapsed)
            if collapse.action == ACTION_SCALE:
                base = cfg.injection_probability
                state.current_rate = base + (1.0 - base) * collapse.scaled_probability
            elif collapse.action != ACTION_FORCE:
                state.current_rate = cfg.injection_probability
        probabilities = {"cache_rate": state.current_rate}
        seed = self._seed_decision(keyframe, rng, len(cache_ids), seed_count, probabilities)
        if seed is not None:
            return seed
        return self._cache_decision(keyframe, rng, cache_ids, similarities, collapse, probabilities)

    @staticmethod
    def _share(window: deque[bool]) -> float:
        return sum(window) / len(window) if window else 0.0

    def _seed_decision(
        self,
        keyframe: int,
        rng: np.random.Generator,
        cache_size: int,
        seed_count: int,
        probabilities: dict[str, float],
    ) -> InjectionDecision | None:
        cfg, state = self.config, self.state
        if seed_count <= 0 or keyframe - state.last_seed_kf <= cfg.seed_injection_cooldown:
            return None
        cache_share = self._share(state.recent_cache_decisions)
        collapse_share = self._share(state.collapse_history)
        probabilities.update(recent_cache_share=cache_share, collapse_share=collapse_share)
        if cache_share > cfg.force_seed_injection_frequency:
            reason, forced = (
                f"forced seed: cache-injection share {cache_share:.2f} > "
                f"{cfg.force_seed_injection_frequency:.2f}",
                True,
            )
        elif state.collapse_history and collapse_share > cfg.force_seed_collapse_frequency:
            reason, forced = (
                f"forced seed: collapse share {collapse_share:.2f} > "
                f"{cfg.force_seed_collapse_frequency:.2f}",
                True,
            )
        else:
            chance = self.seed_probability(cache_size)
            probabilities["seed"] = chance
            draw = float(rng.random())
            if draw >= chance:
                return None
            kind = "boost" if cache_size < cfg.seed_injection_boost_threshold else "ramp"
            reason, forced = f"seed drawn ({kind}: {draw:.3f} < {chance:.3f})", False
        seed_index = int(rng.integers(seed_count))
        state.last_seed_kf = keyframe
        state.total_seed_injections += 1
        return InjectionDecision(
            keyframe,
            ACTION_SEED,
            reason,
            seed_index=seed_index,
            forced=forced,
            probabilities=probabilities,
        )

    def _cache_decision(
        self,
        keyframe: int,
        rng: np.random.Generator,
        cache_ids: Sequence[str],
        similarities: Mapping[str, np.ndarray | torch.Tensor],
        collapse: CollapseResult | None,
        probabilities: dict[str, float],
    ) -> InjectionDecision:
        cfg, state = self.config, self.state
        forced = collapse is not None and collapse.action == ACTION_FORCE

        def no_injection(reason: str) -> InjectionDecision:
            state.recent_cache_decisions.append(False)
            return InjectionDecision(keyframe, ACTION_NONE, reason, probabilities=probabilities)

        if not cache_ids:
            return no_injection("cache is empty")
        if forced:
            reason = f"forced by collapse ({collapse.reason})"
        elif keyframe - state.last_cache_kf <= cfg.injection_cooldown:
            return no_injection(
                f"cache injection on cooldown (last at keyframe {state.last_cache_kf})"
            )
        else:
            draw = float(rng.random())
            if draw >= state.current_rate:
                return no_injection(f"not drawn ({draw:.3f} >= {state.current_rate:.3f})")
            reason = f"drawn ({draw:.3f} < {state.current_rate:.3f})"
        priority = (
            collapse.triggered
            if (cfg.prioritise_trigger and collapse and collapse.triggered)
            else None
        )
        candidate = select_candidate(
            cache_ids,
            similarities,
            cfg.windows,
            rng,
            recent_ids=state.recent_ids,
            penalty=cfg.recent_penalty,
            sharpness=cfg.weight_sharpness,
            priority=priority,
        )
        if candidate is None:
            return no_injection(f"{reason}, but no cached entry is in the candidate window")
        state.last_cache_kf = keyframe
        state.total_cache_injections += 1
        state.recent_ids.append(candidate.entry_id)
        state.recent_cache_decisions.append(True)
        probabilities["candidate"] = candidate.probability
        return InjectionDecision(
            keyframe,
            ACTION_CACHE,
            f"{reason}: {candidate.entry_id} (score {candidate.score:.3f}, "
            f"{candidate.candidates} candidates)",
            entry_id=candidate.entry_id,
            forced=forced,
            probabilities=probabilities,
        )

    def stats(self) -> dict[str, Any]:
        """Injection statistics: counters, recent ids and the current rate."""
        state = self.state
        return {
            "total_cache_injections": state.total_cache_injections,
            "total_seed_injections": state.total_seed_injections,
            "recent_collapse_frequency": self._share(state.collapse_history),
            "recent_collapse_count": sum(state.collapse_history),
            "history_size": len(state.collapse_history),
            "current_injection_rate": state.current_rate,
        }


def blend_latents(injected: torch.Tensor, current: torch.Tensor, weight: float) -> torch.Tensor:
    """Linear latent blend ``weight * injected + (1 - weight) * current``.

    Use :data:`CACHE_BLEND_WEIGHT` (0.75) for a cached frame and
    :data:`SEED_BLEND_WEIGHT` (0.85) for a seed. An ``injected`` latent of another
    spatial size is resized (bilinear) to ``current``'s; the result has
    ``current``'s dtype and device.

    Raises:
        ValueError: the weight is outside [0, 1] or the batch/channel shapes differ.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"blend weight must be within [0, 1], got {weight}")
    source = injected.to(device=current.device, dtype=current.dtype)
    if source.shape != current.shape:
        if source.dim() != 4 or current.dim() != 4 or source.shape[:2] != current.shape[:2]:
            raise ValueError(
                f"cannot blend a latent of shape {tuple(source.shape)} into {tuple(current.shape)}"
            )
        source = F.interpolate(
            source, size=current.shape[-2:], mode="bilinear", align_corners=False
        )
    return weight * source + (1.0 - weight) * current


@dataclass(frozen=True)
class WalkChoice:
    """The next target of the ``interpolate`` mode's walk.

    Attributes:
        entry_id: the chosen cache entry or seed id.
        reason: why it was chosen.
        probability: probability of the draw (1.0 for the deterministic fallback).
    """

    entry_id: str
    reason: str
    probability: float


def choose_walk_target(
    ids: Sequence[str],
    similarities: Mapping[str, np.ndarray | torch.Tensor],
    windows: Mapping[str, tuple[float, float]],
    rng: np.random.Generator,
    *,
    current_id: str | None = None,
    recent_ids: Collection[str] = (),
    penalty: float = 0.1,
    sharpness: float = 2.0,
) -> WalkChoice | None:
    """Pick the next keyframe (cached entry or seed image) for the interpolate walk.

    The bank (``ids``) is the cache plus the seed images, embedded with the session's
    strategy; ``similarities`` compare the walk's current keyframe with it. Like a
    cache injection, the target is drawn from the "related but different" window with
    weights ``exp(sharpness * score)``, down-weighting ``recent_ids``. When nothing
    lies in the window, the walk takes the closest relative (the lowest
    dissimilarity score) that is not recent, so it keeps moving smoothly.

    Returns:
        The choice, or None when the bank holds nothing but ``current_id``.
    """
    exclude = () if current_id is None else (current_id,)
    candidate = select_candidate(
        ids,
        similarities,
        windows,
        rng,
        recent_ids=recent_ids,
        penalty=penalty,
        sharpness=sharpness,
        exclude=exclude,
    )
    if candidate is not None:
        return WalkChoice(
            candidate.entry_id,
            f"related but different (score {candidate.score:.3f}, "
            f"{candidate.candidates} candidates)",
            candidate.probability,
        )
    _, scores = dissimilarity_scores(similarities, windows)
    others = [i for i, entry_id in enumerate(ids) if entry_id != current_id]
    if not others:
        return None
    recent = set(recent_ids)
    fresh = [i for i in others if ids[i] not in recent] or others
    closest = min(fresh, key=lambda i: (scores[i], i))
    return WalkChoice(
        ids[closest],
        f"no entry in the window; closest relative (score {scores[closest]:.3f})",
        1.0,
    )


__all__ = [
    "ACTION_CACHE",
    "ACTION_NONE",
    "ACTION_SEED",
    "CACHE_BLEND_WEIGHT",
    "SEED_BLEND_WEIGHT",
    "Candidate",
    "InjectionConfig",
    "InjectionDecision",
    "InjectionPolicy",
    "InjectionState",
    "WalkChoice",
    "blend_latents",
    "check_windows",
    "choose_walk_target",
    "dissimilarity_scores",
    "select_candidate",
]
