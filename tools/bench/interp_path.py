"""Interpolation path: the pack's slerp + one batched VAE decode of N frames versus the
replaced controller's per-frame path, same VAE, same device, in one process.

* **batched** (the pack): ``core.loop.interpolation.interpolate`` of the two keyframe latents
  (on ComfyUI's intermediate device, where KSampler leaves them), ``VAE.decode`` of the whole
  batch (what the workflow's VAE Decode node does), ``core.loop.frames.FrameBatch`` (uint8 on the
  device, one copy to the host). The PNG encode
  of each frame runs in the loop's frame writer thread, off the executor: it is shown apart
  and a second ratio includes it;
* **original** (``docs/design.md`` §1.1, per interpolated frame, rebuilt in ``replaced_controller.py``):
  slerp parameters once per pair then one slerp call per frame on the device, one VAE decode
  per frame with post-processing to uint8 on the device and a host copy, a PNG encode
  (``compress_level=1``) and a PNG decode (the display's), in memory.

VAEs: ComfyUI's TAESD and the full SD1.5 KL autoencoder, random weights built with ComfyUI's
own classes (``tools/harness/make_tiny_models.vae_state``), fp16 on CUDA, fp32 on the CPU. Each
repeat runs both paths back to back (alternating which goes first) after one warm-up of each.

Prints per-frame component times (median over repeats) and the speed-up, and writes
``tools/bench/results/interp_path.json``. Target on a GPU: the batched path >= 5x faster per frame.

Run: ``python tools/bench/interp_path.py`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np
import replaced_controller
import torch
from common import (
    comfy_vae,
    fmt,
    frame_size,
    import_comfy,
    median,
    output_arg,
    positive_int,
    print_table,
    ratio,
    timed_ms,
    write_results,
)

from core.loop import interpolation
from core.loop.frames import FrameBatch, encode_png

VAE_KINDS = ("taesd", "kl")
TARGET_SPEEDUP = 5.0
CPU_SIZES = {"taesd": (128, 64), "kl": (32, 16)}
GPU_SIZE = (512, 256)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; nonsense values are refused, device-dependent defaults filled in."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=positive_int, nargs="+", default=[10, 32, 64],
                        help="interpolated frames per keyframe pair, N (default 10 32 64)")
    parser.add_argument("--vaes", nargs="+", default=list(VAE_KINDS),
                        help=f"VAEs to measure (default: {' '.join(VAE_KINDS)})")
    parser.add_argument("--taesd-size", type=frame_size,
                        help="TAESD frame size WxH (default 512x256 on CUDA, 128x64 on the CPU)")
    parser.add_argument("--kl-size", type=frame_size,
                        help="KL VAE frame size WxH (default 512x256 on CUDA, 32x16 on the CPU)")
    parser.add_argument("--repeats", type=positive_int, help="timed repeats per N (default 5 on CUDA, 2 on the CPU)")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads; 0 keeps torch's default (default: 0 with CUDA; 1 without, since "
                             "on a shared CPU intra-op threads make the many small per-frame calls hostage to "
                             "every other process)")
    parser.add_argument("--seed", type=int, default=0, help="RNG seed of the latents and weights (0)")
    output_arg(parser, "interp_path")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.vaes) - set(VAE_KINDS))
    if unknown:
        parser.error(f"unknown VAEs {unknown}; valid: {', '.join(VAE_KINDS)}")
    if args.threads is not None and args.threads < 0:
        parser.error("--threads must be >= 0")
    return args


def batched_path(vae, a: torch.Tensor, b: torch.Tensor, count: int) -> dict[str, float]:
    """The pack's path for ``count`` frames; component times in ms for the whole batch."""
    latents, slerp_ms = timed_ms(lambda: interpolation.interpolate(a[0], b[0], count), a.device)
    images, decode_ms = timed_ms(lambda: vae.decode(latents), vae.device)
    frames, uint8_ms = timed_ms(lambda: np.asarray(FrameBatch(images)))
    _, write_ms = timed_ms(lambda: [encode_png(frame) for frame in frames])
    return {"slerp": slerp_ms, "decode": decode_ms, "uint8": uint8_ms, "png_encode_off_thread": write_ms}


def original_path(vae, a: torch.Tensor, b: torch.Tensor, count: int) -> dict[str, float]:
    """The replaced controller's path for ``count`` frames; component times in ms summed over frames."""
    def slerps() -> list[torch.Tensor]:
        pair = replaced_controller.SlerpPair.of(a, b)
        return [replaced_controller.slerp_frame(pair, t) for t in replaced_controller.frame_times(count)]

    latents, slerp_ms = timed_ms(slerps, vae.device)
    images, decode_ms = timed_ms(lambda: [replaced_controller.decode_frame(vae, z) for z in latents], vae.device)
    pngs, encode_ms = timed_ms(lambda: [replaced_controller.png_encode(image) for image in images])
    _, decode_png_ms = timed_ms(lambda: [replaced_controller.png_decode(data) for data in pngs])
    return {"slerp": slerp_ms, "decode": decode_ms, "png_encode": encode_ms, "png_decode": decode_png_ms}


