"""Writes each frame to disk exactly once, off the caller's thread.

Frames go to ``<folder>/frame_<index>.png`` (one PNG encode each, written atomically). A
callback tells the playback side which frames now exist. Retention deletes played frames
only: every frame not yet played stays, and ``retention`` played frames before it.
"""

from __future__ import annotations

import filecmp
import json
import logging
import os
import queue
import re
import struct
import threading
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..atomic_files import atomic_write_bytes

log = logging.getLogger("dream_window")

FRAME_RE = re.compile(r"^frame_(\d{8})\.png$")


def frame_name(index: int) -> str:
    return f"frame_{index:08d}.png"


def oldest_kept(last_written: int, first_unplayed: int | None, retention: int) -> int:
    """The oldest frame index retention keeps: ``retention`` frames before the first unplayed one
    (before the newest frame's successor when every frame was played or none is known)."""
    end = last_written + 1 if first_unplayed is None else min(first_unplayed, last_written + 1)
    return end - retention


def frames_on_disk(folder: Path) -> dict[int, Path]:
    """The frame files in ``folder`` by index (none when the folder is missing)."""
    if not folder.is_dir():
        return {}
    return {int(match.group(1)): path for path in folder.iterdir() if (match := FRAME_RE.match(path.name))}


def select_frames(frames: dict[int, Path], first: int, last: int, stride: int) -> list[int]:
    """The indices of ``frames`` from ``first`` to ``last`` (inclusive; ``last`` -1: the newest
    frame), every ``stride``-th counted from ``first``. Raises ``ValueError`` saying what is on disk
    when none is in the range."""
    if stride < 1:
        raise ValueError(f"stride must be at least 1, got {stride}")
    if not frames:
        raise ValueError("the session has no frames on disk")
    end = max(frames) if last < 0 else last
    chosen = [index for index in sorted(frames) if first <= index <= end and (index - first) % stride == 0]
    if not chosen:
        raise ValueError(f"no frame from {first} to {end} (stride {stride}) is on disk; the session holds frames "
                         f"{min(frames)} to {max(frames)} (older played frames are deleted beyond the retention)")
    return chosen


def shown_frame(frames: dict[int, Path], current: Path) -> int | None:
    """The index of the frame ``current`` (``current_frame.png``) shows: the same file (a hard link)
    or, where links were copied, the same bytes; the newest match wins. None if none matches."""
    if not current.is_file():
        return None
    for index in sorted(frames, reverse=True):
        try:
            if os.path.samefile(frames[index], current) or filecmp.cmp(frames[index], current, shallow=False):
                return index
        except FileNotFoundError:
            continue
    return None


