"""Interpolated frames between two keyframe latents.

``slerp_batch`` is a global slerp (``docs/design.md`` §4): both latents are flattened into
one vector, the directions are slerped and the magnitude is interpolated linearly. Every t is
computed at once (no Python loop per frame), and the degenerate cases fall back to a plain
lerp whenever ``sin ω`` is tiny, which covers near-parallel **and** antiparallel inputs.
"""

from __future__ import annotations

import math

import torch

EPS = 1e-6
"""Added to the norms before normalising."""

SIN_FALLBACK = 1e-4
"""Below this ``sin ω`` the slerp weights are ill-conditioned and lerp is used instead."""

METHODS = ("slerp", "lerp")
EASINGS = ("linear", "ease_in_out", "ease_in", "ease_out")


def ease(u: torch.Tensor, easing: str) -> torch.Tensor:
    """Map evenly spaced ``u`` in [0, 1] to eased positions in [0, 1] (endpoints fixed)."""
    if easing == "linear":
        return u
    if easing == "ease_in_out":
        return (1.0 - torch.cos(math.pi * u)) / 2.0
    if easing == "ease_in":
        return 1.0 - torch.cos(math.pi * u / 2.0)
    if easing == "ease_out":
        return torch.sin(math.pi * u / 2.0)
    raise ValueError(f"unknown easing {easing!r}; choose one of {', '.join(EASINGS)}")


def frame_times(count: int, easing: str = "linear") -> torch.Tensor:
    """The ``count`` interpolation positions between two keyframes, endpoints excluded.

    Linear spacing gives ``t_i = i / (count + 1)`` for ``i = 1..count``.
    """
    if count < 0:
        raise ValueError(f"frame count must be >= 0, got {count}")
    u = torch.arange(1, count + 1, dtype=torch.float64) / (count + 1)
    return ease(u, easing)


def lerp_batch(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``(1 - t) a + t b`` for every t at once; returns ``[len(t), *a.shape]``."""
    _check_pair(a, b)
    tt = t.to(device=a.device, dtype=torch.float64)
    return _weighted_pair(1.0 - tt, a.reshape(-1).to(torch.float64), tt, b.reshape(-1).to(torch.float64), a)


def slerp_batch(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Global slerp with linearly interpolated magnitude for every t at once.

    ``a`` and ``b`` have the same shape (any shape); the result is ``[len(t), *a.shape]``
    in ``a``'s dtype. Computed in float64 on ``a``'s device.
    """
    _check_pair(a, b)
    va = a.reshape(-1).to(torch.float64)
    vb = b.reshape(-1).to(torch.float64)
    na, nb = va.norm(), vb.norm()
    if na * nb == 0:
        return lerp_batch(a, b, t)
    # The angle comes from the exact cosine so that ε cannot hide an (anti)parallel pair.
    omega = torch.acos(torch.clamp(torch.dot(va, vb) / (na * nb), -1.0, 1.0))
    sin_omega = torch.sin(omega)
    if sin_omega.abs() < SIN_FALLBACK:
        return lerp_batch(a, b, t)
    tt = t.to(device=va.device, dtype=torch.float64)
    magnitude = (1.0 - tt) * na + tt * nb
    wa = torch.sin((1.0 - tt) * omega) / sin_omega * magnitude / (na + EPS)
    wb = torch.sin(tt * omega) / sin_omega * magnitude / (nb + EPS)
    return _weighted_pair(wa, va, wb, vb, a)


def _weighted_pair(wa: torch.Tensor, va: torch.Tensor, wb: torch.Tensor, vb: torch.Tensor,
                   like: torch.Tensor) -> torch.Tensor:
    """``wa[i] va + wb[i] vb`` for every i, shaped ``[len(wa), *like.shape]`` in ``like``'s dtype.

    Two outer products into one buffer: one float64 batch and one conversion, instead of a
    batch-sized temporary per operation of the textbook expression.
    """
    out = torch.outer(wa, va)
    out.addr_(wb, vb)
    return out.reshape(len(wa), *like.shape).to(like.dtype)


def interpolate(a: torch.Tensor, b: torch.Tensor, count: int, method: str = "slerp",
                easing: str = "linear") -> torch.Tensor:
    """``count`` frames strictly between keyframes ``a`` and ``b``: ``[count, *a.shape]``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    t = frame_times(count, easing)
    if count == 0:
        return a.new_empty((0, *a.shape))
    return slerp_batch(a, b, t) if method == "slerp" else lerp_batch(a, b, t)


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"keyframe latents differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
