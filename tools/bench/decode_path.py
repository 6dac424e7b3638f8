"""The decode path's CPU time after the sync: ComfyUI's VAE Decode against the pack's decode straight to
uint8 frames on the VAE's device, same VAE, same latents, in one process.

    python tools/bench/decode_path.py [--vaes taesd kl] [--size 512x256] [--frames 10] [--repeats 3]

Both paths decode the N in-between frames and the keyframe (N + 1 latents) until the frame writer has
its uint8 frames:

* **comfyui**: ``VAE.decode`` (what the VAE Decode node runs: the model's output copied to the
  intermediate device, ``.float()`` and the clamp there), then ``core.loop.frames.FrameBatch`` (uint8,
  on the writer's side of the loop);
* **pack**: ``core.loop.decode.VaeDecoder.frames`` (uint8 made on the VAE's device in place), then the
  same ``FrameBatch`` (one pinned copy from a GPU).

The VAE model's own decode is wrapped to time it (synchronized before and after on CUDA); a path's
**tail** is its time beyond the model: the CPU work left once the device has decoded. Reported per VAE:
medians of total, model and tail ms for the batch, the tail ratio pack / comfyui (the target is 0.5 or
less), ComfyUI's tail within the VAE Decode node alone, and the largest difference between the two paths'
frames in 0..255 levels. On CUDA (or with ``--variants``) also the pack's path with the VAE in other dtypes
and in channels-last memory format: its total and its largest difference from ComfyUI's decode of the
same VAE. Results: tools/bench/results/decode_path.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]

from common import (comfy_vae, device_sync, fmt, frame_size, import_comfy, machine_info,  # noqa: E402
                    median, output_arg, positive_int, print_table, ratio, write_results)

from core.loop.decode import vae_decoder  # noqa: E402
from core.loop.frames import FrameBatch  # noqa: E402

VAE_KINDS = ("taesd", "kl")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class TimedModel:
    """The VAE model's decode, timed: ``spent`` ms inside it since ``run`` set it to 0."""

    def __init__(self, vae) -> None:
        self.vae, self.model, self.spent = vae, vae.first_stage_model.decode, 0.0
        vae.first_stage_model.decode = self

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        device_sync(self.vae.device)
        start = time.perf_counter()
        pixels = self.model(latents)
        device_sync(self.vae.device)
        self.spent += (time.perf_counter() - start) * 1e3
        return pixels


def run(path, latents: torch.Tensor, timer: TimedModel) -> dict:
    """One decode of ``latents`` to the writer's uint8 frames: total, model and tail ms, and the frames."""
    timer.spent = 0.0
    device_sync(timer.vae.device)
    start = time.perf_counter()
    node = path(latents)
    node_ms = (time.perf_counter() - start) * 1e3
    frames = np.asarray(FrameBatch(node))
    total = (time.perf_counter() - start) * 1e3
    return {"total": total, "model": timer.spent, "tail": total - timer.spent, "node_tail": node_ms - timer.spent,
            "frames": frames}


def compare(vae, latents: torch.Tensor, repeats: int) -> dict:
    """Both paths on one VAE, alternating which goes first, after a warm-up of each."""
    import comfy.model_management as mm

    timer = TimedModel(vae)
    decoder = vae_decoder(vae, mm)
    paths = {"comfyui": vae.decode, "pack": decoder.frames}
    for path in paths.values():
        run(path, latents, timer)
    runs: dict[str, list[dict]] = {name: [] for name in paths}
    for turn in range(repeats):
        for name in (list(paths) if turn % 2 == 0 else list(reversed(paths))):
            runs[name].append(run(paths[name], latents, timer))
    result = {name: {key: median(r[key] for r in rs) for key in ("total", "model", "tail", "node_tail")}
              for name, rs in runs.items()}
    result["pack"].pop("node_tail")
    frames = {name: rs[-1]["frames"].astype(np.int16) for name, rs in runs.items()}
    result["tail_ratio"] = ratio(result["pack"]["tail"], result["comfyui"]["tail"])
    result["max_difference"] = int(np.abs(frames["pack"] - frames["comfyui"]).max())
    result["frames_shape"] = list(frames["pack"].shape)
    return result


