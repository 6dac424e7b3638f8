import math

import pytest
import torch

from core.loop import interpolation as ip


def slerp_by_formula(a, b, t):
    """``docs/design.md`` §4 written out for one t (the angle from the ε-normalised vectors, as the
    replaced design had it)."""
    va, vb = a.flatten().double(), b.flatten().double()
    na, nb = va.norm(), vb.norm()
    ua, ub = va / (na + 1e-6), vb / (nb + 1e-6)
    omega = torch.acos(torch.clamp(ua @ ub, -1, 1))
    r = (math.sin((1 - t) * omega) / math.sin(omega)) * ua + (math.sin(t * omega) / math.sin(omega)) * ub
    return (r * ((1 - t) * na + t * nb)).reshape(a.shape)


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 4, 8, 16, generator=g), torch.randn(1, 4, 8, 16, generator=g) * 2


def test_matches_formula_for_every_t(pair):
    a, b = pair
    t = ip.frame_times(10)
    out = ip.slerp_batch(a, b, t)
    assert out.shape == (10, 1, 4, 8, 16)
    for i, ti in enumerate(t.tolist()):
        assert torch.allclose(out[i].double(), slerp_by_formula(a, b, ti), atol=1e-5)


def test_frame_times_exclude_endpoints():
    assert torch.allclose(ip.frame_times(10), torch.arange(1, 11, dtype=torch.float64) / 11)
    eased = ip.frame_times(9, "ease_in_out")
    assert eased[0] > 0 and eased[-1] < 1 and torch.all(eased[1:] > eased[:-1])
    assert eased[0] < ip.frame_times(9)[0], "ease-in-out starts slower than linear"
    assert ip.frame_times(0).numel() == 0
    with pytest.raises(ValueError):
        ip.frame_times(-1)
    with pytest.raises(ValueError, match="unknown easing"):
        ip.frame_times(3, "bounce")


def test_endpoints_and_norms(pair):
    a, b = pair
    out = ip.slerp_batch(a, b, torch.tensor([0.0, 1.0, 0.25]))
    assert torch.allclose(out[0], a, atol=1e-5) and torch.allclose(out[1], b, atol=1e-5)
    want = 0.75 * a.norm() + 0.25 * b.norm()
    assert torch.isclose(out[2].norm(), want, rtol=1e-5), "magnitude is interpolated linearly"


def test_near_parallel_falls_back_to_lerp():
    a = torch.randn(1, 4, 4, 4)
    b = a * 3 + 1e-9
    out = ip.slerp_batch(a, b, torch.tensor([0.5]))
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0], 0.5 * a + 0.5 * b, atol=1e-5)


def test_antiparallel_falls_back_to_lerp():
    a = torch.randn(1, 4, 4, 4)
    b = -a
    out = ip.slerp_batch(a, b, torch.tensor([0.25, 0.5]))
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0], 0.75 * a + 0.25 * b, atol=1e-6)
    assert torch.allclose(out[1], torch.zeros_like(a), atol=1e-6)


def test_interpolate_methods_and_shapes(pair):
    a, b = pair
    lerp = ip.interpolate(a[0], b[0], 3, "lerp")
    t = ip.frame_times(3).float().view(-1, 1, 1, 1)
    assert torch.allclose(lerp, (1 - t) * a[0] + t * b[0], atol=1e-6)
    assert ip.interpolate(a[0], b[0], 0).shape == (0, 4, 8, 16)
    assert ip.interpolate(a[0].half(), b[0].half(), 2).dtype == torch.float16
    with pytest.raises(ValueError, match="unknown method"):
        ip.interpolate(a, b, 2, "cubic")
    with pytest.raises(ValueError, match="differ in shape"):
        ip.slerp_batch(a, b[..., :8], torch.tensor([0.5]))
