"""Cache admission: the mean rule, its thresholds and logic, the max rule."""

import numpy as np
import pytest
import torch

from core.cache import admission, similarity


@pytest.fixture
def dual():
    return similarity.get_strategy("dual_metric")


def policy(dual, **kw):
    return admission.AdmissionPolicy.for_strategy(dual, **kw)


def sims(color, struct):
    return {"color": np.asarray(color, dtype=float), "struct": np.asarray(struct, dtype=float)}


def similarities_to(strategy, embedding, bank):
    """The similarities of one embedding ``[D]`` to ``bank [M,D]``, as the aesthetic loop hands them to
    the admission rule (one row of ``strategy.metric_similarities``)."""
    return {metric: values[0] for metric, values in strategy.metric_similarities(embedding.reshape(1, -1), bank).items()}


def test_defaults_are_the_documented_values(dual):
    p = policy(dual)
    assert dict(p.mean_thresholds) == {"color": 1.92, "struct": 0.80}
    assert p.rule == "mean" and p.logic == "all"


def test_empty_cache_admits(dual):
    for rule in admission.ADMISSION_RULES:
        decision = policy(dual, rule=rule).evaluate(sims([], []))
        assert decision.accepted
    d = policy(dual).evaluate(similarities_to(dual, torch.zeros(160), torch.zeros(0, 160)))
    assert d.accepted and d.reason == "cache is empty"


@pytest.mark.parametrize(
    ("color_mean", "struct_mean", "logic", "accepted"),
    [
        (1.91, 0.79, "all", True),
        (1.92, 0.79, "all", False),  # the threshold is strict: mean < 1.92
        (1.91, 0.80, "all", False),
        (1.92, 0.79, "any", True),
        (1.91, 0.80, "any", True),
        (1.95, 0.85, "any", False),
        (1.95, 0.85, "all", False),
    ],
)
def test_mean_rule_thresholds_and_logic(dual, color_mean, struct_mean, logic, accepted):
    # Four entries at the given value: a mean computed without rounding error.
    color = np.full(4, color_mean)
    struct = np.full(4, struct_mean)
    decision = policy(dual, logic=logic).evaluate(sims(color, struct))
    assert decision.accepted is accepted
    assert decision.mean["color"] == pytest.approx(color_mean)
    assert decision.mean["struct"] == pytest.approx(struct_mean)
    assert ("diverse" if accepted else "too similar") in decision.reason


def test_mean_rule_admits_a_near_duplicate_that_the_max_rule_rejects(dual):
    # One cached entry is a near-duplicate (2.95 / 0.98), the other nine are far away.
    near_dup = sims([2.95] + [1.2] * 9, [0.98] + [0.5] * 9)
    assert policy(dual, rule="mean").evaluate(near_dup).accepted
    max_rule = policy(dual, rule="max").evaluate(near_dup)
    assert not max_rule.accepted and max_rule.max["color"] == pytest.approx(2.95)
    assert not policy(dual, rule="mean+max").evaluate(near_dup).accepted
    far = sims([1.2] * 10, [0.5] * 10)
    assert policy(dual, rule="max").evaluate(far).accepted
    assert policy(dual, rule="mean+max").evaluate(far).accepted


def test_mean_plus_max_needs_both(dual):
    # Max is fine, but the mean is above the mean threshold.
    crowded = sims([2.0] * 5, [0.85] * 5)
    assert policy(dual, rule="max").evaluate(crowded).accepted
    assert not policy(dual, rule="mean+max").evaluate(crowded).accepted


def test_always_rule_admits_everything(dual):
    assert policy(dual, rule="always").evaluate(sims([3.0], [1.0])).accepted


def test_single_metric_strategy_uses_one_threshold():
    pool = similarity.get_strategy("latent_pool")
    p = admission.AdmissionPolicy.for_strategy(pool, mean_thresholds={"cosine": 0.5})
    assert dict(p.mean_thresholds) == {"cosine": 0.5}
    assert p.evaluate({"cosine": np.array([0.4, 0.55])}).accepted
    assert not p.evaluate({"cosine": np.array([0.6, 0.5])}).accepted


def test_admission_of_an_embedding_uses_the_strategy(dual):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(5, 32, 48, 3, generator=g)
    emb = dual.embed_images(images)
    p = policy(dual, rule="mean+max")
    decision = p.evaluate(similarities_to(dual, emb[0], emb[1:]))
    expected = dual.metric_similarities(emb[:1], emb[1:])
    assert decision.mean["color"] == pytest.approx(expected["color"].mean().item(), abs=1e-6)
    assert decision.max["struct"] == pytest.approx(expected["struct"].max().item(), abs=1e-6)
    # Admitting a frame against a cache that already holds it: the max rule says no.
    assert not policy(dual, rule="max").evaluate(similarities_to(dual, emb[0], emb)).accepted


def test_admission_over_10000_entries():
    pool = similarity.get_strategy("latent_pool")
    bank = torch.nn.functional.normalize(torch.randn(10_000, 16), dim=1)
    query = bank[123]
    p = admission.AdmissionPolicy.for_strategy(pool, rule="mean+max")
    decision = p.evaluate(similarities_to(pool, query, bank))
    cos = (bank @ query).numpy()
    assert decision.mean["cosine"] == pytest.approx(float(cos.mean()), abs=1e-5)
    assert decision.max["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert not decision.accepted


def test_bad_configuration_is_refused(dual):
    with pytest.raises(ValueError, match="unknown admission rule"):
        policy(dual, rule="median")
    with pytest.raises(ValueError, match="unknown logic"):
        policy(dual, logic="xor")
    with pytest.raises(ValueError, match="no such metric"):
        policy(dual, mean_thresholds={"cosine": 0.5})
    with pytest.raises(ValueError, match="same, non-empty set"):
        admission.AdmissionPolicy(mean_thresholds={"a": 1.0}, max_thresholds={"b": 1.0})