def variants(state: dict, latents: torch.Tensor, repeats: int, dtypes: list[str]) -> list[dict]:
    """The pack's path with the VAE in each dtype, contiguous and channels-last: total ms and the largest
    difference from ComfyUI's decode of the same VAE (contiguous)."""
    import comfy.model_management as mm
    import comfy.sd

    rows = []
    for name in dtypes:
        vae = comfy.sd.VAE(sd=dict(state), dtype=DTYPES[name])
        mm.load_models_gpu([vae.patcher], force_full_load=True)
        reference = np.asarray(FrameBatch(vae.decode(latents))).astype(np.int16)
        for channels_last in (False, True):
            if channels_last:
                vae.first_stage_model.to(memory_format=torch.channels_last)
            timer = TimedModel(vae)
            decoder = vae_decoder(vae, mm)
            source = latents.to(memory_format=torch.channels_last) if channels_last else latents
            run(decoder.frames, source, timer)
            runs = [run(decoder.frames, source, timer) for _ in range(repeats)]
            rows.append({"dtype": name, "channels_last": channels_last, "total": median(r["total"] for r in runs),
                         "model": median(r["model"] for r in runs),
                         "max_difference": int(np.abs(runs[-1]["frames"].astype(np.int16) - reference).max())})
            vae.first_stage_model.decode = timer.model
        del vae
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vaes", nargs="+", choices=VAE_KINDS, default=["taesd"],
                        help="taesd (the tiny checkpoint's VAE, default) and/or kl (the full SD1.5 VAE)")
    parser.add_argument("--size", type=frame_size, default=(512, 256), help="WxH (512x256)")
    parser.add_argument("--frames", type=positive_int, default=10, help="in-between frames N (10)")
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--variants", nargs="*", choices=list(DTYPES),
                        help="dtypes for the pack's variants (default on CUDA: all; on the CPU: none)")
    output_arg(parser, "decode_path")
    args = parser.parse_args()
    device = import_comfy()
    import comfy.model_management as mm

    from tools.harness.make_tiny_models import vae_state

    dtypes = args.variants if args.variants is not None else (list(DTYPES) if device.startswith("cuda") else [])
    width, height = args.size
    results: dict = {"machine": machine_info(), "device": device, "size": [width, height], "frames": args.frames,
                     "repeats": args.repeats, "cpu_threads": torch.get_num_threads(), "vaes": {}}
    summary, variant_rows = [], []
    for kind in args.vaes:
        torch.manual_seed(0)
        state = vae_state(kind)
        vae = comfy_vae(dict(state))
        latents = torch.randn((args.frames + 1, vae.latent_channels, height // 8, width // 8),
                              generator=torch.Generator().manual_seed(1)).to(mm.intermediate_device())
        print(f"{kind} VAE at {width}x{height} on {device} ({vae.vae_dtype}), {args.frames + 1} frames, "
              f"{args.repeats} repeats", flush=True)
        data = compare(vae, latents, args.repeats)
        del vae
        data["variants"] = variants(state, latents, args.repeats, dtypes)
        results["vaes"][kind] = data
        comfy_side, pack = data["comfyui"], data["pack"]
        summary.append([kind, fmt(comfy_side["model"], 1), fmt(comfy_side["node_tail"], 2), fmt(comfy_side["tail"], 2),
                        fmt(pack["tail"], 2), fmt(data["tail_ratio"], 2, "x"), data["max_difference"]])
        variant_rows += [[kind, row["dtype"], "yes" if row["channels_last"] else "no", fmt(row["total"], 1),
                          fmt(row["model"], 1), row["max_difference"]] for row in data["variants"]]
    print_table(f"decode of {args.frames + 1} frames at {width}x{height} on {device}: ms, medians of {args.repeats} "
                f"(tail = time beyond the VAE model; target pack / ComfyUI <= 0.5)",
                ["VAE", "model", "VAE Decode node tail", "ComfyUI tail", "pack tail", "pack / ComfyUI",
                 "max diff (levels)"], summary)
    if variant_rows:
        print_table("the pack's decode by VAE dtype and memory format (max diff: against ComfyUI's decode of that VAE)",
                    ["VAE", "dtype", "channels-last", "total ms", "model ms", "max diff (levels)"], variant_rows)
    write_results(args.output, results)
    return 0


if __name__ == "__main__":
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        sys.exit(main())
