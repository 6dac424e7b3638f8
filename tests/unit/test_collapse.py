"""Collapse detector: the algorithm of ``docs/design.md`` §11, thresholds and scale/force math, the reset
policies, and the window reset that keeps the detector deciding."""

import json

import numpy as np
import pytest
import torch

from core.cache import collapse, similarity


class ValueStrategy(similarity.SimilarityStrategy):
    """Test double with the dual metric's names and thresholds: an embedding is
    ``[color, struct]`` and a pair's similarity is the *newer* frame's value, so a
    sequence of values fully controls the detector's samples."""

    name = "test_values"
    needs_image = False
    needs_latent = True
    metrics = ("color", "struct")
    defaults = similarity.DUAL_METRIC_DEFAULTS

    def metric_similarities(self, query, bank):
        return {m: bank[:, i].expand(query.shape[0], -1) for i, m in enumerate(self.metrics)}

    def similarity_matrix(self, query, bank):
        return self.metric_similarities(query, bank)["color"]


def frame(color, struct):
    return torch.tensor([color, struct], dtype=torch.float32)


def expected_samples(values):
    """``docs/design.md`` §11: sample n = mean similarity of the consecutive pairs among the last 10
    frames; with ValueStrategy that is the mean of frames max(2, n-8)..n."""
    v = np.asarray(values, dtype=np.float32).astype(np.float64)
    return [v[max(1, n - 8) : n + 1].mean() for n in range(1, len(v))]


def detector(**kw):
    return collapse.CollapseDetector(ValueStrategy(), **kw)


def loaded(color_history, struct_history, last=(2.2, 0.8), **kw):
    """A detector whose similarity histories are given and whose 9 newest embeddings
    all equal ``last``, so the next frame ``last`` appends exactly ``last`` as sample."""
    d = detector(**kw)
    d.load_state_dict(
        {
            "embeddings": [list(last)] * 9,
            "similarities": {"color": list(color_history), "struct": list(struct_history)},
            "force_hold": 0,
            "last_action": "none",
        }
    )
    return d


def test_needs_two_frames_then_40_samples():
    d = detector()
    first = d.analyze(frame(2.0, 0.7))
    assert (first.status, first.action, first.reason) == ("ok", "none", "insufficient history")
    assert first.similarities == {}
    for i in range(39):
        result = d.analyze(frame(2.0 + 0.01 * i, 0.7))
        assert result.deltas == {} and result.action == "none"
    assert d.trend()["color"].samples == 39 and d.trend()["color"].delta is None
    result = d.analyze(frame(2.5, 0.7))
    assert set(result.deltas) == {"color", "struct"}
    assert d.trend()["color"].samples == 40


def test_samples_and_delta_follow_the_definition():
    rng = np.random.default_rng(0)
    values = list(1.2 + rng.random(130))
    d = detector()
    for value in values:
        result = d.analyze(frame(value, 0.5))
    samples = expected_samples(values)[-100:]  # the similarity history holds 100
    assert result.similarities["color"] == pytest.approx(samples[-1], abs=1e-6)
    expected_delta = np.mean(samples[-20:]) - np.mean(samples[:20])
    assert result.deltas["color"] == pytest.approx(expected_delta, abs=1e-6)
    trend = d.trend()["color"]
    assert trend.samples == 100 and trend.delta == pytest.approx(expected_delta, abs=1e-6)
    assert trend.overall_mean == pytest.approx(np.mean(samples), abs=1e-6)
    assert d.frames_analyzed == 50  # the embedding history holds 50


def test_scale_math_both_metrics():
    d = loaded([2.0] * 20 + [2.2] * 19, [0.7] * 20 + [0.8] * 19)
    result = d.analyze(frame(2.2, 0.8))
    assert result.deltas["color"] == pytest.approx(0.2, abs=1e-6)
    assert result.deltas["struct"] == pytest.approx(0.1, abs=1e-6)
    assert (result.status, result.action) == ("converging", "scale_injection")
    progress_c = (0.2 - 0.15) / (0.30 - 0.15)
    progress_s = (0.1 - 0.08) / (0.15 - 0.08)
    assert result.scaled_probability == pytest.approx(max(progress_c, progress_s), abs=1e-5)
    assert result.triggered == ("color", "struct") and result.is_collapsed


def test_scale_math_one_metric():
    d = loaded([2.0] * 40, [0.7] * 20 + [0.8] * 19, last=(2.0, 0.8))
    result = d.analyze(frame(2.0, 0.8))
    assert result.triggered == ("struct",)
    assert result.scaled_probability == pytest.approx((0.1 - 0.08) / 0.07, abs=1e-5)


