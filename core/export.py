"""Exports a run of frame files as an animated WebP (Pillow) or an MP4 (PyAV, shipped with ComfyUI).

The WebP is lossless: a lossy encoder merges near-identical neighbours, and every frame must survive.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from PIL import Image

FORMATS = {"webp": "image/webp", "mp4": "video/mp4"}
MAX_FRAMES = 5000


def export_frames(paths: Sequence[Path], fmt: str, fps: float) -> bytes:
    """Encode ``paths`` (in order) at ``fps``; raises ``ValueError`` for bad arguments."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if not paths:
        raise ValueError("no frames in that range")
    if len(paths) > MAX_FRAMES:
        raise ValueError(f"{len(paths)} frames is more than {MAX_FRAMES}; export a smaller range")
    if not 0 < fps <= 120:
        raise ValueError("fps must be in (0, 120]")
    return _webp(paths, fps) if fmt == "webp" else _mp4(paths, fps)


def _images(paths: Sequence[Path]):
    """The frames as RGB images, skipping any deleted meanwhile (retention on a running session)."""
    for path in paths:
        try:
            with Image.open(path) as img:
                yield img.convert("RGB")
        except FileNotFoundError:
            continue


def _webp(paths: Sequence[Path], fps: float) -> bytes:
    frames = list(_images(paths))
    if not frames:
        raise ValueError("the frames in that range were deleted meanwhile")
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, append_images=frames[1:], duration=round(1000 / fps),
                   loop=0, lossless=True, quality=80)
    return buf.getvalue()


def _mp4(paths: Sequence[Path], fps: float) -> bytes:
    import av  # ComfyUI's own dependency; imported here so the pack loads without it
    from fractions import Fraction

    frames = _images(paths)
    first = next(frames, None)
    if first is None:
        raise ValueError("the frames in that range were deleted meanwhile")
    width, height = first.width - first.width % 2, first.height - first.height % 2  # yuv420p needs even sizes
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4",
                                      rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for rgb in [first, *frames]:
            for packet in stream.encode(av.VideoFrame.from_image(rgb.crop((0, 0, width, height)))):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()
