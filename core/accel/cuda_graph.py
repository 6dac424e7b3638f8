"""CUDA-graph replay of a fixed-shape forward pass, with an eager fallback for everything else.

The dream loop calls the same diffusion model at the same shapes for days; at 512x256 an SD1.5
forward is bound by Python and kernel launches, not by the GPU. :class:`GraphCache` wraps a
callable ``fn(x, t, **cond)``: per key (the shapes and dtypes of ``x``, ``t`` and every cond
tensor, their device, inference mode) it captures ``fn`` once into a graph that reads static
input buffers, and then serves each call by copying the inputs in, replaying the graph and
returning a clone of the static output. Whatever it cannot serve exactly (tensors off CUDA, a
non-tensor or unknown cond entry, autograd, a failed capture) goes to the eager ``fn``; each
distinct reason is logged once. At most ``max_graphs`` graphs are kept (least recently used
first out, releasing the graph and its buffers).

:class:`UnetGraphWrapper` puts a cache behind ComfyUI's ``model_function_wrapper`` (it only
duck-types ComfyUI's objects; this module imports no ComfyUI). It serves
``apply_model(input, timestep, **c)`` from graphs while a sampling run that it has checked is
in progress, and falls back for anything that could make a replay differ from the eager call:
ControlNet, transformer-option patches, forward wrappers, hooks, weights that can move while the
model runs (a partially offloaded model, newer ComfyUI's dynamic VRAM: :func:`moving_weights`).

The capture mechanism is a :class:`GraphBackend` (:class:`CudaGraphBackend` by default), so the
keys, LRU, invalidation and fallbacks run on CPU in tests with a fake backend.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Protocol

import torch

log = logging.getLogger("dream_window")

DEFAULT_MAX_GRAPHS = 4
DEFAULT_WARMUP = 3
"""Eager runs on a side stream before a capture (PyTorch's recipe; lazy init happens there)."""


class CapturedGraph(Protocol):
    """One captured forward: ``replay()`` recomputes ``output`` from the static inputs."""

    output: Any

    def replay(self) -> None: ...

    def release(self) -> None:
        """Free the graph and the memory it holds; it is never replayed again."""


class GraphBackend(Protocol):
    """How graphs are captured and replayed (CUDA in production, a fake one in tests)."""

    def unsupported(self, device: torch.device) -> str | None:
        """Why tensors on ``device`` cannot be served by a graph, or None when they can."""

    def capture(self, run: Callable[[], Any], device: torch.device) -> CapturedGraph:
        """Capture ``run()`` (which reads only static buffers) on ``device``."""


class _CudaGraph:
    def __init__(self, graph: torch.cuda.CUDAGraph, output: Any) -> None:
        self._graph: torch.cuda.CUDAGraph | None = graph
        self.output = output

    def replay(self) -> None:
        self._graph.replay()

    def release(self) -> None:
        self._graph.reset()
        self._graph = None
        self.output = None


class CudaGraphBackend:
    """``torch.cuda.CUDAGraph`` capture: warm-up on a side stream, then capture, as PyTorch requires.

    Each graph gets its own memory pool, so graphs never share intermediates and a released
    graph returns its memory to the caching allocator. ``capture_error_mode="thread_local"``
    lets other threads (ComfyUI's server) keep using CUDA while this one captures.
    """

    def __init__(self, warmup: int = DEFAULT_WARMUP) -> None:
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1, got {warmup}")
        self.warmup = warmup

    def unsupported(self, device: torch.device) -> str | None:
        if device.type != "cuda":
            return f"{device.type} tensors: CUDA graphs need a CUDA device"
        return None

    def capture(self, run: Callable[[], Any], device: torch.device) -> CapturedGraph:
        with torch.cuda.device(device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    run()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                output = run()
        return _CudaGraph(graph, output)


@dataclass
class GraphStats:
    """Counters of one cache; ``fallback_reasons`` counts eager calls per reason."""

    captures: int = 0
    replays: int = 0
    fallbacks: int = 0
    evictions: int = 0
    fallback_reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"captures": self.captures, "replays": self.replays, "fallbacks": self.fallbacks,
                "evictions": self.evictions, "fallback_reasons": dict(self.fallback_reasons)}

    def summary(self) -> str:
        text = (f"{self.captures} captures, {self.replays} replays, {self.fallbacks} fallbacks, "
                f"{self.evictions} evictions")
        if self.fallback_reasons:
            text += " (" + "; ".join(f"{reason}: {n}" for reason, n in self.fallback_reasons.items()) + ")"
        return text


def _spec(tensor: torch.Tensor) -> tuple:
    return tuple(tensor.shape), tensor.dtype


def _describe(key: tuple) -> str:
    device, _, x_spec, t_spec, conds, _ = key
    parts = [f"x {list(x_spec[0])} {x_spec[1]}", f"t {list(t_spec[0])} {t_spec[1]}"]
    parts += [f"{name} {list(shape)} {dtype}" for name, (shape, dtype) in conds]
    return f"{', '.join(parts)} on {device}"


@dataclass
class _Entry:
    graph: CapturedGraph
    x: torch.Tensor
    t: torch.Tensor
    conds: dict[str, torch.Tensor]

    def load(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> None:
        self.x.copy_(x)
        self.t.copy_(t)
        for name, buffer in self.conds.items():
            buffer.copy_(cond[name])


def _static_like(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A static graph input on ``device`` holding ``tensor`` (copied there if it lives elsewhere)."""
    return torch.empty(tensor.shape, dtype=tensor.dtype, device=device).copy_(tensor)


class GraphCache:
    """Serves ``fn(x, t, **cond)`` from captured graphs where it can, eagerly where it cannot.

    ``tensor_conds`` names the cond entries that are graph inputs (they must be tensors; their
    shapes and dtypes are part of the key). ``passthrough`` names entries handed to ``fn``
    untouched and left out of the key: the caller vouches that they do not change what ``fn``
    computes (a replay runs no Python, so it would not see them). Any other entry is refused.
    """

    def __init__(self, fn: Callable[..., Any], *, tensor_conds: Collection[str], passthrough: Collection[str] = (),
                 backend: GraphBackend | None = None, max_graphs: int = DEFAULT_MAX_GRAPHS,
                 name: str = "CUDA graphs") -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        overlap = set(tensor_conds) & set(passthrough)
        if overlap:
            raise ValueError(f"cond entries both graph inputs and passthrough: {sorted(overlap)}")
        self.fn = fn
        self.tensor_conds = frozenset(tensor_conds)
        self.passthrough = frozenset(passthrough)
        self.backend = backend if backend is not None else CudaGraphBackend()
        self.max_graphs = max_graphs
        self.name = name
        self.stats = GraphStats()
        self._graphs: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._failed: dict[Hashable, str] = {}
        self._logged: set[str] = set()

    def __len__(self) -> int:
        """The number of graphs held."""
        return len(self._graphs)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond: Any) -> Any:
        reason = self._refusal(x, t, cond)
        if reason is not None:
            return self.eager(reason, x, t, **cond)
        key = self._key(x, t, cond)
        if key in self._failed:
            return self.eager(self._failed[key], x, t, **cond)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(key, x, t, cond)
            if entry is None:
                return self.eager(self._failed[key], x, t, **cond)
        else:
            self._graphs.move_to_end(key)
            entry.load(x, t, cond)
        entry.graph.replay()
        self.stats.replays += 1
        return entry.graph.output.clone()

    def eager(self, reason: str, x: Any, t: Any, **cond: Any) -> Any:
        """Run ``fn`` eagerly, counting the fallback and logging ``reason`` the first time it occurs."""
        self.stats.fallbacks += 1
        self.stats.fallback_reasons[reason] = self.stats.fallback_reasons.get(reason, 0) + 1
        if reason not in self._logged:
            self._logged.add(reason)
            log.info("%s: running eagerly: %s", self.name, reason)
        return self.fn(x, t, **cond)

    def clear(self) -> int:
        """Release every graph and forget failed captures (the model changed); returns how many graphs."""
        released = len(self._graphs)
        while self._graphs:
            self._graphs.popitem(last=False)[1].graph.release()
        self._failed.clear()
        return released

    def _refusal(self, x: Any, t: Any, cond: dict[str, Any]) -> str | None:
        if not isinstance(x, torch.Tensor) or not isinstance(t, torch.Tensor):
            return f"input or timestep is not a tensor ({type(x).__name__}, {type(t).__name__})"
        for name, value in cond.items():
            if name in self.passthrough:
                continue
            if name not in self.tensor_conds:
                return f"unknown cond entry {name!r}"
            if not isinstance(value, torch.Tensor):
                return f"cond entry {name!r} is a {type(value).__name__}, not a tensor"
        unsupported = self.backend.unsupported(x.device)
        if unsupported is not None:
            return unsupported
        if torch.is_grad_enabled():
            return "autograd is enabled: graphs are captured for inference only"
        return None

    def _key(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> tuple:
        conds = tuple(sorted((name, _spec(v)) for name, v in cond.items() if name in self.tensor_conds))
        passed = tuple(sorted(name for name in cond if name in self.passthrough))
        return str(x.device), torch.is_inference_mode_enabled(), _spec(x), _spec(t), conds, passed

    def _capture(self, key: tuple, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> _Entry | None:
        while len(self._graphs) >= self.max_graphs:
            self._graphs.popitem(last=False)[1].graph.release()
            self.stats.evictions += 1
        # Every graph input lives on x's device: ComfyUI may hand over a timestep or a cond on the CPU,
        # which the eager forward moves itself; each call's values are copied in (``_Entry.load``).
        static_x, static_t = _static_like(x, x.device), _static_like(t, x.device)
        static_conds = {name: _static_like(v, x.device) for name, v in cond.items() if name in self.tensor_conds}
        passed = {name: v for name, v in cond.items() if name in self.passthrough}

        def run() -> Any:
            return self.fn(static_x, static_t, **static_conds, **passed)

        try:
            graph = self.backend.capture(run, x.device)
        except Exception as exc:  # noqa: BLE001 - any capture failure means "run this key eagerly"
            return self._fail(key, f"capture failed for {_describe(key)}: {type(exc).__name__}: {exc}")
        if not isinstance(graph.output, torch.Tensor):
            graph.release()
            return self._fail(key, f"the forward returns a {type(graph.output).__name__}, not a tensor")
        self.stats.captures += 1
        entry = _Entry(graph, static_x, static_t, static_conds)
        self._graphs[key] = entry
        log.info("%s: captured a graph for %s (%d held)", self.name, _describe(key), len(self._graphs))
        return entry

    def _fail(self, key: tuple, reason: str) -> None:
        self._failed[key] = reason
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("%s: running eagerly: %s", self.name, reason)
        return None


TENSOR_CONDS = frozenset({"c_crossattn", "c_concat", "y"})
"""Cond entries of ``BaseModel.apply_model`` that only feed tensor operations (graph inputs)."""

BOOKKEEPING_OPTIONS = frozenset({"cond_or_uncond", "uuids", "sigmas", "sample_sigmas", "callbacks"})
"""Transformer options a plain UNet forward never reads: batch bookkeeping and the sigmas (read
only by patches, which are refused) and ModelPatcher lifecycle callbacks (never run in a forward)."""

PATCH_OPTIONS = frozenset({"patches", "patches_replace"})
"""Transformer options served only while empty: patches run Python inside the forward."""


def is_dynamic_vram(patcher: Any) -> bool:
    """Whether ComfyUI loads ``patcher``'s model with dynamic VRAM (newer ComfyUI; never in 0.3.75).

    What upstream ComfyUI does (read in its source, late 2026): ``ModelPatcher.is_dynamic()`` returns
    False and its subclass ``ModelPatcherDynamic.is_dynamic()`` True. When the ``comfy_aimdo`` allocator
    starts (on by default on NVIDIA with torch >= 2.8; ``--disable-dynamic-vram``, ``--highvram``,
    ``--gpu-only``, ``--novram`` and ``--cpu`` turn it off, ``--enable-dynamic-vram`` forces it),
    ``main.py`` rebinds ``comfy.model_patcher.CoreModelPatcher`` to ``ModelPatcherDynamic`` and sets
    ``comfy.memory_management.aimdo_enabled``; every loader then builds its model with that class (a
    model whose load device is the CPU stays a plain ``ModelPatcher``). Such a model's weights live in a
    virtual address range (a "vbar") that is paged in and evicted, and prefetched block by block
    (``transformer_options["prefetch_dynamic_vbars"]``), while the model runs; a graph that captured their
    addresses could replay on evicted or replaced memory, so it would give wrong frames.
    """
    is_dynamic = getattr(patcher, "is_dynamic", None)
    return bool(callable(is_dynamic) and is_dynamic())


def moving_weights(patcher: Any, tensors: Sequence[torch.Tensor]) -> str | None:
    """Why the weights of ``patcher``'s model (``tensors``: its weights and buffers) can move or change
    while it runs, so a captured graph could read stale memory; None when they stay put.

    Dynamic VRAM (:func:`is_dynamic_vram`); a partial load (``model_lowvram``: ComfyUI moves the weights
    that did not fit to the GPU layer by layer inside the forward, and applies their patches as each one
    is cast); weights and buffers on more than one device; weight hooks (they swap weights between
    steps). ``lowvram_patch_counter`` is not read: 0.3.75 keeps its count after a partial load grows
    into a full one, so it would refuse runs that are safe."""
    model = patcher.model
    devices = sorted({str(tensor.device) for tensor in tensors})
    if is_dynamic_vram(patcher):
        return ("the model is loaded with dynamic VRAM (ComfyUI's ModelPatcherDynamic): its weights are paged "
                "in and out while it runs; start ComfyUI with --disable-dynamic-vram to use CUDA graphs")
    if getattr(model, "model_lowvram", False):
        return "the model is partially offloaded (low VRAM): its weights move during the forward"
    if len(devices) > 1:
        return f"the model is not loaded completely: its weights and buffers are on {', '.join(devices)}"
    if patcher.hook_patches:
        return "weight hooks are registered: they swap weights between steps"
    return None


def weights_token(patcher: Any, tensors: Sequence[torch.Tensor]) -> tuple:
    """What a captured graph depends on besides its inputs: the model object, its patches and object
    patches, and the address of every weight and buffer in ``tensors`` (a graph reads weights by
    address, so a reload, a re-patch that replaces tensors or an offload all change this token)."""
    objects = tuple(sorted((name, id(obj)) for name, obj in patcher.object_patches.items()))
    return id(patcher.model), patcher.patches_uuid, objects, tuple(tensor.data_ptr() for tensor in tensors)


class UnetGraphWrapper:
    """A ComfyUI ``model_function_wrapper`` serving ``apply_model`` from CUDA graphs.

    ComfyUI calls it as ``wrapper(apply_model, {"input", "timestep", "c", "cond_or_uncond"})``
    for every diffusion-model forward. Register ``on_pre_run``, ``on_cleanup`` and ``on_detach``
    as the ModelPatcher's ``ON_PRE_RUN``, ``ON_CLEANUP`` and ``ON_DETACH`` callbacks:

    * ``on_pre_run`` (each sampling run, after the model is loaded) checks the run can be served
      (no weight can move while it runs, :func:`moving_weights`: no dynamic VRAM, no low-VRAM offload or
      patches, every weight and buffer, the sampling schedule included, on one device; no weight hooks)
      and computes :func:`weights_token`; when the
      token differs from the graphs' token, every graph is released before anything is replayed.
      Graphs are thus keyed on the patcher's weights and patches (``patches_uuid``), not on the
      patcher object: a clone with the same weights reuses them; a model swap or re-patch
      releases them.
    * ``on_cleanup`` (end of each run) stops serving until the next checked run, and logs the
      counters after runs 1, 2, 4, 8, ...
    * ``on_detach`` releases every graph when the model is unloaded (``unpatch_all``); a detach that
      only swaps in another clone of the same model leaves the weights, and the graphs, in place.

    Within a checked run a call goes to the eager ``apply_model`` when it carries ControlNet
    control, applied hooks, non-empty transformer-option patches, forward wrappers
    (``forward_wrappers(transformer_options)`` returns ComfyUI's apply-model and diffusion-model
    wrappers) or an unrecognised transformer option; the cache then refuses what is not on a CUDA
    device or not a known tensor cond.
    """

    def __init__(self, name: str, forward_wrappers: Callable[[dict], Sequence[Any]],
                 backend: GraphBackend | None = None, max_graphs: int = DEFAULT_MAX_GRAPHS) -> None:
        self.name = name
        self.cache = GraphCache(self._forward, tensor_conds=TENSOR_CONDS,
                                passthrough={"apply_model", "transformer_options"},
                                backend=backend, max_graphs=max_graphs, name=name)
        self.runs = 0
        self._forward_wrappers = forward_wrappers
        self._armed: Any = None
        self._unarmed_reason: str | None = None
        self._token: tuple | None = None

    def __deepcopy__(self, memo: dict) -> UnetGraphWrapper:
        """ModelPatcher.clone deep-copies model_options; clones share this wrapper and its graphs
        (their weights are checked at every run)."""
        return self

    def __call__(self, apply_model: Callable[..., torch.Tensor], args: dict[str, Any]) -> torch.Tensor:
        x, t, c = args["input"], args["timestep"], dict(args["c"])
        control = c.pop("control", None)
        reason = self._refusal(apply_model, control, c.get("transformer_options", {}))
        if reason is not None:
            if control is not None:
                c["control"] = control
            return self.cache.eager(reason, x, t, apply_model=apply_model, **c)
        return self.cache(x, t, apply_model=apply_model, **c)

    def on_pre_run(self, patcher: Any) -> None:
        model = patcher.model
        self._armed = None
        tensors = list(chain(model.parameters(), model.buffers()))
        moving = moving_weights(patcher, tensors)
        if moving is not None:
            self._disarm(moving)
        else:
            token = weights_token(patcher, tensors)
            if token != self._token:
                self._release("the model's weights or patches changed")
                self._token = token
            self._armed, self._unarmed_reason = model, None

    def on_cleanup(self, patcher: Any) -> None:
        self._armed, self._unarmed_reason = None, None
        self.runs += 1
        if self.runs & (self.runs - 1) == 0:
            log.info("%s: after %d sampling runs: %s; %d graphs held", self.name, self.runs,
                     self.cache.stats.summary(), len(self.cache))

    def on_detach(self, patcher: Any, unpatch_all: bool) -> None:
        if unpatch_all:  # detach(unpatch_all=False) swaps in another clone and leaves the weights in place
            self._release("the model was unloaded")

    @staticmethod
    def _forward(x: torch.Tensor, t: torch.Tensor, *, apply_model: Callable[..., torch.Tensor],
                 **c: Any) -> torch.Tensor:
        return apply_model(x, t, **c)

    def _disarm(self, reason: str) -> None:
        self._unarmed_reason = reason
        self._release(reason)

    def _release(self, why: str) -> None:
        released = self.cache.clear()
        if released:
            log.info("%s: released %d graphs: %s", self.name, released, why)

    def _refusal(self, apply_model: Callable[..., Any], control: Any, options: dict) -> str | None:
        model = getattr(apply_model, "__self__", None)
        if self._armed is None or model is not self._armed:
            return self._unarmed_reason or "called outside a sampling run that this wrapper checked"
        patcher = getattr(model, "current_patcher", None)
        if patcher is not None and patcher.current_hooks is not None:
            return "hooks are applied to this call"
        if control is not None:
            return "ControlNet/T2I-Adapter control is attached"
        for key, value in options.items():
            if key in BOOKKEEPING_OPTIONS:
                continue
            if key in PATCH_OPTIONS:
                active = sorted(name for name, patches in value.items() if patches)
                if active:
                    return f"transformer_options {key}: {', '.join(active)}"
            elif key == "wrappers":
                if self._forward_wrappers(options):
                    return "apply_model/diffusion_model wrappers are installed"
            else:
                return f"unrecognised transformer option {key!r}"
        return None
