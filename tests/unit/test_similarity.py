"""Similarity strategies: the dual metric against its definition and ``imagehash``,
the cosine strategies, the registry and the open_clip loader."""

import json
import sys

import imagehash
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from core.cache import similarity as sim


def smooth_images(count, height=96, width=160, seed=0):
    """Photo-like test images: bicubic upsampling of coarse random colour grids."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 6, 10, generator=g)
    up = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    return up.clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def phash_hex(bits) -> str:
    """The 16-hex-digit string ``str(imagehash.phash(...))`` gives for 64 hash bits."""
    flat = np.asarray(bits, dtype=np.float64).ravel()
    if flat.size != sim.PHASH_BITS:
        raise ValueError(f"expected {sim.PHASH_BITS} hash bits, got {flat.size}")
    value = int("".join("1" if bit > 0.5 else "0" for bit in flat), 2)
    return f"{value:0{sim.PHASH_BITS // 4}x}"


def histogram_by_definition(rgb_uint8):
    """``docs/design.md`` §8 written out: PIL RGB->HSV, np.histogram 32 bins over [0,256),
    sum to 1, [H,S,V]."""
    hsv = np.asarray(Image.fromarray(rgb_uint8, "RGB").convert("HSV"))
    parts = []
    for channel in range(3):
        hist, _ = np.histogram(hsv[..., channel], bins=32, range=(0, 256))
        parts.append(hist / hist.sum())
    return np.concatenate(parts).astype(np.float32)


@pytest.fixture(scope="module")
def dual():
    return sim.get_strategy("dual_metric")


@pytest.fixture(scope="module")
def images():
    imgs = smooth_images(8)
    imgs[4] = 0.5  # uniform grey: every hue/saturation value in one bin
    imgs[5, :, :80] = torch.tensor([1.0, 0.0, 0.0])  # half saturated red
    g = torch.Generator().manual_seed(9)
    imgs[6] = torch.rand(96, 160, 3, generator=g)  # noise: the resize filter matters
    imgs[7] = imgs[7] * 0.5 + 0.5 * (torch.arange(160) % 3 == 0).float()[None, :, None]  # stripes
    return imgs


def test_color_histogram_matches_definition(dual, images):
    emb = dual.embed_images(images)
    rgbs = sim.images_to_uint8(images)
    assert emb.shape == (len(images), sim.DUAL_METRIC_DIMS) and emb.dtype == torch.float32
    for row, rgb in zip(emb, rgbs, strict=True):
        expected = histogram_by_definition(rgb)
        np.testing.assert_allclose(row[: sim.COLOR_DIMS].numpy(), expected, atol=1e-7)
        assert row[:32].sum().item() == pytest.approx(1.0, abs=1e-6)


def test_color_similarity_is_histogram_intersection(dual, images):
    emb = dual.embed_images(images)
    colors = emb[:, : sim.COLOR_DIMS].numpy().astype(np.float64)
    expected = np.minimum(colors[:, None, :], colors[None, :, :]).sum(axis=2)
    got = dual.metric_similarities(emb, emb)["color"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.diag(got), 3.0, atol=1e-5)
    assert got.min() < 2.5  # the images differ, so this is not a trivial all-3 matrix


def test_uint8_conversion_matches_comfyui_saveimage():
    image = torch.tensor([[[[0.0, 0.5, 0.999], [1.0, 1.7, -0.2]]]])
    expected = np.clip(255.0 * image.numpy(), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(sim.images_to_uint8(image), expected)
    assert sim.images_to_uint8(image)[0, 0, 0].tolist() == [0, 127, 254]


def test_phash_matches_imagehash(dual, images):
    emb = dual.embed_images(images)
    rgbs = sim.images_to_uint8(images)
    hashes = [imagehash.phash(Image.fromarray(rgb), hash_size=8) for rgb in rgbs]
    for row, reference in zip(emb, hashes, strict=True):
        bits = row[sim.COLOR_DIMS :].numpy().astype(bool)
        np.testing.assert_array_equal(bits, reference.hash.flatten())
        assert phash_hex(bits) == str(reference)
    struct = dual.metric_similarities(emb, emb)["struct"].numpy()
    for i, j in [(0, 1), (0, 2), (1, 3), (2, 5)]:
        assert struct[i, j] == pytest.approx(1 - (hashes[i] - hashes[j]) / 64)
    assert len({str(h) for h in hashes}) == len(hashes)


def test_phash_hex_roundtrips_through_imagehash():
    bits = np.random.default_rng(3).random(64) > 0.5
    parsed = imagehash.hex_to_hash(phash_hex(bits))
    np.testing.assert_array_equal(parsed.hash.flatten(), bits)
    with pytest.raises(ValueError, match="64 hash bits"):
        phash_hex(bits[:10])


def test_dual_metric_is_vectorised_over_query_and_bank(dual):
    g = torch.Generator().manual_seed(1)
    colors = torch.rand(7, 96, generator=g)
    colors = colors / colors.view(7, 3, 32).sum(-1).repeat_interleave(32, dim=1)
    bits = (torch.rand(7, 64, generator=g) > 0.5).float()
    emb = torch.cat([colors, bits], dim=1)
    sims = dual.metric_similarities(emb[:3], emb)
    assert sims["color"].shape == (3, 7) and sims["struct"].shape == (3, 7)
    for q in range(3):
        for m in range(7):
            hamming = (bits[q] != bits[m]).sum().item()
            assert sims["struct"][q, m].item() == pytest.approx(1 - hamming / 64)
            assert sims["color"][q, m].item() == pytest.approx(
                torch.minimum(colors[q], colors[m]).sum().item(), abs=1e-5
            )
    combined = dual.similarity_matrix(emb[:3], emb)
    torch.testing.assert_close(combined, (sims["color"] / 2.5 + sims["struct"]) / 2)


def test_dual_metric_rejects_wrong_embedding_size(dual):
    with pytest.raises(ValueError, match="160 dims"):
        dual.metric_similarities(torch.zeros(1, 10), torch.zeros(2, 10))
    with pytest.raises(ValueError, match="sizes differ"):
        dual.metric_similarities(torch.zeros(1, 160), torch.zeros(2, 96))


def test_latent_pool_is_4x4_average_pool_per_channel():
    strategy = sim.get_strategy("latent_pool")
    latents = torch.randn(2, 4, 32, 64, generator=torch.Generator().manual_seed(2))
    emb = strategy.embed_latents(latents)
    assert emb.shape == (2, 4 * 4 * 4)
    blocks = latents.reshape(2, 4, 4, 8, 4, 16).mean(dim=(3, 5)).reshape(2, -1)
    torch.testing.assert_close(emb, blocks / blocks.norm(dim=1, keepdim=True))
    cos = strategy.similarity_matrix(emb, emb)
    expected = F.cosine_similarity(blocks[:, None], blocks[None], dim=-1)
    torch.testing.assert_close(cos, expected)
    assert strategy.metric_similarities(emb, emb)["cosine"].shape == (2, 2)
    assert strategy.needs_latent and not strategy.needs_image
    with pytest.raises(ValueError, match=r"\[B,C,h,w\]"):
        strategy.embed_latents(torch.zeros(4, 32, 64))


def test_embed_dispatches_on_what_the_strategy_needs(images):
    dual = sim.get_strategy("dual_metric")
    pool = sim.get_strategy("latent_pool")
    latents = torch.randn(2, 4, 8, 8)
    assert pool.embed(images=images[:2], latents=latents).shape == (2, 64)
    assert dual.embed(images=images[:2], latents=latents).shape == (2, 160)
    with pytest.raises(ValueError, match="needs the keyframe image"):
        dual.embed(latents=latents)
    with pytest.raises(ValueError, match="needs the keyframe latent"):
        pool.embed(images=images)


def test_uint8_frames_embed_as_the_image_they_are_saved_from(images):
    """The loop hands the cache the writer's uint8 frames: dual_metric embeds those bytes directly, the
    same embedding as the IMAGE the frames make; an encoder strategy is given that IMAGE."""
    frames = torch.from_numpy(sim.images_to_uint8(images))
    as_image = frames.to(torch.float32) / 255.0
    dual = sim.get_strategy("dual_metric")
    torch.testing.assert_close(dual.embed(images=frames), dual.embed(images=as_image), rtol=0, atol=0)
    assert sim.images_to_uint8(frames).tobytes() == frames.numpy().tobytes()
    given = []
    encoder = sim.get_strategy("clip_vision", encoder=lambda batch: given.append(batch) or batch.mean(dim=(1, 2)))
    encoder.embed(images=frames)
    assert given[0].dtype == torch.float32 and torch.equal(given[0], as_image)


def test_encoder_strategies_normalise_one_batched_call(images):
    calls = []

    def encoder(batch):
        calls.append(batch.shape[0])
        return batch.mean(dim=(1, 2)) * 3.0 + 1.0

    for name in ("clip_vision", "open_clip"):
        calls.clear()
        strategy = sim.get_strategy(name, encoder=encoder)
        emb = strategy.embed_images(images)
        assert calls == [len(images)]
        torch.testing.assert_close(emb.norm(dim=1), torch.ones(len(images)))
        assert strategy.metrics == ("cosine",) and strategy.name == name
    with pytest.raises(ValueError, match="expected \\[B,D\\]"):
        sim.get_strategy("clip_vision", encoder=lambda b: torch.zeros(3)).embed_images(images)


def test_registry_lists_valid_names():
    assert set(sim.STRATEGY_NAMES) == {"clip_vision", "dual_metric", "latent_pool", "open_clip"}
    with pytest.raises(ValueError) as error:
        sim.get_strategy("clip")
    for name in sim.STRATEGY_NAMES:
        assert name in str(error.value)
    with pytest.raises(TypeError):
        sim.get_strategy("clip_vision")


def test_open_clip_missing_file_names_the_folder(tmp_path):
    folder = tmp_path / "models" / "clip_vision"
    with pytest.raises(FileNotFoundError) as error:
        sim.load_open_clip("ViT-B-32", folder / "missing.safetensors")
    assert str(folder) in str(error.value) and "missing.safetensors" in str(error.value)


def test_open_clip_not_installed_reports_strategy_unavailable(tmp_path, monkeypatch):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"0")
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(sim.StrategyUnavailableError, match="'open_clip' similarity strategy"):
        sim.load_open_clip("ViT-B-32", weights)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_open_clip_loads_local_weights(tmp_path, suffix):
    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file

    config = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "head_width": 16,
            "patch_size": 16,
        },
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
    }
    (tmp_path / "DW-Tiny-Test.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "DW-Tiny-Test.json")
    model = open_clip.create_model("DW-Tiny-Test", pretrained=None).eval()
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    weights = tmp_path / f"tiny{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(weights))
    else:
        torch.save({"state_dict": state}, weights)
    encoder = sim.load_open_clip("DW-Tiny-Test", weights)
    imgs = smooth_images(3, 40, 70)
    pixels = sim.clip_preprocess(
        imgs, 32, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    )
    with torch.no_grad():
        expected = model.encode_image(pixels)
    torch.testing.assert_close(encoder(imgs), expected, atol=1e-5, rtol=1e-5)
    emb = sim.get_strategy("open_clip", encoder=encoder).embed_images(imgs)
    assert emb.shape == (3, 16)


def test_clip_preprocess_crops_the_centre_square():
    image = torch.zeros(1, 20, 40, 3)
    image[:, :, 10:30] = 1.0  # the centre 20x20 square is white, the sides black
    out = sim.clip_preprocess(image, 20, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert out.shape == (1, 3, 20, 20)
    assert out.min().item() == pytest.approx(1.0, abs=1e-4)


def test_uint8_conversion_matches_numpy_on_every_boundary():
    """Each k/255 (and its neighbours one float32 step away), out-of-range and random values give
    the bytes numpy's ``clip(255 * x).astype(uint8)`` gives."""
    steps = torch.arange(256, dtype=torch.float32) / 255
    values = torch.cat([steps, torch.nextafter(steps, torch.tensor(2.0)), torch.nextafter(steps, torch.tensor(-1.0)),
                        torch.tensor([-3.0, -1e-8, 1.0 + 1e-7, 7.5]),
                        torch.rand(3000, generator=torch.Generator().manual_seed(4)) * 1.4 - 0.2])
    image = values[: values.numel() // 3 * 3].reshape(1, 1, -1, 3)
    expected = np.clip(255.0 * image.numpy(), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(sim.images_to_uint8(image), expected)


def test_mean_pairwise_similarity_averages_the_distinct_pairs():
    strategy = sim.get_strategy("latent_pool")
    a, b, c = torch.eye(3)
    bank = torch.stack([a, a, b, (a + c) / 2**0.5])
    # Pairs: (a,a)=1, (a,b)=0 twice, (a,(a+c)/sqrt2)=1/sqrt2 twice, (b,(a+c)/sqrt2)=0.
    expected = (1.0 + 2 * 2**-0.5) / 6
    assert sim.mean_pairwise_similarity(strategy, bank) == pytest.approx(expected)
    assert sim.mean_pairwise_similarity(strategy, bank[:1]) is None
    assert sim.mean_pairwise_similarity(strategy, bank[:0]) is None


def test_mean_pairwise_similarity_samples_large_banks_evenly():
    strategy = sim.get_strategy("latent_pool")
    bank = F.normalize(torch.randn(1000, 8, generator=torch.Generator().manual_seed(3)), dim=1)
    rows = torch.linspace(0, 999, 50).round().long()
    assert sim.mean_pairwise_similarity(strategy, bank, sample=50) == pytest.approx(
        sim.mean_pairwise_similarity(strategy, bank[rows], sample=50))
    assert sim.mean_pairwise_similarity(strategy, bank, sample=2000) == pytest.approx(
        ((bank.sum(0) @ bank.sum(0)).item() - 1000) / (1000 * 999), abs=1e-6)
