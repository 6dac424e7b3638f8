"""The framerate modes' size rule and resampling (``core.loop.resolution``)."""

import pytest
import torch

from core.loop import resolution as rs


@pytest.mark.parametrize("divisor, pixels", [("1", (256, 512)), ("1.5", (168, 344)), ("2", (128, 256)),
                                             ("3", (88, 168))])
def test_size_rule_rounds_to_the_latent_grid(divisor, pixels):
    cells = rs.small_size(32, 64, rs.factor(divisor))  # a 512x256 frame at 8 pixels per cell
    assert tuple(8 * c for c in cells) == pixels


def test_size_rule_keeps_one_cell_and_names_the_divisors():
    assert rs.small_size(1, 2, 3.0) == (1, 1)
    with pytest.raises(ValueError, match="1, 1.5, 2, 3"):
        rs.factor("4")


def test_area_downscale_averages_the_cells_each_small_cell_covers():
    latents = torch.arange(2 * 4 * 4 * 8, dtype=torch.float32).reshape(2, 4, 4, 8)
    small = rs.downscale(latents, (2, 4), "area")
    assert torch.allclose(small, latents.reshape(2, 4, 2, 2, 4, 2).mean(dim=(3, 5)))
    for method in rs.DOWNSAMPLE_METHODS:
        assert rs.downscale(latents, (3, 5), method).shape == (2, 4, 3, 5)


def test_upscale_enlarges_the_decoded_pixels_within_range():
    pixels = torch.zeros(3, 3, 4, 6)
    pixels[..., 3:] = 1.0  # a hard edge: bicubic overshoots it
    nearest = rs.upscale(pixels, (8, 12), "nearest-exact")
    assert torch.equal(nearest, pixels.repeat_interleave(2, 2).repeat_interleave(2, 3))
    bicubic = rs.upscale(pixels, (8, 12), "bicubic")
    assert bicubic.shape == (3, 3, 8, 12) and bicubic.min() >= 0.0 and bicubic.max() <= 1.0
    assert 0.0 < bicubic[0, 0, 0, 5] < 1.0, "a smooth method blends across the edge"


def test_unknown_methods_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="area, bilinear"):
        rs.downscale(torch.zeros(1, 4, 4, 4), (2, 2), "lanczos")
    with pytest.raises(ValueError, match="bilinear, bicubic"):
        rs.upscale(torch.zeros(1, 3, 4, 4), (8, 8), "area")