def keyframes(vae, size: tuple[int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two related keyframe latents ``[1, C, h, w]`` (the second a low-denoise variation)."""
    import comfy.model_management as mm

    gen = torch.Generator().manual_seed(seed)
    shape = (1, vae.latent_channels, size[1] // 8, size[0] // 8)
    a = torch.randn(shape, generator=gen)
    b = 0.8 * a + 0.6 * torch.randn(shape, generator=gen)
    return a.to(mm.intermediate_device()), b.to(mm.intermediate_device())


def measure(vae, size: tuple[int, int], counts: list[int], repeats: int, seed: int) -> list[dict]:
    """Both paths at every N: per-frame medians of each component and of the totals."""
    a, b = keyframes(vae, size, seed)
    a_dev, b_dev = (x.to(vae.device, vae.vae_dtype) * replaced_controller.SCALE for x in (a, b))
    paths: dict[str, Callable[[int], dict[str, float]]] = {
        "batched": lambda n: batched_path(vae, a, b, n),
        "original": lambda n: original_path(vae, a_dev, b_dev, n),
    }
    for run in paths.values():
        run(2)
    rows = []
    for count in counts:
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
        for r in range(repeats):
            for name in (list(paths) if r % 2 == 0 else list(reversed(paths))):
                samples[name].append(paths[name](count))
        row: dict = {"frames": count}
        for name, runs in samples.items():
            components = {key: median(run[key] / count for run in runs) for key in runs[0]}
            executor = median(sum(v for k, v in run.items() if k != "png_encode_off_thread") / count for run in runs)
            row[name] = {"per_frame_ms": components, "total_ms_per_frame": executor,
                         "total_with_write_ms_per_frame": median(sum(run.values()) / count for run in runs)}
        row["speedup"] = ratio(row["original"]["total_ms_per_frame"], row["batched"]["total_ms_per_frame"])
        row["speedup_with_write"] = ratio(row["original"]["total_ms_per_frame"],
                                          row["batched"]["total_with_write_ms_per_frame"])
        rows.append(row)
        print(f"  {count} frames: {fmt(row['speedup'])}x", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Measure both sides, print the tables, write the JSON; returns the exit status."""
    args = parse_args(argv)
    device = import_comfy()
    threads = args.threads if args.threads is not None else (0 if torch.cuda.is_available() else 1)
    if threads:
        torch.set_num_threads(threads)
    from tools.harness.make_tiny_models import vae_state

    cuda = device.startswith("cuda")
    repeats = args.repeats or (5 if cuda else 2)
    sizes = {"taesd": args.taesd_size, "kl": args.kl_size}
    results: dict = {"device": device, "repeats": repeats, "frames": args.frames,
                     "cpu_threads": torch.get_num_threads(), "vaes": {}}
    for kind in args.vaes:
        size = sizes[kind] or (GPU_SIZE if cuda else CPU_SIZES[kind])
        torch.manual_seed(args.seed)
        vae = comfy_vae(vae_state(kind))
        print(f"{kind} VAE at {size[0]}x{size[1]} on {device} ({vae.vae_dtype}), {repeats} repeats, "
              f"{torch.get_num_threads()} CPU threads", flush=True)
        results["vaes"][kind] = {"size": list(size), "dtype": str(vae.vae_dtype),
                                 "rows": measure(vae, size, args.frames, repeats, args.seed)}
        del vae
    component_rows, summary_rows = [], []
    for kind, data in results["vaes"].items():
        size = "x".join(map(str, data["size"]))
        for row in data["rows"]:
            ours, theirs = row["batched"]["per_frame_ms"], row["original"]["per_frame_ms"]
            component_rows.append([kind, size, row["frames"], "batched", fmt(ours["slerp"], 3), fmt(ours["decode"]),
                                   fmt(ours["uint8"], 3), f"({fmt(ours['png_encode_off_thread'])})", "-",
                                   fmt(row["batched"]["total_ms_per_frame"])])
            component_rows.append([kind, size, row["frames"], "original", fmt(theirs["slerp"], 3),
                                   fmt(theirs["decode"]), "in decode", fmt(theirs["png_encode"]),
                                   fmt(theirs["png_decode"]), fmt(row["original"]["total_ms_per_frame"])])
            summary_rows.append([kind, size, row["frames"], fmt(row["batched"]["total_ms_per_frame"]),
                                 fmt(row["original"]["total_ms_per_frame"]), fmt(row["speedup"], 1, "x"),
                                 fmt(row["batched"]["total_with_write_ms_per_frame"]),
                                 fmt(row["speedup_with_write"], 1, "x")])
    print_table(f"ms per frame, median of {repeats} ({device}); (…) = PNG write, off the executor thread in the loop",
                ["VAE", "size", "N", "path", "slerp", "decode", "to uint8", "PNG enc", "PNG dec", "total"],
                component_rows)
    print_table(f"speed-up per frame (target on a GPU: >= {TARGET_SPEEDUP:g}x)",
                ["VAE", "size", "N", "batched ms", "original ms", "speed-up", "batched+write ms", "speed-up"],
                summary_rows)
    write_results(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
