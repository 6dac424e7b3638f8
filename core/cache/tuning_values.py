"""Checks of values a user gives (the cache's ``tuning``, policy settings): each refusal is a
``ValueError`` that names the value and what it allows, never a ``TypeError`` from deeper down."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol


class HasMetrics(Protocol):
    """A similarity strategy, or its class: its name and metric names."""

    name: str
    metrics: tuple[str, ...]


def number(name: str, value: Any, low: float | None = None, high: float | None = None, *,
           whole: bool = False, above: bool = False) -> float:
    """``value`` if it is a finite number (an integer with ``whole``) from ``low`` to ``high``
    (strictly above ``low`` with ``above``)."""
    kind = "a whole number" if whole else "a number"
    if low is not None and high is not None:
        allowed = f"{kind} above {low} and at most {high}" if above else f"{kind} from {low} to {high}"
    elif low is not None:
        allowed = f"{kind} {'>' if above else '>='} {low}"
    else:
        allowed = kind
    fits = (isinstance(value, int) if whole else isinstance(value, (int, float))) and not isinstance(value, bool)
    if fits:
        fits = (math.isfinite(value) and (low is None or (value > low if above else value >= low))
                and (high is None or value <= high))
    if not fits:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def flag(name: str, value: Any) -> bool:
    """``value`` if it is true or false."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def choice(name: str, value: Any, options: Sequence[str]) -> str:
    """``value`` if it is one of ``options``."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def pair(name: str, value: Any, labels: tuple[str, str] = ("low", "high")) -> tuple[float, float]:
    """``value`` as a tuple if it is a list of two finite numbers (``[low, high]``)."""
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise ValueError(f"{name} must be a pair [{labels[0]}, {labels[1]}] of numbers, got {value!r}")
    return float(value[0]), float(value[1])


def per_metric(name: str, value: Any, strategy: HasMetrics, shape: str = "value") -> dict[str, Any]:
    """``value`` as a dict if it is a mapping whose keys are metrics of ``strategy``."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a JSON object of metric: {shape}, got {value!r}")
    metrics: Collection[str] = strategy.metrics
    for metric in value:
        if metric not in metrics:
            raise ValueError(f"{name}: no such metric {metric!r}; strategy '{strategy.name}' has "
                             f"{', '.join(map(repr, metrics))}")
    return dict(value)
