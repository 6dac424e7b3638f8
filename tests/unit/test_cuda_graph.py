"""core.accel.cuda_graph with a fake capture backend: keys, LRU, invalidation, fallbacks, the ComfyUI wrapper."""

from __future__ import annotations

import copy
import gc
import logging
import uuid
import weakref
from types import SimpleNamespace

import pytest
import torch

from core.accel.cuda_graph import GraphCache, UnetGraphWrapper, is_dynamic_vram


class FakeGraph:
    """A 'graph' that re-runs the captured callable on replay, writing into its static output."""

    def __init__(self, run):
        self.run = run
        self.output = run()
        self.released = False
        self.statics = [weakref.ref(cell.cell_contents) for cell in run.__closure__
                        if isinstance(cell.cell_contents, torch.Tensor)]

    def replay(self):
        assert not self.released, "a released graph was replayed"
        self.output.copy_(self.run())

    def release(self):
        self.released = True
        self.run = self.output = None


class FakeBackend:
    def __init__(self, devices=("cpu",), error: Exception | None = None):
        self.devices = devices
        self.error = error
        self.graphs: list[FakeGraph] = []
        self.attempts = 0

    def unsupported(self, device):
        return None if device.type in self.devices else f"{device.type} tensors: not served by the fake"

    def capture(self, run, device):
        self.attempts += 1
        if self.error is not None:
            raise self.error
        self.graphs.append(FakeGraph(run))
        return self.graphs[-1]


def forward(x, t, c_crossattn=None, **_):
    return x * t.view(-1, 1, 1, 1) + c_crossattn.mean(dim=(1, 2)).view(-1, 1, 1, 1).to(x.dtype)


def inputs(batch=2, h=4, w=8, tokens=77, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, h, w, generator=g, dtype=torch.float32).to(dtype),
            torch.rand(batch, generator=g), {"c_crossattn": torch.randn(batch, tokens, 16, generator=g)})


def cache_for(backend, **kwargs):
    return GraphCache(forward, tensor_conds={"c_crossattn", "y"}, backend=backend, **kwargs)


@pytest.fixture(autouse=True)
def inference():
    with torch.inference_mode():
        yield


def test_replays_copy_each_calls_inputs_and_equal_eager():
    cache = cache_for(FakeBackend())
    calls = [inputs(seed=seed) for seed in (1, 2, 3)]
    results = [cache(x, t, **c) for x, t, c in calls]
    # Checked after the last call: each result is the caller's own clone, not the static output.
    for (x, t, c), got in zip(calls, results):
        assert torch.equal(got, forward(x, t, **c))
    assert (cache.stats.captures, cache.stats.replays, cache.stats.fallbacks) == (1, 3, 0)


@pytest.mark.parametrize("patcher, dynamic", [
    (SimpleNamespace(), False),                             # ComfyUI 0.3.75: no is_dynamic at all
    (SimpleNamespace(is_dynamic=lambda: False), False),     # newer ComfyUI's ModelPatcher
    (SimpleNamespace(is_dynamic=lambda: True), True),       # its ModelPatcherDynamic
    (SimpleNamespace(is_dynamic=True), False),              # not the method: not the upstream patcher
])
def test_is_dynamic_vram_reads_the_patchers_own_answer(patcher, dynamic):
    assert is_dynamic_vram(patcher) is dynamic


def test_a_dynamic_vram_model_is_logged_once_and_runs_eagerly(caplog):
    wrapper, patcher = wrapper_for(), FakePatcher(FakeModel())
    patcher.is_dynamic = lambda: True
    with caplog.at_level(logging.INFO, logger="dream_window"):
        sampling_run(wrapper, patcher)
        sampling_run(wrapper, patcher)
    assert wrapper.cache.stats.captures == wrapper.cache.stats.replays == 0
    lines = [r.getMessage() for r in caplog.records if "running eagerly" in r.getMessage()]
    assert lines == ["test graphs: running eagerly: the model is loaded with dynamic VRAM (ComfyUI's "
                     "ModelPatcherDynamic): its weights are paged in and out while it runs; start ComfyUI with "
                     "--disable-dynamic-vram to use CUDA graphs"]


