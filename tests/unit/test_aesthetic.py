"""The per-session aesthetic loop: admission, decisions, blends, failures that must not stop it."""

import json
import shutil

import pytest
import torch

from core import atomic_files
from core.cache.aesthetic_loop import TUNING_KEYS, AestheticLoop
from core.cache.injection import InjectionDecision
from core.cache.similarity import get_strategy
from core.cache.store import CacheStore

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
    loop.commit(3)
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
    monkeypatch.setenv(atomic_files.FAULT_ENV, "before_replace:cache_index.json:enospc")
    record = loop.after_keyframe(1, latents(1), None, injected=False)
    assert "No space left" in record["cache_error"] and loop.cache_error
    assert not index.exists(), "nothing indexed while the disk is full"
    monkeypatch.delenv(atomic_files.FAULT_ENV)
    record = loop.after_keyframe(2, latents(2), None, injected=False)
    assert record["admitted"] and loop.cache_error is None
    assert len(json.loads(index.read_text())["entries"]) == len(loop.store) == 4, "the retried index holds all"


def test_policy_state_round_trips(tmp_path):
    loop = make(tmp_path)
    loop.after_keyframe(1, latents(1), None, injected=False)
    loop.decide(2, 0)
    loop.commit(2)
    again = make(tmp_path)
    again.load_policy_state(loop.policy_state())
    assert again.policy.state_dict() == loop.policy.state_dict() and again.decisions == loop.decisions


def test_walk_target_goes_to_another_cached_latent(tmp_path):
    loop = make(tmp_path)
    loop.after_keyframe(1, latents(1), None, injected=False)
    first_id = loop.store.ids[0]
    entry_id, latent = loop.walk_target(2, first_id)
    assert entry_id != first_id and torch.equal(latent, loop.store.load_latent(entry_id))


@pytest.mark.parametrize("penalty, recent_picked", [(1e-9, False), (1.0, True)])
def test_the_walk_follows_the_tuned_recent_penalty(tmp_path, penalty, recent_picked):
    """The interpolate walk weighs recently visited entries by the tuned recent_penalty, as injections do."""
    store = CacheStore(tmp_path / "cache", get_strategy("latent_pool"), capacity=10)
    loop = AestheticLoop.create(store, admission_rule="always", tuning={**FORCE, "recent_penalty": penalty})
    loop.after_keyframe(1, latents(1, 3), None, injected=False)
    current, recent, other = loop.store.ids[:3]
    picks = set()
    for keyframe in range(2, 42):
        loop.policy.state.recent_ids.clear()
        loop.policy.state.recent_ids.append(recent)
        picks.add(loop.walk_target(keyframe, current)[0])
    assert (recent in picks) is recent_picked and other in picks


def test_stats_report_cache_and_injections(tmp_path):
    loop = make(tmp_path)
    for k in range(1, 4):
        loop.after_keyframe(k, latents(k), None, injected=False)
        loop.decide(k + 1, 0)
        loop.commit(k + 1)
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
    assert not make(tmp_path).analyses_in_background  # off by default: it did not pay on the GPU
    store = CacheStore(tmp_path / "on", get_strategy("latent_pool"), capacity=10)
    assert AestheticLoop.create(store, tuning={"background_analysis": True}).analyses_in_background  # CPU only
    clip = CacheStore(tmp_path / "clip", get_strategy("clip_vision", encoder=lambda images: images.mean((1, 2))))
    on = {"background_analysis": True}
    assert not AestheticLoop.create(clip, tuning=on).analyses_in_background  # a model ComfyUI manages
    with pytest.raises(ValueError, match="background_analysis must be true or false, got 'no'"):
        AestheticLoop.create(store, tuning={"background_analysis": "no"})


def test_a_forced_injection_does_not_force_the_next_keyframe_again(tmp_path):
    # The detector is reset after an injection before it analyses the injected keyframe (the order
    # of test_collapse's hold-off test), so the forced injection's hold-off covers that keyframe's
    # verdict: the next decision goes through the cooldown instead of forcing a second injection.
    store = CacheStore(tmp_path / "cache", get_strategy("latent_pool"), capacity=10)
    loop = AestheticLoop.create(store, admission_rule="always",
                                tuning={"warmup_keyframes": 0, "injection_probability": 0.0, "injection_cooldown": 5,
                                        "windows": {"cosine": [-1.0, 1.5]}})  # the frozen frames too
    g = torch.Generator().manual_seed(0)
    k = 0
    for _ in range(30):  # unrelated frames, then a frozen picture: the detector forces an injection
        k += 1
        loop.after_keyframe(k, torch.randn(1, 4, 16, 16, generator=g), None, injected=False)
    still = torch.randn(1, 4, 16, 16, generator=g)
    while loop.analysis.collapse.action != "force_cache":
        k += 1
        loop.after_keyframe(k, still, None, injected=False)
        assert k < 100, "the frozen picture never collapsed the detector"
    forced = loop.decide(k + 1, seed_count=0)
    assert forced.action == "cache" and forced.forced
    loop.commit(k + 1)
    loop.after_keyframe(k + 1, still, None, injected=True)
    assert loop.analysis.collapse.action == "scale_injection" and "held off" in loop.analysis.collapse.reason
    after = loop.decide(k + 2, seed_count=0)
    assert (after.action, after.forced) == ("none", False) and "cooldown" in after.reason


