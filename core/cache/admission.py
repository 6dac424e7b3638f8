"""Cache admission: which keyframes and interpolation midpoints enter the cache.

The ``"mean"`` rule (the default, ``docs/design.md`` §10) compares a new frame with *every*
cached entry and admits it when the **mean** similarity is below a per-metric
threshold (colour < 1.92, struct < 0.80), combining the metrics with ``"all"``
(AND, the default) or ``"any"`` (OR). An empty cache always admits.

Because a mean hides clusters, that rule lets near-duplicates of a single entry in;
the ``"max"`` rule compares against the most similar entry instead, and ``"mean+max"``
requires both. ``"always"`` admits every frame.

Thresholds are keyed by the strategy's metric names, so single-metric (cosine)
strategies use one threshold and the dual metric two.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import torch

from .similarity import SimilarityStrategy
from .tuning_values import number, per_metric

ADMISSION_RULES = ("mean", "max", "mean+max", "always")
COMBINE_LOGICS = ("all", "any")


def combine(flags: Mapping[str, bool], logic: str) -> bool:
    """Combine per-metric booleans: ``"all"`` is AND, ``"any"`` is OR."""
    if logic not in COMBINE_LOGICS:
        raise ValueError(f"unknown logic {logic!r}; valid: {', '.join(COMBINE_LOGICS)}")
    return all(flags.values()) if logic == "all" else any(flags.values())


@dataclass(frozen=True)
class AdmissionDecision:
    """Outcome of one admission check.

    Attributes:
        accepted: whether the frame enters the cache.
        reason: human-readable explanation (for logs and session stats).
        mean: per-metric mean similarity to the cache (empty when not computed).
        max: per-metric max similarity to the cache (empty when not computed).
    """

    accepted: bool
    reason: str
    mean: Mapping[str, float] = field(default_factory=dict)
    max: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class AdmissionPolicy:
    """A diversity rule with per-metric thresholds.

    Attributes:
        mean_thresholds: admit while ``mean similarity < threshold`` (per metric).
        max_thresholds: admit while ``max similarity < threshold`` (per metric).
        rule: one of :data:`ADMISSION_RULES`.
        logic: ``"all"`` (every metric must be diverse) or ``"any"``.
    """

    mean_thresholds: Mapping[str, float]
    max_thresholds: Mapping[str, float]
    rule: str = "mean"
    logic: str = "all"

    def __post_init__(self) -> None:
        if self.rule not in ADMISSION_RULES:
            raise ValueError(
                f"unknown admission rule {self.rule!r}; valid: {', '.join(ADMISSION_RULES)}"
            )
        if self.logic not in COMBINE_LOGICS:
            raise ValueError(f"unknown logic {self.logic!r}; valid: {', '.join(COMBINE_LOGICS)}")
        if set(self.mean_thresholds) != set(self.max_thresholds) or not self.mean_thresholds:
            raise ValueError(
                "mean and max thresholds must name the same, non-empty set of metrics, got "
                f"{sorted(self.mean_thresholds)} and {sorted(self.max_thresholds)}"
            )
        for name, key in (("mean_thresholds", "admission_mean"), ("max_thresholds", "admission_max")):
            checked = {m: number(f"{key} {m!r}", v) for m, v in getattr(self, name).items()}
            object.__setattr__(self, name, MappingProxyType(checked))

    @classmethod
    def for_strategy(
        cls,
        strategy: SimilarityStrategy,
        *,
        rule: str = "mean",
        logic: str = "all",
        mean_thresholds: Mapping[str, float] | None = None,
        max_thresholds: Mapping[str, float] | None = None,
    ) -> AdmissionPolicy:
        """A policy with the strategy's default thresholds, optionally overridden per metric."""
        means = per_metric("admission_mean", {} if mean_thresholds is None else mean_thresholds, strategy,
                           "threshold")
        maxes = per_metric("admission_max", {} if max_thresholds is None else max_thresholds, strategy,
                           "threshold")
        return cls(mean_thresholds={**strategy.defaults.admission_mean, **means},
                   max_thresholds={**strategy.defaults.admission_max, **maxes}, rule=rule, logic=logic)

    def evaluate(self, similarities: Mapping[str, np.ndarray | torch.Tensor]) -> AdmissionDecision:
        """Decide from the new frame's similarity to every cached entry.

        Args:
            similarities: ``{metric: [M]}`` similarities of the frame to the M entries
                (as returned, one row, by ``strategy.metric_similarities``).
        """
        if self.rule == "always":
            return AdmissionDecision(True, "admission rule 'always'")
        arrays = {
            metric: np.asarray(similarities[metric], dtype=np.float64).ravel()
            for metric in self.mean_thresholds
        }
        if next(iter(arrays.values())).size == 0:
            return AdmissionDecision(True, "cache is empty")
        means = {metric: float(values.mean()) for metric, values in arrays.items()}
        maxes = {metric: float(values.max()) for metric, values in arrays.items()}
        checks: list[tuple[str, Mapping[str, float], Mapping[str, float]]] = []
        if self.rule in ("mean", "mean+max"):
            checks.append(("mean", means, self.mean_thresholds))
        if self.rule in ("max", "mean+max"):
            checks.append(("max", maxes, self.max_thresholds))
        accepted = True
        parts = []
        for label, values, thresholds in checks:
            diverse = {metric: values[metric] < thresholds[metric] for metric in thresholds}
            accepted = accepted and combine(diverse, self.logic)
            parts.extend(
                f"{label} {metric} {values[metric]:.4f}{'<' if diverse[metric] else '>='}"
                f"{thresholds[metric]:.4f}"
                for metric in thresholds
            )
        verdict = "diverse" if accepted else "too similar"
        reason = f"{verdict} ({self.logic}: {', '.join(parts)})"
        return AdmissionDecision(accepted, reason, means, maxes)


__all__ = [
    "ADMISSION_RULES",
    "COMBINE_LOGICS",
    "AdmissionDecision",
    "AdmissionPolicy",
    "combine",
]
