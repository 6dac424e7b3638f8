"""Writes each frame to disk exactly once, off the caller's thread.

Frames go to ``<folder>/frame_<index>.png`` (one PNG encode each, written atomically) and
older frames beyond the retention limit are deleted. Callbacks tell the playback side which
frames now exist and which are gone.
"""

from __future__ import annotations

import io
import logging
import queue
import re
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .atomic import atomic_write_bytes

log = logging.getLogger("dream_window")

FRAME_RE = re.compile(r"^frame_(\d{8})\.png$")


def frame_name(index: int) -> str:
    return f"frame_{index:08d}.png"


def to_uint8(images) -> np.ndarray:
    """ComfyUI IMAGE ``[B, H, W, C]`` floats in 0..1 → uint8 numpy (rounded, clamped)."""
    return images.detach().to("cpu", torch.float32).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).numpy()


def encode_png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class FrameWriter:
    """One background thread per session folder; ``submit`` never blocks on disk."""

    def __init__(self, folder: Path, retention: int,
                 on_written: Callable[[list[tuple[int, str]]], None] = lambda frames: None,
                 on_pruned: Callable[[int], None] = lambda oldest_kept: None):
        self.folder = Path(folder)
        self.retention = retention
        self.on_written = on_written
        self.on_pruned = on_pruned
        self.error: OSError | None = None
        self.last_written: int | None = None
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"dream_window-frames-{self.folder.parent.name}",
                                        daemon=True)
        self._thread.start()

    def submit(self, first_index: int, frames: np.ndarray) -> None:
        """Queue ``frames`` (uint8 ``[B, H, W, C]``) as indices ``first_index ...``."""
        self._queue.put((first_index, frames))

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
            first, frames = item
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                written = []
                for offset, frame in enumerate(frames):
                    path = self.folder / frame_name(first + offset)
                    atomic_write_bytes(path, encode_png(frame))
                    written.append((first + offset, str(path)))
                    self.last_written = first + offset
                self.on_written(written)
                self._prune()
                self.error = None
            except OSError as exc:
                log.error("dream_window: writing frames to %s failed: %s", self.folder, exc)
                self.error = exc

    def _prune(self) -> None:
        if self.last_written is None:
            return
        oldest_kept = self.last_written - self.retention + 1
        for path in self.folder.iterdir():
            match = FRAME_RE.match(path.name)
            if match and int(match.group(1)) < oldest_kept:
                path.unlink(missing_ok=True)
        self.on_pruned(oldest_kept)
