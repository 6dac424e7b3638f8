"""GPU benchmark: the SD1.5 UNet forward and a whole dream keyframe, eager versus CUDA-graph replay.

Runs inside a ComfyUI tree (``--comfy DIR``) with no server: it builds the full SD1.5 UNet
architecture with random fp16 weights from ComfyUI's own classes (``comfy.supported_models.SD15``
-> ``comfy.model_base.BaseModel`` in a ``ModelPatcher``) and measures, in the same run:

* **UNet forward**: one ``BaseModel.apply_model`` at batch 2 (CFG), latent 64x32 (512x256),
  context 77x768 fp16, eager versus served by ``core.accel.cuda_graph.GraphCache`` (input copies,
  replay and output clone included);
* **keyframe**: ``comfy.sample.sample`` as the dream loop's KSampler runs it (10 steps, euler,
  karras, cfg 6, denoise 0.2, img2img from a random latent), eager versus through
  ``core.accel.cuda_graph.UnetGraphWrapper`` installed exactly as the DreamWindowCudaGraph node does;
  with the relative L2 difference of the final latents and the graph counters.

Targets (issue 7, H100/H200 class): >= 2.5x faster UNet forward, >= 2x faster keyframes,
relative L2 <= 1e-3, replays > 0. Prints a table and writes ``tools/bench/results/cuda_graph.json``.
A part that fails is reported (with its traceback) and the others still run; the exit status
is then 1. Without a CUDA device it prints "skipped: no CUDA device" and exits 0.

ComfyUI's sampler needs ``torchsde`` (and ``trampoline``) besides torch; a missing module is
named in the error.

Run: ``python tools/bench/cuda_graph_bench.py --comfy /path/to/ComfyUI`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
DEFAULT_COMFY = Path(os.environ.get("COMFYUI_DIR", REPO / ".harness" / "ComfyUI"))
DEFAULT_OUT = REPO / "tools" / "bench" / "results" / "cuda_graph.json"
LATENT_SCALE = 8
CFG_BATCH = 2
CONTEXT = (77, 768)
TARGETS = {"unet_speedup": 2.5, "keyframe_speedup": 2.0, "rel_l2": 1e-3}

SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
"""SD1.5's UNet as ComfyUI 0.3.75 detects it (``comfy.model_detection``: the SD15 config)."""


def say(text: str) -> None:
    print(text, flush=True)


def bounded(kind: type, low: float, high: float, *, low_open: bool = False) -> Callable[[str], Any]:
    """An argparse type: ``kind`` within [low, high] (or (low, high] with ``low_open``)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value != value or value > high or value < low or (low_open and value == low):
            interval = f"{'(' if low_open else '['}{low}, {high}]"
            raise argparse.ArgumentTypeError(f"{value} is outside {interval}")
        return value

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfy", type=Path, default=DEFAULT_COMFY,
                        help=f"ComfyUI folder to import from (default: $COMFYUI_DIR or {DEFAULT_COMFY})")
    parser.add_argument("--width", type=bounded(int, 64, 2048), default=512, help="frame width in pixels (512)")
    parser.add_argument("--height", type=bounded(int, 64, 2048), default=256, help="frame height in pixels (256)")
    parser.add_argument("--steps", type=bounded(int, 1, 200), default=10, help="sampler steps (10)")
    parser.add_argument("--cfg", type=bounded(float, 0.0, 30.0, low_open=True), default=6.0, help="CFG scale (6)")
    parser.add_argument("--denoise", type=bounded(float, 0.0, 1.0, low_open=True), default=0.2,
                        help="img2img denoise (0.2)")
    parser.add_argument("--sampler", default="euler", help="ComfyUI sampler name (euler)")
    parser.add_argument("--scheduler", default="karras", help="ComfyUI scheduler name (karras)")
    parser.add_argument("--forwards", type=bounded(int, 1, 1000), default=30,
                        help="timed UNet forwards per mode (30)")
    parser.add_argument("--keyframes", type=bounded(int, 1, 100), default=5, help="timed keyframes per mode (5)")
    parser.add_argument("--seed", type=bounded(int, 0, 2**63 - 1), default=0, help="seed of weights and inputs (0)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results file (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.width % LATENT_SCALE or args.height % LATENT_SCALE:
        parser.error(f"--width and --height must be multiples of {LATENT_SCALE}, got {args.width}x{args.height}")
    if not (args.comfy / "comfy" / "model_base.py").is_file():
        parser.error(f"--comfy {args.comfy}: not a ComfyUI folder (no comfy/model_base.py)")
    return args


def import_comfy(folder: Path) -> str:
    """Put ComfyUI (first: its ``nodes.py`` must win over this repo's ``nodes``) and this repo on
    sys.path and import the ComfyUI modules the benchmark uses; returns ComfyUI's version."""
    sys.path.insert(0, str(folder.resolve()))
    sys.path.insert(1, str(REPO))
    import comfy.model_detection  # noqa: F401 - imported here so that a missing dependency fails early
    import comfy.model_management  # noqa: F401
    import comfy.model_patcher  # noqa: F401
    import comfy.patcher_extension  # noqa: F401
    import comfy.sample  # noqa: F401
    import comfy.samplers  # noqa: F401
    from comfyui_version import __version__

    return __version__


def build_sd15(device: torch.device, seed: int):
    """A ModelPatcher holding the full SD1.5 UNet (fp16, random weights), loaded on ``device``."""
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher
    from tools.harness.make_tiny_models import _init_weights

    model_config = comfy.model_detection.model_config_from_unet_config(dict(SD15_UNET))
    if type(model_config).__name__ != "SD15":
        raise RuntimeError(f"ComfyUI detected {type(model_config).__name__}, not SD15, for the SD1.5 UNet config")
    model_config.set_inference_dtype(torch.float16, None)
    model = model_config.get_model({}, "", device=device)
    torch.manual_seed(seed)
    with torch.no_grad():
        _init_weights(model.diffusion_model)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device,
                                               offload_device=comfy.model_management.unet_offload_device())
    comfy.model_management.load_models_gpu([patcher])
    return patcher


