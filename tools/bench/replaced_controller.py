"""The replaced controller's client-side steps (``docs/design.md`` §1.1), rebuilt for the
side-by-side benchmarks (not used by the pack).

* ``SlerpPair`` / ``slerp_frame``: the slerp parameters precomputed once per keyframe
  pair, then one call per interpolated frame at ``t_i = i / (N + 1)``;
* ``decode_frame``: one VAE call per frame: divide by 0.18215, decode,
  post-process on the device to uint8 (truncating), copy to the host, make a PIL image;
* ``encode_keyframe``: PNG decode, preprocess, VAE encode, times 0.18215;
* ``png_encode`` / ``png_decode``: the frame's save (``compress_level=1``) and the display's
  re-decode, in memory: the replaced controller also wrote each file to disk, which is left out.

The VAE is ComfyUI's (``comfy.sd.VAE``); its ``first_stage_model`` is called directly like the
original's own diffusers copy, so ComfyUI's per-call bookkeeping is not charged to it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

EPS = 1e-6
"""The replaced controller's ε (added to the norms; threshold of the near-parallel case)."""
SCALE = 0.18215
"""SD1.x latent scaling factor (the replaced controller kept its latents scaled)."""


@dataclass(frozen=True)
class SlerpPair:
    """The per-pair precomputation of the replaced controller's slerp (``docs/design.md`` §4)."""

    unit_a: torch.Tensor
    unit_b: torch.Tensor
    omega: torch.Tensor
    sin_omega: torch.Tensor
    norm_a: torch.Tensor
    norm_b: torch.Tensor
    shape: torch.Size

    @classmethod
    def of(cls, a: torch.Tensor, b: torch.Tensor) -> SlerpPair:
        va, vb = a.reshape(-1), b.reshape(-1)
        na, nb = va.norm(), vb.norm()
        ua, ub = va / (na + EPS), vb / (nb + EPS)
        omega = torch.acos(torch.clamp(torch.dot(ua, ub), -1.0, 1.0))
        return cls(ua, ub, omega, torch.sin(omega), na, nb, a.shape)


def slerp_frame(pair: SlerpPair, t: float) -> torch.Tensor:
    """One interpolated latent, as the replaced controller's precomputed path computes it."""
    magnitude = (1.0 - t) * pair.norm_a + t * pair.norm_b
    if pair.omega.abs() < EPS:
        out = ((1.0 - t) * pair.unit_a + t * pair.unit_b) * magnitude
    else:
        out = (torch.sin((1.0 - t) * pair.omega) / pair.sin_omega * pair.unit_a
               + torch.sin(t * pair.omega) / pair.sin_omega * pair.unit_b) * magnitude
    return out.reshape(pair.shape)


def frame_times(count: int) -> list[float]:
    """The replaced controller's ``t_i = i / (N + 1)``, ``i = 1..N``."""
    return [i / (count + 1) for i in range(1, count + 1)]


@torch.inference_mode()
def decode_frame(vae, latent: torch.Tensor) -> Image.Image:
    """One frame through ``vae``'s model: a scaled latent ``[1, C, h, w]`` to a PIL image."""
    z = (latent / SCALE).to(vae.device, vae.vae_dtype)
    x = vae.first_stage_model.decode(z)
    pixels = ((x * 0.5 + 0.5) * 255).clamp(0, 255).to(torch.uint8)
    return Image.fromarray(pixels[0].permute(1, 2, 0).cpu().numpy())


@torch.inference_mode()
def encode_keyframe(vae, png: bytes) -> torch.Tensor:
    """A keyframe PNG to a scaled latent on ``vae``'s device (PNG decode + VAE encode)."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    x = torch.from_numpy(np.asarray(image, dtype=np.float32)).sub(127.5).div(127.5)
    x = x.permute(2, 0, 1).unsqueeze(0).to(vae.device, vae.vae_dtype)
    return vae.first_stage_model.encode(x) * SCALE


def png_encode(image: Image.Image) -> bytes:
    """The interpolation worker's save (``optimize=False, compress_level=1``), to memory."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()


def png_decode(data: bytes) -> np.ndarray:
    """The display's re-decode of a frame, forced to load every pixel."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
