"""Synthesises small random-weight model files with ComfyUI's own classes (never downloads).

    python tools/harness/make_tiny_models.py --comfy <ComfyUI dir> --models <models dir> [taesd] [sd15] [clip_vision] [full_sd15]

* ``taesd``       vae_approx/taesd_{encoder,decoder}.safetensors (VAELoader "taesd")
* ``sd15``        checkpoints/dream_window_tiny_sd15.safetensors: a 1-level UNet that ComfyUI
                  detects as SD1.5, CLIP-L text encoder, TAESD as the checkpoint's VAE
* ``clip_vision`` clip_vision/dream_window_tiny_vitl.safetensors (random ViT-L/14, the smallest
                  configuration ComfyUI detects)
* ``full_sd15``   checkpoints/dream_window_full_sd15.safetensors: the full SD1.5 architecture (UNet,
                  CLIP-L text encoder, KL VAE) in fp16, about 2 GB, for benchmarks; built on the GPU
                  when there is one (its seeded weights then differ from a CPU build)

Weights are seeded, so the files are identical from run to run. Frames made with them are
abstract noise-like patterns: these files only exercise the code paths, they draw nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

TINY_SD15 = "dream_window_tiny_sd15.safetensors"
TINY_CLIP_VISION = "dream_window_tiny_vitl.safetensors"
FULL_SD15 = "dream_window_full_sd15.safetensors"
SD15_UNET = {"image_size": 32, "in_channels": 4, "model_channels": 320, "out_channels": 4,
             "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4], "num_heads": 8,
             "use_spatial_transformer": True, "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
             "transformer_depth_middle": 1, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
             "context_dim": 768, "use_linear_in_transformer": False, "legacy": False, "adm_in_channels": None}
"""The UNet configuration ComfyUI detects in an SD1.5 checkpoint."""
SD15_VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
            "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
"""The KL autoencoder configuration of SD1.x (ComfyUI's default VAE)."""


def _init_weights(module) -> None:
    """ComfyUI's layers skip initialisation (``disable_weight_init``); give them real random weights."""
    import torch

    for m in module.modules():
        for base in (torch.nn.Conv2d, torch.nn.Linear, torch.nn.Embedding, torch.nn.GroupNorm, torch.nn.LayerNorm):
            if isinstance(m, base):
                base.reset_parameters(m)
                break


def _taesd_state(torch, taesd_mod):
    enc, dec = taesd_mod.Encoder(), taesd_mod.Decoder()
    _init_weights(enc)
    _init_weights(dec)
    # Plain random init decodes to all-black frames; calibrate the last conv for visible structure.
    last = [m for m in dec.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.bias.zero_()
        spread = float(dec(torch.randn(1, 4, 16, 16)).std())
        last.weight.mul_(0.15 / max(spread, 1e-6))
        last.bias.fill_(0.5)
    return enc.state_dict(), dec.state_dict()


def make_taesd(models: Path) -> None:
    import torch
    import comfy.taesd.taesd as taesd_mod
    from safetensors.torch import save_file

    enc, dec = _taesd_state(torch, taesd_mod)
    out = models / "vae_approx"
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in enc.items()}, str(out / "taesd_encoder.safetensors"))
    save_file({k: v.contiguous() for k, v in dec.items()}, str(out / "taesd_decoder.safetensors"))


def make_sd15(models: Path) -> None:
    import torch
    import comfy.ops
    import comfy.sd1_clip
    import comfy.taesd.taesd as taesd_mod
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from safetensors.torch import save_file

    unet = UNetModel(image_size=32, in_channels=4, model_channels=320, out_channels=4, num_res_blocks=[1],
                     channel_mult=[1], num_heads=8, use_spatial_transformer=True,
                     transformer_depth=[1], transformer_depth_output=[1, 1], transformer_depth_middle=-1,
                     context_dim=768, use_linear_in_transformer=False, legacy=False,
                     operations=comfy.ops.disable_weight_init)
    _init_weights(unet)
    clip = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32)
    _init_weights(clip)
    enc, dec = _taesd_state(torch, taesd_mod)
    sd = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    sd.update({f"cond_stage_model.{k}": v for k, v in clip.state_dict().items()})
    sd.update({f"first_stage_model.taesd_encoder.{k}": v for k, v in enc.items()})
    sd.update({f"first_stage_model.taesd_decoder.{k}": v for k, v in dec.items()})
    sd["first_stage_model.vae_scale"] = torch.tensor(0.18215)
    sd["first_stage_model.vae_shift"] = torch.tensor(0.0)
    out = models / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().to(torch.float16 if v.is_floating_point() and "position_ids" not in k else v.dtype)
               for k, v in sd.items()}, str(out / TINY_SD15))