def graphed_patcher(patcher, name: str):
    """``patcher`` cloned with a UnetGraphWrapper, as ``comfy_adapter.clone_with_unet_wrapper`` installs it."""
    import comfy.patcher_extension as extension
    from core.accel.cuda_graph import UnetGraphWrapper

    def forward_wrappers(options: dict) -> list:
        return (extension.get_all_wrappers(extension.WrappersMP.APPLY_MODEL, options)
                + extension.get_all_wrappers(extension.WrappersMP.DIFFUSION_MODEL, options))

    wrapper = UnetGraphWrapper(name, forward_wrappers)
    patched = patcher.clone()
    patched.set_model_unet_function_wrapper(wrapper)
    patched.add_callback(extension.CallbacksMP.ON_PRE_RUN, wrapper.on_pre_run)
    patched.add_callback(extension.CallbacksMP.ON_CLEANUP, wrapper.on_cleanup)
    patched.add_callback(extension.CallbacksMP.ON_DETACH, wrapper.on_detach)
    return patched, wrapper


def rel_l2(reference, other) -> float:
    reference, other = reference.double(), other.double()
    return float((other - reference).norm() / reference.norm())


def timed_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Mean wall time of ``fn`` in ms, the GPU synchronised before and after the timed loop."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000 / repeats


