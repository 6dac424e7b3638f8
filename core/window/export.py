"""Exports a run of frame files as an animated WebP (Pillow) or an MP4 (PyAV, shipped with ComfyUI),
or a whole session (state + frames) as a zip streamed from disk.

The WebP is lossless: a lossy encoder merges near-identical neighbours, and every frame must survive.
The zip is written to a non-seekable sink in bounded chunks (stored, not deflated: PNGs are compressed
already), so a session of any size takes the same memory.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import time
import zipfile
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

from PIL import Image

from ..loop.session import LATENTS_PATTERN

FORMATS = {"webp": "image/webp", "mp4": "video/mp4"}
MAX_FRAMES = 5000
ZIP_CHUNK = 256 * 1024
"""Bytes handed to the sink at a time (the zip's whole memory, with one copy buffer)."""


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


class _ChunkedSink:
    """A write-only, non-seekable file object that hands ``sink`` chunks of about ``ZIP_CHUNK`` bytes."""

    def __init__(self, sink: Callable[[bytes], None]):
        self.sink = sink
        self.buffer = bytearray()

    def write(self, data) -> int:
        self.buffer += data
        if len(self.buffer) >= ZIP_CHUNK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.buffer:
            self.sink(bytes(self.buffer))
            self.buffer.clear()


def _open_file(path: Path) -> BinaryIO | None:
    """``path`` opened for reading, or None when it is gone (retention) or is a link (never followed)."""
    try:
        return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise


def _add(archive: zipfile.ZipFile, arcname: str, source: BinaryIO) -> None:
    with source:
        stat = os.fstat(source.fileno())
        info = zipfile.ZipInfo(arcname, time.localtime(stat.st_mtime)[:6])
        info.file_size = stat.st_size
        with archive.open(info, "w") as target:
            shutil.copyfileobj(source, target, ZIP_CHUNK)


def write_session_zip(folder: Path, frames: Sequence[Path], sink: Callable[[bytes], None],
                      lock: contextlib.AbstractContextManager = contextlib.nullcontext()) -> int:
    """Write a zip of the session in ``folder`` to ``sink``: ``state.json``, the keyframe (latents)
    file it names, then ``frames`` (in order, under ``frames/``). Returns the number of frames written.

    ``state.json`` and its latents file are taken together under ``lock`` (the session's), so they
    match even while the loop commits; frames deleted meanwhile (retention) are left out.
    """
    with lock:
        with os.fdopen(os.open(folder / "state.json", os.O_RDONLY | os.O_NOFOLLOW), "rb") as file:
            state = file.read()  # a link planted in its place is an error (ELOOP), never followed
        latents_name = json.loads(state).get("latents_file")
        latents = (_open_file(folder / latents_name)
                   if isinstance(latents_name, str) and LATENTS_PATTERN.match(latents_name) else None)
    written = 0
    stream = _ChunkedSink(sink)
    with zipfile.ZipFile(stream, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("state.json", state)
        if latents is not None:
            _add(archive, latents_name, latents)
        for path in frames:
            source = _open_file(path)
            if source is not None:
                _add(archive, f"frames/{path.name}", source)
                written += 1
    stream.flush()
    return written
