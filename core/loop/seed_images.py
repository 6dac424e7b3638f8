"""Seed images: finding them, loading them and fitting them to the loop's resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

SEED_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def seed_files(folder: Path) -> list[Path]:
    """The seed images in ``folder`` (PNG, JPEG, WebP), sorted by name.

    Raises ``FileNotFoundError`` saying what is missing: the folder, or any image in it.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"seed folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SEED_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"seed folder {folder} holds no .png/.jpg/.jpeg/.webp image")
    return files


def load_image(path: Path) -> torch.Tensor:
    """An image file as ComfyUI IMAGE ``[1, H, W, 3]`` float32 in 0..1 (EXIF rotation applied)."""
    with Image.open(path) as img:
        rgb = ImageOps.exif_transpose(img).convert("RGB")
        arr = np.asarray(rgb, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).unsqueeze(0)


def fit_image(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize an IMAGE batch to ``width``×``height`` with Lanczos and no crop."""
    if image.shape[1] == height and image.shape[2] == width:
        return image[..., :3]
    out = []
    for frame in image[..., :3]:
        pil = Image.fromarray(frame.clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy())
        out.append(torch.from_numpy(np.asarray(pil.resize((width, height), Image.LANCZOS), dtype=np.float32) / 255.0))
    return torch.stack(out)