def unet_forward(patcher, args: argparse.Namespace) -> dict[str, Any]:
    """Part (a): one apply_model at CFG batch 2, eager versus replayed from a graph."""
    from core.accel.cuda_graph import GraphCache

    device, model = patcher.load_device, patcher.model
    g = torch.Generator(device="cpu").manual_seed(args.seed)
    latent = (CFG_BATCH, 4, args.height // LATENT_SCALE, args.width // LATENT_SCALE)
    x = torch.randn(latent, generator=g).to(device)
    sigma = torch.full((CFG_BATCH,), 1.5, device=device)
    context = torch.randn((CFG_BATCH, *CONTEXT), generator=g).to(device, torch.float16)
    cache = GraphCache(lambda x, t, **c: model.apply_model(x, t, **c), tensor_conds={"c_crossattn"},
                       name="bench UNet forward")

    def eager():
        return model.apply_model(x, sigma, c_crossattn=context)

    def graph():
        return cache(x, sigma, c_crossattn=context)

    reference = eager()
    for _ in range(3):
        eager()
    eager_ms = timed_ms(eager, args.forwards)
    torch.cuda.synchronize()
    start = time.perf_counter()
    replayed = graph()
    torch.cuda.synchronize()
    first_ms = (time.perf_counter() - start) * 1000
    graph_ms = timed_ms(graph, args.forwards)
    return {"eager_ms": eager_ms, "graph_ms": graph_ms, "speedup": eager_ms / graph_ms,
            "first_call_ms": first_ms, "rel_l2": rel_l2(reference, replayed),
            "finite": bool(torch.isfinite(reference).all()), **cache.stats.as_dict()}


def keyframe(patcher, args: argparse.Namespace) -> dict[str, Any]:
    """Part (b): a whole keyframe through comfy.sample.sample, eager versus with the graph wrapper."""
    import comfy.sample

    g = torch.Generator(device="cpu").manual_seed(args.seed + 1)
    latent = torch.randn((1, 4, args.height // LATENT_SCALE, args.width // LATENT_SCALE), generator=g)
    positive = [[torch.randn((1, *CONTEXT), generator=g), {}]]
    negative = [[torch.randn((1, *CONTEXT), generator=g), {}]]
    noise = comfy.sample.prepare_noise(latent, args.seed)

    def run(model):
        return comfy.sample.sample(model, noise, args.steps, args.cfg, args.sampler, args.scheduler, positive,
                                   negative, latent, denoise=args.denoise, seed=args.seed, disable_pbar=True)

    reference = run(patcher)
    eager_ms = timed_ms(lambda: run(patcher), args.keyframes)
    graphed, wrapper = graphed_patcher(patcher, "bench keyframe")
    torch.cuda.synchronize()
    start = time.perf_counter()
    replayed = run(graphed)
    first_ms = (time.perf_counter() - start) * 1000
    graph_ms = timed_ms(lambda: run(graphed), args.keyframes)
    return {"eager_ms": eager_ms, "graph_ms": graph_ms, "speedup": eager_ms / graph_ms,
            "first_call_ms": first_ms, "rel_l2": rel_l2(reference, replayed),
            "finite": bool(torch.isfinite(reference).all()), **wrapper.cache.stats.as_dict()}


def run_part(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    say(f"== {name} ...")
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - report the part, keep the others
        traceback.print_exc()
        say(f"== {name}: FAILED: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}
    say(f"== {name}: done")
    return result


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'part':<14}{'eager ms':>10}{'graph ms':>10}{'speed-up':>10}{'rel L2':>10}  captures/replays/fallbacks"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"{name:<14}failed: {r['error']}")
            continue
        lines.append(f"{name:<14}{r['eager_ms']:>10.2f}{r['graph_ms']:>10.2f}{r['speedup']:>9.2f}x{r['rel_l2']:>10.2e}"
                     f"  {r['captures']}/{r['replays']}/{r['fallbacks']}"
                     + ("" if r["finite"] else "  (eager output not finite: random weights overflowed)"))
        lines += [f"{'':<14}fallback: {reason} ({n}x)" for reason, n in r["fallback_reasons"].items()]
    return "\n".join(lines)


def verdicts(results: dict[str, dict[str, Any]]) -> list[str]:
    """Each measured part against issue 7's targets, as one line per check."""
    checks = []
    for name, target in (("UNet forward", TARGETS["unet_speedup"]), ("keyframe", TARGETS["keyframe_speedup"])):
        r = results[name]
        if "error" in r:
            continue
        replayed = r["replays"] > 0  # a speed-up without replays measured noise, not graphs
        checks.append(f"{name} speed-up {r['speedup']:.2f}x (target >= {target}x, with replays): "
                      f"{'met' if replayed and r['speedup'] >= target else 'NOT met'}")
        checks.append(f"{name} relative L2 {r['rel_l2']:.2e} (target <= {TARGETS['rel_l2']:g}): "
                      f"{'met' if r['rel_l2'] <= TARGETS['rel_l2'] else 'NOT met'}")
        checks.append(f"{name} replays {r['replays']} (target > 0): {'met' if replayed else 'NOT met'}")
    return checks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        say(f"skipped: no CUDA device (torch {torch.__version__}); nothing was measured")
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("dream_window").setLevel(logging.INFO)
    say(f"importing ComfyUI from {args.comfy} ...")
    try:
        version = import_comfy(args.comfy)
    except ImportError as exc:
        say(f"cannot import ComfyUI from {args.comfy}: {type(exc).__name__}: {exc} "
            f"(install or carry the missing package)")
        return 1
    import comfy.model_management
    import comfy.samplers

    unknown = [f"{flag} {value!r}" for flag, value, known in
               (("--sampler", args.sampler, comfy.samplers.SAMPLER_NAMES),
                ("--scheduler", args.scheduler, comfy.samplers.SCHEDULER_NAMES)) if value not in known]
    if unknown:
        say(f"unknown {', '.join(unknown)}; see comfy/samplers.py for the names")
        return 2
    device = comfy.model_management.get_torch_device()
    say(f"building the SD1.5 UNet (fp16, random weights) on {torch.cuda.get_device_name(device)} ...")
    with torch.inference_mode():
        try:
            patcher = build_sd15(device, args.seed)
        except Exception as exc:  # noqa: BLE001 - nothing can be measured without the model
            traceback.print_exc()
            say(f"cannot build the SD1.5 UNet: {type(exc).__name__}: {exc}")
            return 1
        results = {
            "UNet forward": run_part("UNet forward (batch 2, eager vs graph)",
                                     lambda: unet_forward(patcher, args)),
            "keyframe": run_part(f"keyframe ({args.steps} steps, {args.sampler}/{args.scheduler}, "
                                 f"denoise {args.denoise}, eager vs graph)",
                                 lambda: keyframe(patcher, args)),
        }
    checks = verdicts(results)
    say(table(results))
    say("\n".join(checks))
    report = {
        "device": torch.cuda.get_device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "comfyui": version,
        "config": {"width": args.width, "height": args.height, "batch": CFG_BATCH, "context": list(CONTEXT),
                   "dtype": "float16", "steps": args.steps, "cfg": args.cfg, "denoise": args.denoise,
                   "sampler": args.sampler, "scheduler": args.scheduler, "forwards": args.forwards,
                   "keyframes": args.keyframes, "seed": args.seed},
        "targets": TARGETS,
        "verdicts": checks,
        "unet_forward": results["UNet forward"],
        "keyframe": results["keyframe"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    say(f"wrote {args.out}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
