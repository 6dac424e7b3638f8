"""Injection policy (``docs/design.md`` §12): decision order, measured probabilities (checked within
4 sigma), the candidate window and weights, replay, state round trip, latent blends
and the interpolate-mode walk."""

import json
import math

import numpy as np
import pytest
import torch

from core.cache import collapse, injection, similarity

DRAWS = 20_000  # per measured probability; 4 sigma of p = 0.15 is about 0.010


@pytest.fixture
def config():
    return injection.InjectionConfig.for_strategy(similarity.get_strategy("dual_metric"))


def bank(size):
    """``size`` cache entries all inside both candidate windows."""
    ids = [f"e{i}" for i in range(size)]
    sims = {"color": np.full(size, 1.6), "struct": np.full(size, 0.8)}
    return ids, sims


def verdict(action, scaled=0.0, triggered=()):
    status = {"none": "ok", "scale_injection": "converging", "force_cache": "collapsed"}[action]
    return collapse.CollapseResult(status, action, scaled, {}, {}, tuple(triggered), "test")


def measure(config, state, draws=DRAWS, seed=0, **decide_kw):
    """Action frequencies of ``decide`` from the same starting state, over ``draws`` draws."""
    policy = injection.InjectionPolicy(config)
    rng = np.random.default_rng(seed)
    counts = {"none": 0, "cache": 0, "seed": 0}
    for _ in range(draws):
        policy.load_state_dict(state)
        counts[policy.decide(100, rng, **decide_kw).action] += 1
    return {action: n / draws for action, n in counts.items()}


def assert_within_4_sigma(measured, p, draws=DRAWS):
    sigma = math.sqrt(p * (1 - p) / draws)
    assert abs(measured - p) <= 4 * sigma, (
        f"measured {measured:.4f}, expected {p:.4f} +- {4 * sigma:.4f}"
    )


def fresh_state(config, **changes):
    state = injection.InjectionPolicy(config).state_dict()
    state.update(changes)
    return state


def test_defaults_are_the_documented_values(config):
    assert config.warmup_keyframes == 10 and config.injection_probability == 0.15
    assert config.injection_cooldown == 2 and config.seed_injection_cooldown == 2
    assert (
        config.force_seed_injection_frequency == 0.30
        and config.force_seed_collapse_frequency == 0.3
    )
    assert (config.seed_injection_floor, config.seed_injection_max, config.seed_injection_ramp) == (
        0.02,
        0.15,
        50,
    )
    assert (config.seed_injection_boost_threshold, config.seed_injection_boost_probability) == (
        10,
        0.20,
    )
    assert config.windows == {"color": (1.18, 2.05), "struct": (0.68, 0.92)}
    assert (config.blend_weight, config.seed_blend_weight) == (0.75, 0.85)


def test_warmup_never_injects(config):
    policy = injection.InjectionPolicy(config)
    ids, sims = bank(20)
    rng = np.random.default_rng(0)
    for k in range(1, 11):
        d = policy.decide(
            k, rng, cache_ids=ids, similarities=sims, seed_count=5, collapse=verdict("force_cache")
        )
        assert d.action == "none" and "warm-up" in d.reason
    assert list(policy.state.recent_cache_decisions) == [False] * 10
    assert policy.in_warmup(10) and not policy.in_warmup(11)


def test_baseline_probabilities(config):
    ids, sims = bank(20)
    freq = measure(config, fresh_state(config), cache_ids=ids, similarities=sims, seed_count=3)
    assert_within_4_sigma(freq["seed"], 0.02)
    assert_within_4_sigma(freq["cache"], (1 - 0.02) * 0.15)


def test_seed_boost_while_the_cache_is_small(config):
    ids, sims = bank(5)
    freq = measure(config, fresh_state(config), cache_ids=ids, similarities=sims, seed_count=3)
    assert_within_4_sigma(freq["seed"], 0.20)
    assert_within_4_sigma(freq["cache"], 0.80 * 0.15)