def unplayed_run(frames: dict[int, Path], shown: int | None, next_frame: int) -> list[tuple[int, str]]:
    """Frames on disk that playback still owes after a restart, as ``(index, path)``: the run of
    consecutive frames that ends at the session's newest frame (``next_frame - 1``) and starts after
    the frame shown last (or, when none is known, at the oldest frame of that run).

    Frames from ``next_frame`` on belong to a keyframe the session makes again, and a frame below
    a hole cannot be played before the frames after it, so neither is returned.
    """
    first = next_frame
    while first - 1 in frames and (shown is None or first - 1 > shown):
        first -= 1
    return [(index, str(frames[index])) for index in range(first, next_frame)]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE ``[B, H, W, C]`` floats in 0..1 → uint8 (rounded, clamped), on the images' device;
    frames already uint8 (the pack's decode) are returned as they are.

    One temporary, rounded and clamped in place: several times faster than a chain of
    out-of-place ops on a batch of frames, with the same result."""
    if images.dtype == torch.uint8:
        return images
    scaled = images.detach().to(torch.float32).mul(255.0)
    return scaled.clamp_(0.0, 255.0).round_().to(torch.uint8)


def to_image(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames ``[B, H, W, C]`` → a ComfyUI IMAGE (float32 in 0..1) on their device; an IMAGE is
    returned as it is."""
    return frames.to(torch.float32).div_(255.0) if frames.dtype == torch.uint8 else frames


CONVERT_ON_WRITER, PINNED_COPY, PLAIN_COPY = "convert on the writer", "pinned copy", "plain copy"


def host_transfer(device: torch.device | str) -> str:
    """How a batch on ``device`` reaches the writer as uint8, in one copy: on the CPU the conversion is
    the copy and runs on the writer thread; on CUDA the frames are made uint8 there and copied
    asynchronously into pinned memory; any other device makes them uint8 there and copies them."""
    kind = torch.device(device).type
    return {"cpu": CONVERT_ON_WRITER, "cuda": PINNED_COPY}.get(kind, PLAIN_COPY)


class FrameBatch:
    """A decoded batch on its way to the frame writer (see ``host_transfer``): an IMAGE batch, or frames
    already uint8 ``[B, H, W, C]`` (the pack's decode, ``core.loop.decode``); the caller's thread only
    starts the work. ``np.asarray(batch)`` (on the writer) gives the uint8 frames."""

    def __init__(self, images: torch.Tensor) -> None:
        images = images.detach()
        self._copied: torch.cuda.Event | None = None
        transfer = host_transfer(images.device)
        if transfer == CONVERT_ON_WRITER:
            self._images, self._frames = images, None
            return
        frames = to_uint8(images)
        if transfer == PINNED_COPY:
            self._frames = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True)
            self._frames.copy_(frames, non_blocking=True)
            self._copied = torch.cuda.Event()
            self._copied.record()
        else:
            self._frames = frames.cpu()

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if self._frames is None:
            return to_uint8(self._images).numpy()
        if self._copied is not None:
            self._copied.synchronize()
        return self._frames.numpy()


PNG_COLOR_TYPES = {1: 0, 3: 2, 4: 6}
"""Channels → PNG colour type (grey, RGB, RGBA)."""


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_text(prompt: dict | None, extra_pnginfo: dict | None) -> bytes:
    """The ``tEXt`` chunks ComfyUI's SaveImage writes: ``prompt`` as JSON, then each key of
    ``extra_pnginfo`` (the graph editor sends ``workflow``) with its value as JSON. Dropping such a
    PNG on the graph editor loads that workflow. Built once per batch, not per frame.

    ``json.dumps`` writes ASCII only, so every chunk is plain Latin-1 ``tEXt`` (what Pillow writes
    for the same text)."""
    texts = ([("prompt", prompt)] if prompt is not None else []) + list((extra_pnginfo or {}).items())
    return b"".join(_png_chunk(b"tEXt", key.encode("latin-1") + b"\0" + json.dumps(value).encode("latin-1"))
                    for key, value in texts)


def encode_png(frame: np.ndarray, level: int = 1, text: bytes = b"") -> bytes:
    """uint8 ``[H, W, C]`` → PNG bytes: each row stored with PNG's "Up" filter (numpy), then
    deflated by ``zlib.compress`` at ``level``; ``text`` (chunks from :func:`png_text`) goes
    between the header and the pixels.

    About twice as fast as Pillow's encoder at ``compress_level=1`` for the same file size on
    dream frames (``tools/bench/frame_encode.py``): less CPU taken from the sampler per frame written.
    """
    height, width, channels = frame.shape
    rows = np.ascontiguousarray(frame, dtype=np.uint8).reshape(height, width * channels)
    filtered = np.empty((height, width * channels + 1), np.uint8)
    filtered[:, 0] = 2
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, 8, PNG_COLOR_TYPES[channels], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + text
            + _png_chunk(b"IDAT", zlib.compress(filtered.tobytes(), level)) + _png_chunk(b"IEND", b""))