@pytest.mark.parametrize(
    ("color", "struct", "metric"),
    [((2.0, 2.31), (0.7, 0.7), "color"), ((2.0, 2.0), (0.7, 0.86), "struct")],
)
def test_force_when_either_metric_passes_its_force_threshold(color, struct, metric):
    d = loaded(
        [color[0]] * 20 + [color[1]] * 19,
        [struct[0]] * 20 + [struct[1]] * 19,
        last=(color[1], struct[1]),
    )
    result = d.analyze(frame(color[1], struct[1]))
    assert (result.status, result.action, result.scaled_probability) == (
        "collapsed",
        "force_cache",
        1.0,
    )
    assert metric in result.reason


def test_no_convergence_is_ok():
    d = loaded([2.0] * 20 + [2.1] * 19, [0.7] * 20 + [0.75] * 19, last=(2.1, 0.75))
    result = d.analyze(frame(2.1, 0.75))
    assert (result.status, result.action, result.scaled_probability) == ("ok", "none", 0.0)
    assert not result.is_collapsed


def fed(reset_policy, frames=60):
    d = detector(reset_policy=reset_policy)
    for i in range(frames):
        d.analyze(frame(2.0 + 0.001 * i, 0.7))
    return d


def test_partial_full_and_none_reset_policies():
    partial = fed("partial")
    partial.reset_after_injection()
    assert partial.frames_analyzed == 10 and partial.trend()["color"].samples == 10
    full = fed("full")
    full.reset_after_injection()
    assert full.frames_analyzed == 0 and full.trend()["struct"].samples == 0
    none = fed("none")
    none.reset_after_injection()
    assert none.frames_analyzed == 50 and none.trend()["color"].samples == 59


def test_window_reset_keeps_enough_history_to_decide():
    d = fed("window")
    d.reset_after_injection()
    assert d.frames_analyzed == 50 and d.trend()["color"].samples == 40
    assert d.analyze(frame(2.06, 0.7)).deltas  # a verdict on the very next keyframe


def test_window_reset_holds_force_after_a_forced_injection():
    d = loaded([2.0] * 20 + [2.6] * 19, [0.7] * 39, last=(2.6, 0.7), keep_recent=10)
    assert d.analyze(frame(2.6, 0.7)).action == "force_cache"
    d.reset_after_injection()
    for _ in range(10):
        held = d.analyze(frame(2.6, 0.7))
        assert (held.action, held.scaled_probability) == ("scale_injection", 1.0)
        assert "held off" in held.reason
    assert d.analyze(frame(2.6, 0.7)).action == "force_cache"


def count_verdicts(reset_policy):
    """A steadily converging loop with an injection every 7th keyframe."""
    d = detector(reset_policy=reset_policy)
    verdicts = []
    for k in range(1, 201):
        result = d.analyze(frame(1.5 + 0.01 * k, 0.5 + 0.004 * k))
        if result.deltas:
            verdicts.append(result.action)
        if k % 7 == 0:
            d.reset_after_injection()
    return verdicts


def test_partial_reset_is_dormant_and_the_window_reset_is_not():
    assert count_verdicts("partial") == []
    verdicts = count_verdicts("window")
    assert len(verdicts) == 200 - 40
    assert verdicts.count("scale_injection") + verdicts.count("force_cache") > 100


def test_single_metric_strategy_with_real_latents():
    pool = similarity.get_strategy("latent_pool")
    d = collapse.CollapseDetector(pool)
    assert dict(d.thresholds) == {"cosine": (0.08, 0.15)}
    g = torch.Generator().manual_seed(0)
    for _ in range(30):  # unrelated frames: low consecutive similarity
        result = d.analyze(pool.embed_latents(torch.randn(1, 4, 16, 16, generator=g))[0])
    still = pool.embed_latents(torch.randn(1, 4, 16, 16, generator=g))[0]
    for _ in range(30):  # a frozen picture: similarity 1
        result = d.analyze(still)
    assert result.similarities["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert result.action == "force_cache" and result.triggered == ("cosine",)


def test_state_dict_is_json_and_resumes_identically():
    rng = np.random.default_rng(1)
    values = 1.5 + rng.random((70, 2)) * [1.0, 0.4]
    a = detector()
    for v in values[:45]:
        a.analyze(frame(*v))
    b = detector()
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for v in values[45:]:
        assert a.analyze(frame(*v)) == b.analyze(frame(*v))


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="cover exactly the metrics"):
        detector(thresholds={"color": (0.1, 0.2)})
    with pytest.raises(ValueError, match="convergence <= force"):
        detector(thresholds={"color": (0.3, 0.2), "struct": (0.08, 0.15)})
    with pytest.raises(ValueError, match="reset_policy must be one of 'window', 'partial', 'full', 'none'"):
        detector(reset_policy="sometimes")
    with pytest.raises(ValueError, match="keep_recent must be a whole number >= 0, got -1"):
        detector(keep_recent=-1)
    with pytest.raises(ValueError, match=r"collapse_thresholds 'color' must be a pair \[convergence, force\]"):
        detector(thresholds={"color": "high", "struct": (0.08, 0.15)})
