"""Mode-collapse detector (``docs/design.md`` §11), plus a fix for its dormancy.

Per analysed keyframe the detector appends the embedding to a history (50), takes
the last 10 embeddings, and appends the mean similarity of each *consecutive* pair
to a per-metric similarity history (100). Once every similarity history holds at
least 40 samples it compares the mean of the newest 20 with the mean of the oldest
20 (``delta``) per metric and decides, with OR logic over the metrics:

* ``force_cache`` (status ``collapsed``) if any ``delta > force`` threshold;
* ``scale_injection`` (status ``converging``) if any ``delta > convergence``
  threshold, with ``scaled = min(1, max_m (delta_m - conv_m) / (force_m - conv_m))``
  over the metrics above their convergence threshold;
* otherwise ``none`` (status ``ok``).

Thresholds are per metric (dual metric: colour 0.15/0.30, struct 0.08/0.15), so a
single-metric strategy simply has one.

**Reset after an injection.** ``partial`` trims all histories to the last 10 after every
injection, so 30 more keyframes are needed before 40 samples exist again; with injections
every ~7 keyframes the detector almost never runs (``docs/design.md`` §11). ``full``
clears them and ``none`` keeps them; the default, ``window``, keeps the detector deciding:

* the similarity histories are trimmed to the newest ``min_samples`` (40) values, so
  the detector keeps enough samples to decide on the very next keyframe, and its
  baseline becomes the 40 keyframes before the injection rather than up to 100;
* the embedding history is kept, so the consecutive pair that spans the injection is
  measured: an injection that really changed the picture lowers the newest samples
  and calms the detector by itself;
* because ``force_cache`` bypasses the injection cooldown, a detector that kept its
  history would otherwise force an injection on every keyframe until its 20-sample
  window caught up. So after an injection that was *forced*, a force verdict is
  held off for ``keep_recent`` (10) analysed keyframes - the time the injected frame
  needs to pass through the 10-frame pair window - and reported as
  ``scale_injection`` at probability 1.0 instead (still injecting, but through the
  cooldown).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from .similarity import SimilarityStrategy
from .tuning_values import choice, number, pair

logger = logging.getLogger(__name__)

RESET_POLICIES = ("window", "partial", "full", "none")
HISTORY_SIZE = 50
SIMILARITY_HISTORY_SIZE = 100
PAIR_WINDOW = 10
MIN_SAMPLES = 40
COMPARE_WINDOW = 20
STATUS_OK = "ok"
STATUS_CONVERGING = "converging"
STATUS_COLLAPSED = "collapsed"
ACTION_NONE = "none"
ACTION_SCALE = "scale_injection"
ACTION_FORCE = "force_cache"


@dataclass(frozen=True)
class MetricTrend:
    """The similarity trend of one metric.

    Attributes:
        samples: similarity samples held (the detector decides from ``min_samples``).
        latest: newest sample: mean consecutive-pair similarity over the last keyframes.
        early_mean: mean of the oldest ``compare_window`` samples (None before
            ``min_samples``).
        recent_mean: mean of the newest ``compare_window`` samples (None before
            ``min_samples``).
        delta: ``recent_mean - early_mean``; positive means frames grow more alike.
        overall_mean: mean of every sample held.
    """

    samples: int
    latest: float | None
    early_mean: float | None
    recent_mean: float | None
    delta: float | None
    overall_mean: float | None


@dataclass(frozen=True)
class CollapseResult:
    """The verdict for one analysed keyframe.

    Attributes:
        status: ``"ok"``, ``"converging"`` or ``"collapsed"``.
        action: ``"none"``, ``"scale_injection"`` or ``"force_cache"``.
        scaled_probability: 0..1; 1.0 with ``force_cache``.
        similarities: this keyframe's sample per metric (empty before 2 keyframes).
        deltas: per-metric ``delta`` (empty before ``min_samples`` samples).
        triggered: metrics over their convergence threshold.
        reason: human-readable explanation.
    """

    status: str
    action: str
    scaled_probability: float
    similarities: Mapping[str, float]
    deltas: Mapping[str, float]
    triggered: tuple[str, ...]
    reason: str

    @property
    def is_collapsed(self) -> bool:
        """True for ``converging`` and ``collapsed`` (what the injection policy records)."""
        return self.status in (STATUS_CONVERGING, STATUS_COLLAPSED)


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


class CollapseDetector:
    """Tracks consecutive-keyframe similarity and flags convergence (see module doc)."""

    def __init__(
        self,
        strategy: SimilarityStrategy,
        thresholds: Mapping[str, tuple[float, float]] | None = None,
        *,
        reset_policy: str = "window",
        keep_recent: int = 10,
    ) -> None:
        """Args:
        strategy: compares embeddings (its metrics name the thresholds).
        thresholds: ``{metric: (convergence, force)}``; defaults to the strategy's.
        reset_policy: ``"window"`` (default, the fix), ``"partial"``, ``"full"``
            or ``"none"``; see the module doc.
        keep_recent: history kept by ``partial``; force hold-off length of ``window``.

        The history sizes: :data:`HISTORY_SIZE` embeddings,
        :data:`SIMILARITY_HISTORY_SIZE` samples per metric, one sample per :data:`PAIR_WINDOW`
        embeddings, a verdict from :data:`MIN_SAMPLES` samples comparing means of
        :data:`COMPARE_WINDOW`.
        """
        chosen = dict(strategy.defaults.collapse if thresholds is None else thresholds)
        if set(chosen) != set(strategy.metrics):
            raise ValueError(
                f"collapse thresholds must cover exactly the metrics {list(strategy.metrics)} "
                f"of strategy '{strategy.name}', got {sorted(chosen)}"
            )
        checked = {}
        for metric, given in chosen.items():
            convergence, force = checked[metric] = pair(
                f"collapse_thresholds {metric!r}", given, ("convergence", "force")
            )
            if not 0.0 <= convergence <= force:
                raise ValueError(
                    f"collapse_thresholds {metric!r} needs 0 <= convergence <= force, got {list(given)}"
                )
        choice("reset_policy", reset_policy, RESET_POLICIES)
        number("keep_recent", keep_recent, 0, whole=True)
        self._strategy = strategy
        self.thresholds: Mapping[str, tuple[float, float]] = MappingProxyType(checked)
        self.pair_window = PAIR_WINDOW
        self.min_samples = MIN_SAMPLES
        self.compare_window = COMPARE_WINDOW
        self.reset_policy = reset_policy
        self.keep_recent = keep_recent
        self._embeddings: deque[torch.Tensor] = deque(maxlen=HISTORY_SIZE)
        self._similarities: dict[str, deque[float]] = {
            metric: deque(maxlen=SIMILARITY_HISTORY_SIZE) for metric in strategy.metrics
        }
        self._force_hold = 0
        self._last_action = ACTION_NONE

    @property
    def frames_analyzed(self) -> int:
        """Embeddings currently held (``collapse_frames_analyzed`` in ``status.json``)."""
        return len(self._embeddings)

    def analyze(self, embedding: torch.Tensor) -> CollapseResult:
        """Add one keyframe embedding (``[D]`` or ``[1,D]``) and return the verdict."""
        holding = self._force_hold > 0
        self._force_hold = max(0, self._force_hold - 1)
        self._embeddings.append(embedding.detach().to("cpu", torch.float32).reshape(-1).clone())
        if len(self._embeddings) < 2:
            return self._result(STATUS_OK, ACTION_NONE, 0.0, {}, {}, (), "insufficient history")
        recent = torch.stack(list(self._embeddings)[-self.pair_window :])
        pair_sims = self._strategy.metric_similarities(recent[:-1], recent[1:])
        sample = {metric: float(values.diagonal().mean()) for metric, values in pair_sims.items()}
        for metric, history in self._similarities.items():
            history.append(sample[metric])
        if any(len(history) < self.min_samples for history in self._similarities.values()):
            return self._result(
                STATUS_OK, ACTION_NONE, 0.0, sample, {}, (), "insufficient similarity samples"
            )
        deltas = {metric: trend.delta for metric, trend in self.trend().items()}
        return self._decide(sample, deltas, holding)

    def _decide(
        self, sample: Mapping[str, float], deltas: Mapping[str, float], holding: bool
    ) -> CollapseResult:
        forced = tuple(m for m, d in deltas.items() if d > self.thresholds[m][1])
        triggered = tuple(m for m, d in deltas.items() if d > self.thresholds[m][0])
        if forced and not holding:
            reason = " OR ".join(f"{m}={deltas[m]:.4f}>{self.thresholds[m][1]:.4f}" for m in forced)
            logger.warning("collapse detected: %s -> force injection", reason)
            return self._result(
                STATUS_COLLAPSED, ACTION_FORCE, 1.0, sample, deltas, triggered, reason
            )
        if triggered:
            progress = []
            for metric in triggered:
                convergence, force = self.thresholds[metric]
                span = force - convergence
                progress.append((deltas[metric] - convergence) / span if span > 0 else 0.0)
            scaled = 1.0 if forced else min(1.0, max(progress))
            reason = " OR ".join(
                f"{m}={deltas[m]:.4f}>{self.thresholds[m][0]:.4f}" for m in triggered
            )
            if forced:
                reason += f" (force held off after a forced injection, {self._force_hold} more)"
            return self._result(
                STATUS_CONVERGING, ACTION_SCALE, scaled, sample, deltas, triggered, reason
            )
        return self._result(STATUS_OK, ACTION_NONE, 0.0, sample, deltas, (), "no convergence")

    def _result(
        self,
        status: str,
        action: str,
        scaled: float,
        sample: Mapping[str, float],
        deltas: Mapping[str, float],
        triggered: tuple[str, ...],
        reason: str,
    ) -> CollapseResult:
        self._last_action = action
        return CollapseResult(status, action, scaled, dict(sample), dict(deltas), triggered, reason)

    def trend(self) -> dict[str, MetricTrend]:
        """The current similarity trend per metric."""
        trends = {}
        for metric, history in self._similarities.items():
            values = list(history)
            ready = len(values) >= self.min_samples
            early = _mean(values[: self.compare_window]) if ready else None
            recent = _mean(values[-self.compare_window :]) if ready else None
            trends[metric] = MetricTrend(
                samples=len(values),
                latest=values[-1] if values else None,
                early_mean=early,
                recent_mean=recent,
                delta=recent - early if ready else None,
                overall_mean=_mean(values) if values else None,
            )
        return trends

    def reset_after_injection(self) -> None:
        """Apply the reset policy; call once after every successful injection, before the
        injected keyframe is analysed (so a forced injection's hold-off covers its verdict)."""
        if self.reset_policy == "full":
            self._embeddings.clear()
            for history in self._similarities.values():
                history.clear()
        elif self.reset_policy == "partial":
            if len(self._embeddings) > self.keep_recent:
                self._trim(self._embeddings, self.keep_recent)
                for history in self._similarities.values():
                    self._trim(history, self.keep_recent)
        elif self.reset_policy == "window":
            for history in self._similarities.values():
                self._trim(history, self.min_samples)
            if self._last_action == ACTION_FORCE:
                self._force_hold = self.keep_recent

    @staticmethod
    def _trim(history: deque[Any], keep: int) -> None:
        kept = list(history)[-keep:] if keep > 0 else []
        history.clear()
        history.extend(kept)

    def state_dict(self) -> dict[str, Any]:
        """The histories and counters as a JSON-able dict."""
        return {
            "embeddings": [vector.tolist() for vector in self._embeddings],
            "similarities": {
                metric: list(history) for metric, history in self._similarities.items()
            },
            "force_hold": self._force_hold,
            "last_action": self._last_action,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (thresholds come from the constructor)."""
        similarities = state["similarities"]
        if set(similarities) != set(self._similarities):
            raise ValueError(
                f"detector state has metrics {sorted(similarities)}, this detector "
                f"{sorted(self._similarities)}"
            )
        embeddings = [torch.tensor(row, dtype=torch.float32) for row in state["embeddings"]]
        if len({vector.numel() for vector in embeddings}) > 1:
            raise ValueError("detector state holds embeddings of different sizes")
        self._embeddings.clear()
        self._embeddings.extend(embeddings)
        for metric, history in self._similarities.items():
            history.clear()
            history.extend(float(value) for value in similarities[metric])
        self._force_hold = int(state["force_hold"])
        self._last_action = str(state["last_action"])


__all__ = [
    "ACTION_FORCE",
    "ACTION_NONE",
    "ACTION_SCALE",
    "RESET_POLICIES",
    "STATUS_COLLAPSED",
    "STATUS_CONVERGING",
    "STATUS_OK",
    "CollapseDetector",
    "CollapseResult",
    "MetricTrend",
]