_PRUNE = object()
"""Queue item: prune now (playback moved on)."""
PENDING_COMMITS = 2
"""Keyframe commits waiting behind their frames at most: the loop runs at most two iterations ahead of
what is durable, and a third ``submit`` waits on the caller's thread."""
Commit = Callable[[bool], bool]
"""A keyframe's durable commit, called on the writer after its frames with whether they were written;
returns whether they stand (False: they are deleted before playback hears of them)."""


class FrameWriter:
    """One background thread per session folder; ``submit`` never blocks on disk (only on more than
    ``PENDING_COMMITS`` commits waiting). Played frames beyond the retention are deleted after each write
    and as playback moves on (``played``)."""

    def __init__(self, folder: Path, retention: int,
                 on_written: Callable[[list[tuple[int, str]]], None] = lambda frames: None,
                 first_unplayed: Callable[[], int | None] = lambda: None):
        """``first_unplayed`` returns the index of the next frame playback shows (None: unknown, then
        the newest ``retention`` frames are kept)."""
        self.folder = Path(folder)
        self.retention = retention
        self.on_written = on_written
        self.first_unplayed = first_unplayed
        self.error: OSError | None = None
        self.last_written: int | None = None
        self._pruned_below: int | None = None
        self._prune_queued = False
        self._queue: queue.Queue = queue.Queue()
        self._commits = threading.Semaphore(PENDING_COMMITS)
        self._thread = threading.Thread(target=self._run, name=f"dream_window-frames-{self.folder.parent.name}",
                                        daemon=True)
        self._thread.start()

    def submit(self, first_index: int, frames, text: bytes = b"", commit: Commit | None = None) -> None:
        """Queue ``frames`` (uint8 ``[B, H, W, C]``, or what ``np.asarray`` makes that of: a ``FrameBatch``)
        as indices ``first_index ...``, each PNG carrying the ``text`` chunks (:func:`png_text`). With
        ``commit``, the frames are announced (``on_written``) once it made their keyframe durable."""
        if commit is not None:
            self._commits.acquire()
        self._queue.put((first_index, frames, text, commit))

    def played(self) -> None:
        """Playback moved on: prune the played frames beyond the retention (one request at a time)."""
        if not self._prune_queued:
            self._prune_queued = True
            self._queue.put(_PRUNE)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is on disk (tests and shutdown)."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, threading.Event):
                item.set()
                continue
            if item is _PRUNE:
                self._prune_queued = False
                self._prune_logged()
                continue
            self._write(*item)

    def _write(self, first: int, frames, text: bytes, commit: Commit | None) -> None:
        """Write one batch, then its commit; announce the frames that stand."""
        written = []
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for offset, frame in enumerate(np.asarray(frames)):
                path = self.folder / frame_name(first + offset)
                atomic_write_bytes(path, encode_png(frame, text=text))
                written.append((first + offset, str(path)))
            self.error = None
        except OSError as exc:
            log.error("dream_window: writing frames to %s failed: %s", self.folder, exc)
            self.error = exc
        if commit is not None:
            try:
                stands = commit(self.error is None)
            finally:
                self._commits.release()
            if not stands:
                for _, path in written:
                    Path(path).unlink(missing_ok=True)
                return
        if self.error is None:
            self.last_written = first + len(written) - 1
            self.on_written(written)
            self._prune_logged()

    def _prune_logged(self) -> None:
        try:
            self._prune()
        except OSError as exc:
            log.error("dream_window: deleting played frames in %s failed: %s", self.folder, exc)

    def _prune(self) -> None:
        """Delete played frames beyond the retention (the play position only moves on, so every
        frame below the one read here stays played)."""
        if self.last_written is None:
            return
        keep_from = oldest_kept(self.last_written, self.first_unplayed(), self.retention)
        if self._pruned_below is None:  # the first time: whatever earlier runs left
            stale = [index for index in frames_on_disk(self.folder) if index < keep_from]
        else:
            stale = range(self._pruned_below, keep_from)
        for index in stale:
            (self.folder / frame_name(index)).unlink(missing_ok=True)
        self._pruned_below = max(keep_from, self._pruned_below or keep_from)