@pytest.mark.parametrize("change", [dict(batch=1), dict(h=8), dict(tokens=154), dict(dtype=torch.float16)],
                         ids=["batch", "latent", "cond", "dtype"])
def test_one_graph_per_shape_and_dtype(change):
    cache = cache_for(FakeBackend())
    base = inputs()
    other = inputs(**change)
    for x, t, c in (base, other, base, other):
        assert torch.equal(cache(x, t, **c), forward(x, t, **c))
    assert (cache.stats.captures, cache.stats.replays, len(cache)) == (2, 4, 2)


def test_lru_bound_evicts_least_recent_and_releases_its_buffers():
    backend = FakeBackend()
    cache = cache_for(backend, max_graphs=2)
    a, b, c = inputs(h=4), inputs(h=8), inputs(h=16)
    for x, t, cond in (a, b, a, c):  # a was used after b: b is the least recent when c arrives
        cache(x, t, **cond)
    graph_a, graph_b, graph_c = backend.graphs
    assert graph_b.released and not graph_a.released and not graph_c.released
    assert (len(cache), cache.stats.evictions) == (2, 1)
    gc.collect()
    assert graph_b.statics and all(ref() is None for ref in graph_b.statics), "evicted static buffers still held"
    assert all(ref() is not None for ref in graph_a.statics)
    cache(b[0], b[1], **b[2])
    assert cache.stats.captures == 4 and graph_a.released, "b is captured again and evicts a"


def test_clear_releases_every_graph_and_recaptures():
    backend = FakeBackend()
    cache = cache_for(backend)
    for h in (4, 8):
        x, t, c = inputs(h=h)
        cache(x, t, **c)
    assert cache.clear() == 2 and len(cache) == 0
    assert all(g.released for g in backend.graphs)
    x, t, c = inputs(h=4)
    assert torch.equal(cache(x, t, **c), forward(x, t, **c))
    assert cache.stats.captures == 3


@pytest.mark.parametrize("backend, extra, grad, reason", [
    (FakeBackend(devices=("cuda",)), {}, False, "cpu tensors"),
    (FakeBackend(), {"c_concat": torch.zeros(2)}, False, "unknown cond entry 'c_concat'"),
    (FakeBackend(), {"y": [torch.zeros(2, 16)]}, False, "cond entry 'y' is a list, not a tensor"),
    (FakeBackend(), {}, True, "autograd is enabled"),
], ids=["device", "unknown", "non-tensor", "autograd"])
def test_fallbacks_run_eagerly_and_log_each_reason_once(caplog, backend, extra, grad, reason):
    cache = cache_for(backend)
    caplog.set_level(logging.INFO, logger="dream_window")
    for seed in range(3):
        x, t, c = inputs(seed=seed)
        c.update(extra)
        with torch.inference_mode(not grad), torch.set_grad_enabled(grad):
            assert torch.equal(cache(x, t, **c), forward(x, t, **c))
    assert backend.attempts == 0 and cache.stats.fallbacks == 3
    [(logged, count)] = cache.stats.fallback_reasons.items()
    assert reason in logged and count == 3
    assert [r.getMessage() for r in caplog.records].count(f"{cache.name}: running eagerly: {logged}") == 1


def test_capture_failure_is_logged_once_and_not_retried_until_clear(caplog):
    backend = FakeBackend(error=RuntimeError("operation not permitted when stream is capturing"))
    cache = cache_for(backend)
    caplog.set_level(logging.INFO, logger="dream_window")
    for seed in range(3):
        x, t, c = inputs(seed=seed)
        assert torch.equal(cache(x, t, **c), forward(x, t, **c))
    assert backend.attempts == 1 and cache.stats.fallbacks == 3 and cache.stats.captures == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "capture failed" in warnings[0].getMessage()
    assert "operation not permitted" in warnings[0].getMessage() and len(caplog.records) == 1
    cache.clear()
    backend.error = None
    cache(x, t, **c)
    assert backend.attempts == 2 and cache.stats.captures == 1


