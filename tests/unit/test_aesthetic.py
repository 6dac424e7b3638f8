"""The per-session aesthetic loop: admission, decisions, blends, failures that must not stop it."""

import json
import shutil

import pytest
import torch

from core import atomic
from core.aesthetic import AestheticLoop
from core.cache_store import CacheStore
from core.injection import InjectionDecision
from core.similarity import get_strategy

FORCE = {"warmup_keyframes": 0, "injection_probability": 1.0, "injection_cooldown": 0,
         "windows": {"cosine": [-1.0, 1.0]}}


def make(tmp_path, **kw):
    store = CacheStore(tmp_path / "cache", get_strategy("latent_pool"), capacity=10)
    return AestheticLoop.create(store, admission_rule="always", tuning=FORCE, **kw)


def latents(seed, n=2):
    return torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_admits_keyframe_and_midpoint_then_injects_a_blend(tmp_path):
    loop = make(tmp_path)
    record = loop.after_keyframe(1, latents(1), None, injected=False)
    assert [a["source"] for a in record["admitted"]] == ["keyframe", "midpoint"]
    loop.after_keyframe(2, latents(2), None, injected=False)
    decision = loop.decide(3, seed_count=0)
    assert decision.action == "cache" and decision.entry_id in loop.store
    current = latents(3, 1)
    blend = loop.injected_latent(decision, current)
    assert torch.allclose(blend, 0.75 * loop.store.load_latent(decision.entry_id) + 0.25 * current)
    assert loop.decisions[-1]["entry_id"] == decision.entry_id


def test_decisions_replay_with_the_same_rng_seed(tmp_path):
    runs = []
    for name in ("a", "b"):
        store = CacheStore(tmp_path / name, get_strategy("latent_pool"), capacity=10)
        loop = AestheticLoop.create(store, admission_rule="always", tuning=FORCE, rng_seed=5)
        for k in range(1, 6):
            loop.after_keyframe(k, latents(k), None, injected=False)
        runs.append([loop.decide(6, 0).to_dict()["probabilities"], loop.decide(7, 0).action])
    assert runs[0] == runs[1]


def test_empty_cache_never_injects(tmp_path):
    loop = make(tmp_path)
    assert loop.decide(1, seed_count=0).action == "none"


def test_nan_embeddings_skip_the_analysis_without_raising(tmp_path):
    loop = make(tmp_path)
    record = loop.after_keyframe(1, torch.full((1, 4, 8, 8), float("nan")), None, injected=False)
    assert "NaN" in record["embedding_error"] and len(loop.store) == 0


def test_unwritable_cache_folder_keeps_the_loop_going(tmp_path):
    loop = make(tmp_path)
    tensors = tmp_path / "cache" / "tensors"
    shutil.rmtree(tensors)
    tensors.write_text("a file where the folder should be")
    record = loop.after_keyframe(1, latents(1), None, injected=False)
    assert record["cache_error"] and loop.cache_error
    assert loop.stats().cache_size == 0
    tensors.unlink()
    tensors.mkdir()
    assert loop.after_keyframe(2, latents(2), None, injected=False)["admitted"]
    assert loop.cache_error is None


def test_a_full_disk_on_the_index_alone_keeps_the_loop_going(tmp_path, monkeypatch):
    loop = make(tmp_path)
    index = tmp_path / "cache" / "metadata" / "cache_index.json"
    monkeypatch.setenv(atomic.FAULT_ENV, "before_replace:cache_index.json:enospc")
    record = loop.after_keyframe(1, latents(1), None, injected=False)
    assert "No space left" in record["cache_error"] and loop.cache_error
    assert not index.exists(), "nothing indexed while the disk is full"
    monkeypatch.delenv(atomic.FAULT_ENV)
    record = loop.after_keyframe(2, latents(2), None, injected=False)
    assert record["admitted"] and loop.cache_error is None
    assert len(json.loads(index.read_text())["entries"]) == len(loop.store) == 4, "the retried index holds all"


def test_policy_state_round_trips(tmp_path):
    loop = make(tmp_path)
    loop.after_keyframe(1, latents(1), None, injected=False)
    loop.decide(2, 0)
    again = make(tmp_path)
    again.load_policy_state(loop.policy_state())
    assert again.policy.state_dict() == loop.policy.state_dict() and again.decisions == loop.decisions


def test_walk_target_goes_to_another_cached_latent(tmp_path):
    loop = make(tmp_path)
    loop.after_keyframe(1, latents(1), None, injected=False)
    first_id = loop.store.ids[0]
    entry_id, latent = loop.walk_target(2, first_id)
    assert entry_id != first_id and torch.equal(latent, loop.store.load_latent(entry_id))


def test_stats_report_cache_and_injections(tmp_path):
    loop = make(tmp_path)
    for k in range(1, 4):
        loop.after_keyframe(k, latents(k), None, injected=False)
        loop.decide(k + 1, 0)
    stats = loop.stats()
    # The first decision sees an empty cache (a keyframe is compared with the cache as it was before it).
    assert stats.cache_size == 6 and stats.cache_injections == 2
    bank = loop.store.snapshot()[1]
    mean = (bank @ bank.T).fill_diagonal_(0).sum().item() / (6 * 5)  # latent_pool: unit vectors, cosine
    assert stats.cache_avg_similarity == pytest.approx(mean, abs=1e-6)
    assert stats.cache_diversity_score == pytest.approx(max(0.0, 1.0 - mean), abs=1e-6)
    with pytest.raises(ValueError):
        loop.injected_latent(InjectionDecision(99, "none", "no injection"), latents(1, 1))


def test_background_analysis_follows_the_strategy_and_the_tuning(tmp_path):
    assert make(tmp_path).analyses_in_background  # latent_pool: CPU only
    store = CacheStore(tmp_path / "off", get_strategy("latent_pool"), capacity=10)
    assert not AestheticLoop.create(store, tuning={"background_analysis": False}).analyses_in_background
    clip = CacheStore(tmp_path / "clip", get_strategy("clip_vision", encoder=lambda images: images.mean((1, 2))))
    assert not AestheticLoop.create(clip).analyses_in_background  # a model ComfyUI manages
    with pytest.raises(ValueError, match="background_analysis must be true or false, got 'no'"):
        AestheticLoop.create(store, tuning={"background_analysis": "no"})
