"""The pack's decode to uint8 frames (core.loop.decode): ComfyUI's mapping, chunks, fallbacks."""

from __future__ import annotations

import pytest
import torch

from core.loop.decode import VaeDecoder, pixels_to_uint8, signed_output, vae_decoder
from core.loop.frames import to_uint8


def comfy_output(pixels: torch.Tensor) -> torch.Tensor:
    """ComfyUI's SD-family ``process_output``."""
    return torch.clamp((pixels + 1.0) / 2.0, min=0.0, max=1.0)


def comfy_frames(pixels: torch.Tensor) -> torch.Tensor:
    """What ComfyUI's VAE Decode then the frame writer's conversion make of decoder pixels."""
    return to_uint8(comfy_output(pixels).movedim(1, -1))


def decoder_pixels(shape=(5, 3, 6, 7), seed: int = 0) -> torch.Tensor:
    """Decoder-like pixels: mostly in -1..1, some beyond, and values that land on .5 after scaling."""
    pixels = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.7
    pixels.view(-1)[:8] = torch.tensor([-1.0, 1.0, 0.0, -3.0, 3.0, 1 / 255 - 1, 3 / 255 - 1, -0.5])
    return pixels


def test_the_signed_mapping_is_bit_for_bit_comfyuis_decode_then_to_uint8():
    pixels = decoder_pixels()
    out = torch.empty((5, 6, 7, 3), dtype=torch.uint8)
    pixels_to_uint8(pixels.clone(), out, signed=True)
    assert torch.equal(out, comfy_frames(pixels))
    unsigned = torch.empty_like(out)
    pixels_to_uint8(comfy_output(pixels), unsigned, signed=False)
    assert torch.equal(unsigned, out)


def test_the_sd_mapping_is_recognised_and_others_are_not():
    assert signed_output(comfy_output)
    assert not signed_output(lambda pixels: pixels)
    assert not signed_output(lambda pixels: pixels.reshape(-1, 1, 1)[0])


class FakeVae:
    """The parts of ``comfy.sd.VAE`` the decoder reads, around a fixed "model" (x → x[:, :3] * 0.9)."""

    latent_dim = 2
    vae_dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, process_output=comfy_output) -> None:
        self.process_output = process_output
        self.first_stage_model = self
        self.patcher = object()
        self.calls: list[int] = []
        self.loaded: list[tuple] = []

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Both the model's decode (latents → pixels) and, called with a batch, ComfyUI's VAE.decode."""
        self.calls.append(latents.shape[0])
        return latents[:, :3] * 0.9

    @staticmethod
    def memory_used_decode(shape, dtype) -> float:
        return 1.0


class FakeManagement:
    OOM_EXCEPTION = torch.cuda.OutOfMemoryError

    def __init__(self, free: float) -> None:
        self.free = free
        self.loads: list = []

    def load_models_gpu(self, models, memory_required, force_full_load):
        self.loads.append((models, memory_required, force_full_load))

    def get_free_memory(self, device) -> float:
        return self.free


@pytest.mark.parametrize("free, chunks", [(100.0, [5]), (2.0, [2, 2, 1])])
def test_frames_are_decoded_in_the_chunks_free_memory_allows(free, chunks):
    vae, management = FakeVae(), FakeManagement(free)
    decoder = vae_decoder(vae, management)
    latents = decoder_pixels((5, 4, 6, 7))
    frames = decoder.frames(latents)
    assert vae.calls == chunks and len(management.loads) == 1
    assert frames.dtype == torch.uint8 and torch.equal(frames, comfy_frames(latents[:, :3] * 0.9))


def test_another_output_mapping_runs_the_vaes_own():
    vae = FakeVae(process_output=lambda pixels: pixels.abs().clamp(0, 1))
    decoder = vae_decoder(vae, FakeManagement(100.0))
    assert not decoder.signed
    latents = decoder_pixels((2, 4, 3, 3))
    assert torch.equal(decoder.frames(latents), to_uint8((latents[:, :3] * 0.9).abs().clamp(0, 1).movedim(1, -1)))


def test_frames_fill_the_given_buffer_and_pixels_stay_float():
    decoder = vae_decoder(FakeVae(), FakeManagement(100.0))
    latents = decoder_pixels((3, 4, 2, 2))
    out = torch.zeros((4, 2, 2, 3), dtype=torch.uint8)
    decoder.frames(latents, out=out[1:])
    assert torch.equal(out[1:], comfy_frames(latents[:, :3] * 0.9)) and not out[0].any()
    pixels = decoder.pixels(latents)
    assert pixels.dtype == torch.float32 and torch.equal(pixels, comfy_output(latents[:, :3] * 0.9))


def test_out_of_memory_falls_back_to_comfyuis_decode():
    def model(latents):
        raise torch.cuda.OutOfMemoryError("no room")

    latents = decoder_pixels((2, 4, 2, 2))
    comfy = comfy_output(latents[:, :3]).movedim(1, -1)
    decoder = VaeDecoder(images=lambda z: comfy, model=model, load=lambda shape: 1, process_output=comfy_output,
                         out_of_memory=(torch.cuda.OutOfMemoryError,), signed=True)
    assert torch.equal(decoder.frames(latents), to_uint8(comfy))
    assert torch.equal(decoder.pixels(latents), comfy.movedim(-1, 1))


def test_a_vae_without_the_usual_parts_is_decoded_by_comfyui():
    class Other:
        latent_dim = 3

        @staticmethod
        def decode(latents):
            return torch.full((latents.shape[0], 2, 2, 3), 0.5)

    decoder = vae_decoder(Other(), FakeManagement(100.0))
    assert decoder.model is None
    assert torch.equal(decoder.frames(torch.zeros(2, 4, 1, 1)), torch.full((2, 2, 2, 3), 128, dtype=torch.uint8))