@pytest.mark.parametrize(("injections", "p_seed"), [(25, 0.02 + 0.13 * 0.5), (80, 0.15)])
def test_seed_ramp(config, injections, p_seed):
    ids, sims = bank(20)
    state = fresh_state(config, total_cache_injections=injections)
    freq = measure(config, state, cache_ids=ids, similarities=sims, seed_count=3)
    assert_within_4_sigma(freq["seed"], p_seed)


def test_collapse_scaled_cache_rate(config):
    ids, sims = bank(20)
    freq = measure(
        config,
        fresh_state(config),
        cache_ids=ids,
        similarities=sims,
        collapse=verdict("scale_injection", 0.5),
    )
    assert_within_4_sigma(freq["cache"], 0.15 + 0.85 * 0.5)
    assert freq["seed"] == 0.0  # no seed images: seed injection disabled


def test_cooldowns(config):
    policy = injection.InjectionPolicy(config)
    ids, sims = bank(20)
    rng = np.random.default_rng(0)
    policy.load_state_dict(fresh_state(config, current_rate=1.0))
    assert (
        policy.decide(
            20, rng, cache_ids=ids, similarities=sims, collapse=verdict("force_cache")
        ).action
        == "cache"
    )
    for k in (21, 22):
        d = policy.decide(
            k, rng, cache_ids=ids, similarities=sims, collapse=verdict("scale_injection", 1.0)
        )
        assert d.action == "none" and "cooldown" in d.reason
    d = policy.decide(
        23, rng, cache_ids=ids, similarities=sims, collapse=verdict("scale_injection", 1.0)
    )
    assert d.action == "cache" and d.probabilities["cache_rate"] == 1.0
    # force ignores the cooldown
    d = policy.decide(24, rng, cache_ids=ids, similarities=sims, collapse=verdict("force_cache"))
    assert d.action == "cache" and d.forced
    # a seed injection blocks seeds for the next 2 keyframes
    policy.load_state_dict(fresh_state(config, last_seed_kf=30, recent_cache_decisions=[True] * 10))
    assert (
        policy.decide(32, rng, cache_ids=[], similarities=bank(0)[1], seed_count=3).action == "none"
    )
    assert (
        policy.decide(33, rng, cache_ids=[], similarities=bank(0)[1], seed_count=3).action == "seed"
    )


def test_forced_seed_by_cache_injection_share(config):
    ids, sims = bank(20)
    state = fresh_state(config, recent_cache_decisions=[True] * 4 + [False] * 6)
    freq = measure(config, state, draws=200, cache_ids=ids, similarities=sims, seed_count=2)
    assert freq["seed"] == 1.0
    state["recent_cache_decisions"] = [True] * 3 + [False] * 7  # 0.30 is not > 0.30
    assert (
        measure(config, state, draws=200, cache_ids=ids, similarities=sims, seed_count=2)["seed"]
        < 0.2
    )


def test_forced_seed_by_collapse_share(config):
    ids, sims = bank(20)
    state = fresh_state(config, collapse_history=[True] * 6 + [False] * 13)
    policy = injection.InjectionPolicy(config)
    policy.load_state_dict(state)
    d = policy.decide(
        50,
        np.random.default_rng(0),
        cache_ids=ids,
        similarities=sims,
        seed_count=4,
        collapse=verdict("scale_injection", 0.2),
    )
    assert d.action == "seed" and d.forced and "collapse share" in d.reason
    assert 0 <= d.seed_index < 4
    assert d.probabilities["collapse_share"] == pytest.approx(7 / 20)


def test_empty_cache_never_injects_and_never_raises(config):
    policy = injection.InjectionPolicy(config)
    rng = np.random.default_rng(0)
    for k in range(11, 40):
        d = policy.decide(
            k, rng, cache_ids=[], similarities=bank(0)[1], collapse=verdict("force_cache")
        )
        assert d.action == "none" and d.reason == "cache is empty"


