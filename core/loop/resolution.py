"""Framerate modes: the in-between frames made at a fraction of the keyframe's size.

With a divisor ``d`` > 1 the two keyframe latents are downscaled in latent space to ``small_size``,
interpolated there, decoded small and upscaled back to the keyframe's pixel size; the keyframes
themselves stay full size. Size rule: each latent side of ``n`` cells becomes ``max(1, floor(n / d +
0.5))`` cells, so the small frames stay on the latent grid (at 8 pixels per cell, 512×256 gives 344×168
at d = 1.5, 256×128 at d = 2 and 168×88 at d = 3). See ``docs/design.md`` §4.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DIVISORS = {"1": 1.0, "1.5": 1.5, "2": 2.0, "3": 3.0}
"""The offered divisors, by the name the node shows."""
DOWNSAMPLE_METHODS = ("area", "bilinear", "bicubic", "nearest-exact")
UPSCALE_METHODS = ("bilinear", "bicubic", "nearest-exact")
_SMOOTH = ("bilinear", "bicubic")
DEFAULT_DIVISOR, DEFAULT_DOWNSAMPLE, DEFAULT_UPSCALE = "1", "area", "bilinear"
"""Divisor 1 is the full-size path; "area" averages the latent cells each small cell covers."""


def factor(divisor: str) -> float:
    """The divisor named ``divisor`` as a number."""
    if divisor not in DIVISORS:
        raise ValueError(f"unknown divisor {divisor!r}; choose one of {', '.join(DIVISORS)}")
    return DIVISORS[divisor]


def small_size(height: int, width: int, divisor: float) -> tuple[int, int]:
    """The latent size (cells) of the in-between frames of a ``height`` × ``width`` latent."""
    return tuple(max(1, math.floor(side / divisor + 0.5)) for side in (height, width))


def downscale(latents: torch.Tensor, size: tuple[int, int], method: str) -> torch.Tensor:
    """``[B, C, H, W]`` latents resampled to ``size`` (antialiased where the method filters)."""
    _check(method, DOWNSAMPLE_METHODS)
    return F.interpolate(latents, size=size, mode=method, antialias=method in _SMOOTH)


def upscale(pixels: torch.Tensor, size: tuple[int, int], method: str) -> torch.Tensor:
    """Decoded pixels ``[B, C, h, w]`` in 0..1 resampled to ``size`` on their device, kept within [0, 1]."""
    _check(method, UPSCALE_METHODS)
    out = F.interpolate(pixels, size=size, mode=method, **({"align_corners": False} if method in _SMOOTH else {}))
    return out.clamp_(0.0, 1.0)


def _check(method: str, methods: tuple[str, ...]) -> None:
    if method not in methods:
        raise ValueError(f"unknown resampling method {method!r}; choose one of {', '.join(methods)}")