def test_a_forward_that_returns_no_tensor_runs_eagerly():
    backend = FakeBackend()
    cache = GraphCache(lambda x, t, **c: (x, t), tensor_conds=(), backend=backend)
    x, t, _ = inputs()
    assert cache(x, t)[0] is x
    assert backend.graphs[0].released and "not a tensor" in next(iter(cache.stats.fallback_reasons))


def test_nonsense_configuration_is_refused():
    with pytest.raises(ValueError, match="max_graphs"):
        cache_for(FakeBackend(), max_graphs=0)
    with pytest.raises(ValueError, match="both"):
        GraphCache(forward, tensor_conds={"y"}, passthrough={"y"}, backend=FakeBackend())


# -- UnetGraphWrapper, with stand-ins for ComfyUI's BaseModel and ModelPatcher --

class FakeModel(torch.nn.Module):
    """BaseModel's surface the wrapper touches: apply_model, weights, model_lowvram, current_patcher."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, generator=torch.Generator().manual_seed(5)))
        self.model_lowvram = False
        self.current_patcher = None

    def apply_model(self, x, t, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        out = forward(x, t, c_crossattn) * self.weight.view(1, -1, 1, 1)
        return out + control["bias"] if control is not None else out


class FakePatcher:
    def __init__(self, model):
        self.model = model
        self.patches_uuid = uuid.uuid4()
        self.object_patches = {}
        self.hook_patches = {}
        self.current_hooks = None


def options(**extra):
    """transformer_options as ComfyUI 0.3.75 builds them for a plain SD1.5 run (plus ``extra``)."""
    return {"wrappers": {}, "callbacks": {"on_pre_run": {None: [print]}}, "sample_sigmas": torch.ones(3),
            "cond_or_uncond": [1, 0], "uuids": [uuid.uuid4(), uuid.uuid4()], "sigmas": torch.ones(1), **extra}


def sampling_run(wrapper, patcher, steps=3, **c_extra):
    """pre_run, ``steps`` forwards through the wrapper, cleanup, as CFGGuider.outer_sample does."""
    patcher.model.current_patcher = patcher
    wrapper.on_pre_run(patcher)
    results = []
    for step in range(steps):
        x, t, c = inputs(seed=step)
        c = {**c, "transformer_options": options(), **c_extra}
        got = wrapper(patcher.model.apply_model, {"input": x, "timestep": t, "c": c, "cond_or_uncond": [1, 0]})
        assert torch.equal(got, patcher.model.apply_model(x, t, **c))
        results.append(got)
    wrapper.on_cleanup(patcher)
    return results


def wrapper_for(backend=None, forward_wrappers=lambda options: []):
    return UnetGraphWrapper("test graphs", forward_wrappers, backend=backend or FakeBackend())


def test_wrapper_serves_checked_runs_and_keeps_graphs_across_runs():
    wrapper, patcher = wrapper_for(), FakePatcher(FakeModel())
    sampling_run(wrapper, patcher)
    sampling_run(wrapper, patcher)
    assert (wrapper.cache.stats.captures, wrapper.cache.stats.replays, wrapper.cache.stats.fallbacks) == (1, 6, 0)


def test_wrapper_runs_eagerly_outside_a_checked_run():
    wrapper, model = wrapper_for(), FakeModel()
    x, t, c = inputs()
    wrapper(model.apply_model, {"input": x, "timestep": t, "c": c, "cond_or_uncond": [1, 0]})
    assert "outside a sampling run" in next(iter(wrapper.cache.stats.fallback_reasons))


@pytest.mark.parametrize("c_extra, reason", [
    ({"control": {"bias": torch.ones(1)}}, "ControlNet"),
    ({"transformer_options": options(patches={"attn1_patch": [print]})}, "transformer_options patches: attn1_patch"),
    ({"transformer_options": options(patches_replace={"attn2": {("input", 1): print}})}, "patches_replace: attn2"),
    ({"transformer_options": options(optimized_attention_override=print)}, "'optimized_attention_override'"),
    ({"transformer_options": options(wrappers={"diffusion_model": {None: [print]}})}, "wrappers are installed"),
], ids=["control", "patches", "patches_replace", "unknown-option", "forward-wrapper"])
def test_wrapper_refuses_what_a_replay_would_not_reproduce(c_extra, reason):
    wrapper = wrapper_for(forward_wrappers=lambda options: options["wrappers"].get("diffusion_model", {}).get(None, []))
    sampling_run(wrapper, FakePatcher(FakeModel()), **c_extra)
    stats = wrapper.cache.stats
    assert stats.replays == 0 and stats.fallbacks == 3
    assert reason in next(iter(stats.fallback_reasons))


def test_wrapper_serves_empty_patch_options():
    wrapper = wrapper_for()
    sampling_run(wrapper, FakePatcher(FakeModel()), transformer_options=options(patches={}, patches_replace={"x": {}}))
    assert wrapper.cache.stats.replays == 3


@pytest.mark.parametrize("setup, reason", [
    (lambda p: setattr(p, "is_dynamic", lambda: True), "dynamic VRAM (ComfyUI's ModelPatcherDynamic)"),
    (lambda p: setattr(p.model, "model_lowvram", True), "partially offloaded"),
    (lambda p: p.model.register_buffer("log_sigmas", torch.zeros(3, device="meta")), "on cpu, meta"),
    (lambda p: p.hook_patches.update({"hook": {}}), "weight hooks"),
    (lambda p: setattr(p, "current_hooks", object()), "hooks are applied"),
], ids=["dynamic-vram", "lowvram", "split-devices", "weight-hooks", "applied-hooks"])
def test_wrapper_refuses_runs_whose_weights_move_and_releases_graphs(setup, reason):
    backend = FakeBackend()
    wrapper, patcher = wrapper_for(backend), FakePatcher(FakeModel())
    sampling_run(wrapper, patcher)
    setup(patcher)
    sampling_run(wrapper, patcher)
    assert wrapper.cache.stats.fallbacks == 3 and reason in next(iter(wrapper.cache.stats.fallback_reasons))
    if reason != "hooks are applied":  # a run refused at pre_run drops its graphs at once
        assert backend.graphs[0].released and len(wrapper.cache) == 0


@pytest.mark.parametrize("change", [
    lambda p: setattr(p.model, "weight", torch.nn.Parameter(torch.full((4,), 2.0))),  # reloaded / re-patched
    lambda p: setattr(p, "patches_uuid", uuid.uuid4()),                                 # patched differently
    lambda p: p.object_patches.update({"model_sampling": object()}),                     # object patch
    lambda p: setattr(p, "model", FakeModel()),                                          # another model
], ids=["weights", "patches", "object-patches", "model"])
def test_a_changed_model_releases_graphs_before_any_replay(change):
    backend = FakeBackend()
    wrapper, patcher = wrapper_for(backend), FakePatcher(FakeModel())
    sampling_run(wrapper, patcher)
    change(patcher)
    sampling_run(wrapper, patcher)  # results are checked against eager inside
    assert backend.graphs[0].released and wrapper.cache.stats.captures == 2 and len(wrapper.cache) == 1


def test_unloading_releases_graphs_and_clones_share_the_wrapper():
    backend = FakeBackend()
    wrapper, patcher = wrapper_for(backend), FakePatcher(FakeModel())
    sampling_run(wrapper, patcher)
    assert copy.deepcopy({"model_function_wrapper": wrapper})["model_function_wrapper"] is wrapper
    wrapper.on_detach(patcher, False)  # another clone of the model was loaded: weights stay in place
    assert len(wrapper.cache) == 1
    wrapper.on_detach(patcher, True)
    assert backend.graphs[0].released and len(wrapper.cache) == 0
    sampling_run(wrapper, patcher)
    assert wrapper.cache.stats.captures == 2


def test_counters_are_logged_after_runs_1_2_4(caplog):
    caplog.set_level(logging.INFO, logger="dream_window")
    wrapper, patcher = wrapper_for(), FakePatcher(FakeModel())
    for _ in range(5):
        sampling_run(wrapper, patcher, steps=1)
    lines = [r.getMessage() for r in caplog.records if "sampling runs" in r.getMessage()]
    assert [line.split("after ")[1].split(" ")[0] for line in lines] == ["1", "2", "4"]
    assert lines[-1].endswith("1 captures, 4 replays, 0 fallbacks, 0 evictions; 1 graphs held")