def test_no_candidate_in_window_means_no_injection(config):
    policy = injection.InjectionPolicy(config)
    policy.load_state_dict(fresh_state(config, current_rate=1.0))
    sims = {"color": np.array([2.9, 0.5]), "struct": np.array([0.99, 0.1])}
    d = policy.decide(20, np.random.default_rng(0), cache_ids=["a", "b"], similarities=sims)
    assert d.action == "none" and "candidate window" in d.reason
    assert policy.state.total_cache_injections == 0


def test_candidate_window_is_open_and_uses_or():
    windows = {"color": (1.18, 2.05), "struct": (0.68, 0.92)}
    sims = {
        "color": np.array([1.18, 2.05, 1.5, 2.5, 1.0]),
        "struct": np.array([0.5, 0.95, 0.99, 0.8, 0.68]),
    }
    in_window, scores = injection.dissimilarity_scores(sims, windows)
    assert in_window.tolist() == [False, False, True, True, False]
    # unclipped: entry 3 (colour far above the window) keeps its struct score,
    # entry 0's struct dissimilarity exceeds 1
    dc = 1 - (sims["color"] - 1.18) / 0.87
    ds = 1 - (sims["struct"] - 0.68) / 0.24
    np.testing.assert_allclose(scores, np.maximum(dc, ds), atol=1e-12)
    assert scores[0] > 1.0
    _, color_only = injection.dissimilarity_scores(sims, windows, priority=("color",))
    np.testing.assert_allclose(color_only, dc, atol=1e-12)


def test_weighted_draw_frequencies():
    windows = {"color": (1.18, 2.05), "struct": (0.68, 0.92)}
    ids = ["a", "b", "c", "d", "out"]
    sims = {
        "color": np.array([1.3, 1.6, 1.9, 2.0, 2.9]),
        "struct": np.array([0.7, 0.8, 0.9, 0.91, 0.99]),
    }
    _, scores = injection.dissimilarity_scores(sims, windows)
    weights = np.exp(2 * scores[:4]) * np.array([1, 0.1, 1, 1])  # "b" was injected recently
    expected = weights / weights.sum()
    rng = np.random.default_rng(7)
    counts = dict.fromkeys(ids, 0)
    for _ in range(DRAWS):
        choice = injection.select_candidate(ids, sims, windows, rng, recent_ids=["b", "zz"])
        counts[choice.entry_id] += 1
    assert counts["out"] == 0
    for i, entry in enumerate(ids[:4]):
        assert_within_4_sigma(counts[entry] / DRAWS, expected[i])
    choice = injection.select_candidate(ids, sims, windows, rng)
    assert choice.candidates == 4 and choice.similarities["color"] == sims["color"][choice.index]


def test_policy_records_recent_ids_and_penalises_them(config):
    policy = injection.InjectionPolicy(config)
    policy.load_state_dict(fresh_state(config, current_rate=1.0))
    ids, sims = bank(2)
    rng = np.random.default_rng(3)
    picks = []
    for k in range(20, 80, 3):
        picks.append(policy.decide(k, rng, cache_ids=ids, similarities=sims).entry_id)
    assert list(policy.state.recent_ids) == picks[-5:]
    assert policy.state.total_cache_injections == len(picks)


def test_prioritise_trigger_scores_only_the_triggering_metric():
    dual = similarity.get_strategy("dual_metric")
    cfg = injection.InjectionConfig.for_strategy(
        dual, prioritise_trigger=True, weight_sharpness=50.0
    )
    # "a" is most dissimilar in colour, "b" in structure.
    sims = {"color": np.array([1.2, 2.0]), "struct": np.array([0.9, 0.7])}
    picks = set()
    for seed in range(20):
        policy = injection.InjectionPolicy(cfg)
        d = policy.decide(
            20,
            np.random.default_rng(seed),
            cache_ids=["a", "b"],
            similarities=sims,
            collapse=verdict("force_cache", 1.0, ("struct",)),
        )
        picks.add(d.entry_id)
    assert picks == {"b"}