def test_the_midpoint_is_compared_with_the_keyframe_admitted_before_it(tmp_path):
    store = CacheStore(tmp_path / "cache", get_strategy("latent_pool"), capacity=10)
    loop = AestheticLoop.create(store, admission_rule="max")
    twins = latents(1, 1).repeat(2, 1, 1, 1)  # a keyframe and a midpoint that is its duplicate
    record = loop.after_keyframe(1, twins, None, injected=False)
    assert [a["source"] for a in record["admitted"]] == ["keyframe"], "the duplicate midpoint stays out"
    pair = torch.cat([latents(2, 1), -latents(2, 1)])  # a diverse pair: both enter
    record = loop.after_keyframe(2, pair, None, injected=False)
    assert [a["source"] for a in record["admitted"]] == ["keyframe", "midpoint"] and len(store) == 3


def test_a_decision_moves_the_policy_state_only_when_its_keyframe_is_committed(tmp_path):
    loop = make(tmp_path)
    for k in (1, 2):  # the second keyframe is compared with a cache that holds the first
        loop.after_keyframe(k, latents(k), None, injected=False)
    committed = loop.policy_state()
    first = loop.decide(3, seed_count=0)
    assert first.action == "cache" and loop.policy_state() == committed, "nothing moves before the commit"
    assert loop.policy_state(3)["injection"]["total_cache_injections"] == 1, "what the commit will persist"
    again = loop.decide(3, seed_count=0)  # keyframe 3 failed and is made again
    assert again == first
    loop.commit(3)
    assert loop.policy.state.last_cache_kf == 3 and [d["keyframe"] for d in loop.decisions] == [3]
    loop.commit(3)  # nothing proposed: nothing changes
    assert loop.policy.state.total_cache_injections == 1
    walked = loop.walk_target(4, first.entry_id)
    assert walked is not None and walked[0] not in loop.policy.state.recent_ids
    loop.commit(4)
    assert loop.policy.state.recent_ids[-1] == walked[0]


def test_the_detector_is_tunable_too(tmp_path):
    store = CacheStore(tmp_path / "cache", get_strategy("dual_metric"), capacity=10)
    loop = AestheticLoop.create(store, tuning={"reset_policy": "partial", "keep_recent": 4,
                                               "collapse_thresholds": {"color": [0.2, 0.4]}})
    assert loop.detector.reset_policy == "partial" and loop.detector.keep_recent == 4
    assert dict(loop.detector.thresholds) == {"color": (0.2, 0.4), "struct": (0.08, 0.15)}  # struct: the default
    assert AestheticLoop.create(store, tuning='{"reset_policy": "full"}').detector.reset_policy == "full"


@pytest.mark.parametrize("tuning, words", [
    ("{", ("tuning is not valid JSON", "line 1 column 2")),
    ("7", ("tuning must be a JSON object", "got a number")),
    ({"injection_prob": 0.3}, ("unknown tuning key 'injection_prob'", "allowed keys:", "admission_mean",
                               "reset_policy", "windows")),
    ({"injection_probability": "x"}, ("injection_probability must be a number from 0 to 1, got 'x'",)),
    ({"injection_probability": True}, ("injection_probability must be a number from 0 to 1, got True",)),
    ({"recent_penalty": 0}, ("recent_penalty must be a number above 0 and at most 1, got 0",)),
    ({"seed_injection_ramp": 0}, ("seed_injection_ramp must be a whole number >= 1, got 0",)),
    ({"prioritise_trigger": "yes"}, ("prioritise_trigger must be true or false, got 'yes'",)),
    ({"windows": [1, 2]}, ("windows must be a JSON object of metric: [low, high]",)),
    ({"windows": {"cosine": 0.5}}, ("windows 'cosine' must be a pair [low, high] of numbers, got 0.5",)),
    ({"windows": {"color": [0.5, 0.9]}}, ("windows: no such metric 'color'", "strategy 'latent_pool'", "'cosine'")),
    ({"admission_mean": {"cosine": "high"}}, ("admission_mean 'cosine' must be a number, got 'high'",)),
    ({"collapse_thresholds": {"cosine": [0.3, 0.2]}},
     ("collapse_thresholds 'cosine' needs 0 <= convergence <= force, got [0.3, 0.2]",)),
    ({"reset_policy": "sometimes"}, ("reset_policy must be one of 'window', 'partial', 'full', 'none'",)),
    ({"keep_recent": -1}, ("keep_recent must be a whole number >= 0, got -1",)),
])
def test_bad_tuning_names_the_key_and_what_it_allows(tmp_path, tuning, words):
    store = CacheStore(tmp_path / "cache", get_strategy("latent_pool"), capacity=10)
    with pytest.raises(ValueError) as caught:
        AestheticLoop.create(store, tuning=tuning)
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


@pytest.mark.parametrize("key", TUNING_KEYS)
@pytest.mark.parametrize("value", ["x", None, [], {}, 1e400])
def test_no_tuning_value_gives_a_bare_type_error(tmp_path, key, value):
    """Every allowed key, given a value of the wrong kind, is refused with a message naming it (never a TypeError
    from deep inside the policy)."""
    store = CacheStore(tmp_path / "cache", get_strategy("dual_metric"), capacity=10)
    try:
        AestheticLoop.create(store, tuning={key: value})
    except ValueError as exc:
        assert key in str(exc)
