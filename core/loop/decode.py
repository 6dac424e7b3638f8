"""The pack's VAE decode: latents straight to uint8 frames on the VAE's device.

ComfyUI's VAE Decode node copies every decoded batch to its intermediate device (the CPU, a pageable
copy), makes it float32 there and maps it to 0..1 there; the frames then still have to become uint8.
Here the VAE's model decodes each chunk on its own device in its own dtype and the chunk becomes
uint8 ``[B, H, W, C]`` frames there too, in place on the decoder's output (one float32 temporary per
chunk where the VAE runs in half precision), so what leaves the device is one uint8 copy that the
frame writer takes (``core.loop.frames.FrameBatch``).

For the SD-family output mapping (``clamp((x + 1) / 2, 0, 1)``, checked on a probe) the frames are
``round(clamp((x + 1) * 127.5, 0, 255))``: bit for bit what ComfyUI's node followed by
``core.loop.frames.to_uint8`` gives on the same device, since halving is exact in floating point. Any
other mapping runs the VAE's own ``process_output`` first. On a ComfyUI out-of-memory error, or for a
VAE without the parts used here, ComfyUI's own decode runs instead (tiled when memory is short) and
its IMAGE is converted.

No ComfyUI import: the adapter hands in the VAE and ComfyUI's model management module
(``vae_decoder``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from .frames import to_uint8

log = logging.getLogger("dream_window")

_PROBE = torch.tensor([-3.0, -1.0, -0.6, -0.25, 0.0, 0.3, 0.5, 1.0, 3.0])


def signed_output(process_output: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """Whether ``process_output`` is the SD-family mapping of decoder pixels in -1..1 to 0..1."""
    try:
        return torch.equal(process_output(_PROBE.clone()), torch.clamp((_PROBE + 1.0) / 2.0, min=0.0, max=1.0))
    except Exception:  # a mapping for another kind of model (audio, video) may refuse the probe
        return False


def pixels_to_uint8(pixels: torch.Tensor, out: torch.Tensor, *, signed: bool) -> torch.Tensor:
    """Decoder pixels ``[B, C, H, W]`` (float32, changed in place) into ``out``, uint8 ``[B, H, W, C]``:
    ``signed`` pixels are in -1..1, else in 0..1; rounded half to even, clamped."""
    if signed:
        pixels.add_(1.0).mul_(127.5)
    else:
        pixels.mul_(255.0)
    pixels.clamp_(0.0, 255.0).round_()
    return out.copy_(pixels.permute(0, 2, 3, 1))


@dataclass(frozen=True)
class VaeDecoder:
    """What the pack uses of one ComfyUI VAE (made by ``vae_decoder``)."""

    images: Callable[[torch.Tensor], torch.Tensor]
    """ComfyUI's own decode: latents to an IMAGE batch ``[B, H, W, C]`` on its intermediate device."""
    model: Callable[[torch.Tensor], torch.Tensor] | None = None
    """The VAE model's decode on its device (None: only ``images`` is used)."""
    load: Callable[[torch.Size], int] | None = None
    """Loads the model for a batch of that shape; returns how many latents to decode at once."""
    dtype: torch.dtype = torch.float32
    device: torch.device | str = "cpu"
    process_output: Callable[[torch.Tensor], torch.Tensor] | None = None
    out_of_memory: tuple[type[BaseException], ...] = ()
    signed: bool = False

    def frames(self, latents: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``latents`` ``[B, C, h, w]`` decoded to uint8 frames ``[B, H, W, 3]`` on the VAE's device
        (into ``out`` when given)."""
        def finish(pixels: torch.Tensor, target: torch.Tensor) -> None:
            if self.signed:
                pixels_to_uint8(pixels, target, signed=True)
            else:
                pixels_to_uint8(self.process_output(pixels), target, signed=False)

        decoded = self._decode(latents, torch.uint8, out, finish)
        if decoded is not None:
            return decoded
        images = to_uint8(self.images(latents))
        return images if out is None else out.copy_(images)

    def pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """``latents`` decoded to float32 pixels ``[B, 3, H, W]`` in 0..1 on the VAE's device."""
        def finish(pixels: torch.Tensor, target: torch.Tensor) -> None:
            target.copy_(self.process_output(pixels))

        decoded = self._decode(latents, torch.float32, None, finish, nhwc=False)
        return decoded if decoded is not None else self.images(latents).movedim(-1, 1)

    def _decode(self, latents: torch.Tensor, dtype: torch.dtype, out: torch.Tensor | None,
                finish: Callable[[torch.Tensor, torch.Tensor], None], nhwc: bool = True
                ) -> torch.Tensor | None:
        """Decode chunk by chunk on the device, ``finish`` writing each chunk's pixels into its part of
        the result (``[B, H, W, C]`` when ``nhwc``, else ``[B, C, H, W]``). None when this VAE
        is decoded by ComfyUI instead (no model parts, or out of memory)."""
        if self.model is None:
            return None
        try:
            with torch.inference_mode():  # as ComfyUI's executor runs nodes: no autograd record of the model
                return self._chunks(latents, dtype, out, finish, nhwc)
        except self.out_of_memory:
            log.warning("dream_window: out of memory decoding %d frames on %s; ComfyUI's tiled decode takes over",
                        latents.shape[0], self.device)
            return None

    def _chunks(self, latents: torch.Tensor, dtype: torch.dtype, out: torch.Tensor | None,
                finish: Callable[[torch.Tensor, torch.Tensor], None], nhwc: bool) -> torch.Tensor:
        step = self.load(latents.shape)
        result = out
        for start in range(0, latents.shape[0], step):
            pixels = self.model(latents[start:start + step].to(self.dtype).to(self.device)).float()
            if result is None:
                batch, channels, height, width = latents.shape[0], *pixels.shape[1:]
                shape = (batch, height, width, channels) if nhwc else (batch, channels, height, width)
                result = torch.empty(shape, dtype=dtype, device=pixels.device)
            finish(pixels, result[start:start + step])
        return result


def vae_decoder(vae, model_management) -> VaeDecoder:
    """The ``VaeDecoder`` of a ComfyUI VAE, given ComfyUI's ``comfy.model_management``: the model path
    for an image VAE with ComfyUI's usual parts (``first_stage_model``, ``patcher``, ``memory_used_decode``,
    ``vae_dtype``, ``device``, ``process_output``; two-dimensional latents), else ComfyUI's decode alone."""
    parts = ("first_stage_model", "patcher", "memory_used_decode", "vae_dtype", "device", "process_output")
    usable = (all(hasattr(vae, part) for part in parts) and getattr(vae, "latent_dim", 2) == 2
              and getattr(vae, "extra_1d_channel", None) is None)
    if not usable:
        return VaeDecoder(images=vae.decode)

    def load(shape: torch.Size) -> int:
        if hasattr(vae, "throw_exception_if_invalid"):
            vae.throw_exception_if_invalid()
        memory = vae.memory_used_decode(shape, vae.vae_dtype)
        model_management.load_models_gpu([vae.patcher], memory_required=memory,
                                         force_full_load=getattr(vae, "disable_offload", False))
        return max(1, int(model_management.get_free_memory(vae.device) / memory))

    return VaeDecoder(images=vae.decode, model=vae.first_stage_model.decode, load=load, dtype=vae.vae_dtype,
                      device=vae.device, process_output=vae.process_output,
                      out_of_memory=(model_management.OOM_EXCEPTION,), signed=signed_output(vae.process_output))