def make_clip_vision(models: Path) -> None:
    import json
    import torch
    import comfy.clip_model
    import comfy.clip_vision
    import comfy.ops
    from safetensors.torch import save_file

    config_path = Path(comfy.clip_vision.__file__).parent / "clip_vision_config_vitl.json"
    config = json.loads(config_path.read_text())
    model = comfy.clip_model.CLIPVisionModelProjection(config, torch.float32, "cpu", comfy.ops.disable_weight_init)
    _init_weights(model)
    # CLIP's own small init (std 0.02): default init overflows fp16 over 24 layers and gives NaN.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2 or name.endswith("class_embedding"):
                param.normal_(0.0, 0.02)
    out = models / "clip_vision"
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().half() if v.is_floating_point() else v.contiguous()
               for k, v in model.state_dict().items()}, str(out / TINY_CLIP_VISION))


def build_device():
    """Where the big random models are built: the GPU when there is one (fast init), in fp16."""
    import torch

    return ("cuda", torch.float16) if torch.cuda.is_available() else ("cpu", torch.float32)


def vae_state(kind: str) -> dict:
    """A random-weight VAE state dict that ``comfy.sd.VAE(sd=...)`` loads: ``taesd`` (as
    ComfyUI's VAELoader assembles it) or ``kl`` (the full SD1.5 KL autoencoder)."""
    import torch

    if kind == "taesd":
        import comfy.taesd.taesd as taesd_mod

        enc, dec = _taesd_state(torch, taesd_mod)
        sd = {f"taesd_encoder.{k}": v for k, v in enc.items()}
        sd.update({f"taesd_decoder.{k}": v for k, v in dec.items()})
        sd["vae_scale"] = torch.tensor(0.18215)
        sd["vae_shift"] = torch.tensor(0.0)
        return sd
    if kind == "kl":
        from comfy.ldm.models.autoencoder import AutoencoderKL

        device, dtype = build_device()
        vae = AutoencoderKL(ddconfig=dict(SD15_VAE), embed_dim=4).to(device, dtype)
        _init_weights(vae)
        return vae.state_dict()
    raise ValueError(f"unknown VAE kind {kind!r}; choose taesd or kl")


def make_full_sd15(models: Path) -> None:
    import comfy.ops
    import comfy.sd1_clip
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from safetensors.torch import save_file

    device, dtype = build_device()
    unet = UNetModel(**SD15_UNET, dtype=dtype, device=device, operations=comfy.ops.disable_weight_init)
    _init_weights(unet)
    sd = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    del unet
    clip = comfy.sd1_clip.SDClipModel(device=device, dtype=dtype)
    _init_weights(clip)
    sd.update({f"cond_stage_model.{k}": v for k, v in clip.state_dict().items()})
    sd.update({f"first_stage_model.{k}": v for k, v in vae_state("kl").items()})
    out = models / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to("cpu", torch.float16 if v.is_floating_point() and "position_ids" not in k else v.dtype)
               .contiguous() for k, v in sd.items()}, str(out / FULL_SD15))


MAKERS = {"taesd": make_taesd, "sd15": make_sd15, "clip_vision": make_clip_vision, "full_sd15": make_full_sd15}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfy", required=True, help="ComfyUI folder (for its model classes)")
    parser.add_argument("--models", required=True, help="models folder to write into")
    parser.add_argument("kinds", nargs="*", default=["taesd", "sd15"], choices=sorted(MAKERS))
    args = parser.parse_args(argv)
    models = Path(args.models).resolve()  # before the chdir below
    sys.path.insert(0, str(Path(args.comfy).resolve()))
    os.chdir(args.comfy)
    import torch
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = not torch.cuda.is_available()

    for kind in args.kinds:
        torch.manual_seed(1234)
        MAKERS[kind](models)
        print(f"made {kind} in {args.models}")


if __name__ == "__main__":
    main()