def run(policy, seed, keyframes):
    ids, _ = bank(30)
    rng = np.random.default_rng(seed)
    sim_rng = np.random.default_rng(99)
    out = []
    for k in keyframes:
        sims = {"color": 1.0 + sim_rng.random(30) * 1.5, "struct": 0.6 + sim_rng.random(30) * 0.4}
        out.append(policy.decide(k, rng, cache_ids=ids, similarities=sims, seed_count=4).to_dict())
    return out


def test_replay_with_the_same_seed(config):
    first = run(injection.InjectionPolicy(config), 5, range(1, 120))
    again = run(injection.InjectionPolicy(config), 5, range(1, 120))
    assert first == again
    assert {d["action"] for d in first} == {"none", "cache", "seed"}
    assert first != run(injection.InjectionPolicy(config), 6, range(1, 120))


def test_state_round_trips_through_json(config):
    a = injection.InjectionPolicy(config)
    run(a, 1, range(1, 60))
    b = injection.InjectionPolicy(config)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.state_dict() == a.state_dict()
    assert run(a, 2, range(60, 100)) == run(b, 2, range(60, 100))
    assert json.loads(json.dumps(a.stats()))["total_cache_injections"] > 0


def test_blends_are_linear_with_the_default_weights():
    g = torch.Generator().manual_seed(0)
    cached, current, seed = (torch.randn(1, 4, 32, 64, generator=g) for _ in range(3))
    blended = injection.blend_latents(cached, current, injection.CACHE_BLEND_WEIGHT)
    torch.testing.assert_close(blended, 0.75 * cached + 0.25 * current)
    blended = injection.blend_latents(seed, current, injection.SEED_BLEND_WEIGHT)
    torch.testing.assert_close(blended, 0.85 * seed + 0.15 * current)
    resized = injection.blend_latents(torch.ones(1, 4, 16, 32), current, 0.75)
    torch.testing.assert_close(resized, 0.75 + 0.25 * current)
    with pytest.raises(ValueError, match="cannot blend"):
        injection.blend_latents(torch.ones(1, 16, 32, 64), current, 0.75)
    with pytest.raises(ValueError, match="within"):
        injection.blend_latents(cached, current, 1.5)


def test_walk_picks_related_but_different_and_never_the_current():
    windows = {"cosine": (0.68, 0.92)}
    ids = ["cur", "near", "mid", "seed:a"]
    sims = {"cosine": np.array([1.0, 0.95, 0.8, 0.7])}
    rng = np.random.default_rng(0)
    picks = {
        injection.choose_walk_target(ids, sims, windows, rng, current_id="cur").entry_id
        for _ in range(300)
    }
    assert picks == {"mid", "seed:a"}
    # nothing in the window: the closest relative that is not recent
    sims = {"cosine": np.array([1.0, 0.97, 0.99, 0.2])}
    choice = injection.choose_walk_target(
        ids, sims, windows, rng, current_id="cur", recent_ids=["mid"]
    )
    assert choice.entry_id == "near" and choice.probability == 1.0
    assert (
        injection.choose_walk_target(
            ["cur"], {"cosine": np.array([1.0])}, windows, rng, current_id="cur"
        )
        is None
    )


def test_bad_configuration_is_refused():
    dual = similarity.get_strategy("dual_metric")
    with pytest.raises(ValueError, match="injection_probability"):
        injection.InjectionConfig.for_strategy(dual, injection_probability=1.5)
    with pytest.raises(ValueError, match="windows 'color' needs low < high"):
        injection.InjectionConfig.for_strategy(dual, windows={"color": (2.0, 1.0)})
    with pytest.raises(ValueError, match="windows: no such metric 'cosine'"):
        injection.InjectionConfig.for_strategy(dual, windows={"cosine": (0.1, 0.2)})
