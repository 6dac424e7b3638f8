"""Plays a session's frames at its frame rate and publishes them.

One thread per session ticks the ``Player`` (absolute clock, strict order) and, for each
frame due, re-points ``current_frame.png`` at the frame's file (hard link + ``os.replace``,
no re-encode) and tells subscribers (websocket events, MJPEG streams). Once a second it
writes ``status.json`` atomically: while it runs, this thread is the session's only status writer
(before it starts, a server start writes an interrupted session's status once: ``write_status``).

A new publisher (after a server start) plays on from the first frame on disk that was not
shown yet: the frame ``current_frame.png`` shows is the last one played.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from PIL import Image

from ..atomic_files import atomic_link, atomic_write_bytes
from ..loop.frames import frames_on_disk, shown_frame, unplayed_run
from .playback import DEFAULT_FPS, DEFAULT_MIN_BUFFER_SECONDS, DEFAULT_TARGET_SECONDS, Frame, Player
from .status import status_json_bytes

log = logging.getLogger("dream_window")

TICK = 0.01
STATUS_INTERVAL = 1.0
JPEG_CACHE = 8
STATUS_FILE = "status.json"
CURRENT_FRAME_FILE = "current_frame.png"


def player_from_disk(folder: Path, frames_dir: Path | None, next_frame: int, fps: float, target_seconds: float,
                     min_buffer_seconds: float) -> Player:
    """A player holding the frames in ``frames_dir`` that were not shown yet (``folder``'s current frame
    is the last one shown), the first of them next; ``next_frame`` is the index the session's next
    frame gets."""
    on_disk = frames_on_disk(Path(frames_dir)) if frames_dir is not None else {}
    unplayed = unplayed_run(on_disk, shown_frame(on_disk, Path(folder) / CURRENT_FRAME_FILE), next_frame)
    player = Player(fps=fps, target_seconds=target_seconds, min_buffer_seconds=min_buffer_seconds,
                    start_index=unplayed[0][0] if unplayed else next_frame)
    player.add_frames(unplayed)
    return player


def write_status(path: Path, status: dict) -> None:
    """Write a status document atomically (the file external widgets read)."""
    atomic_write_bytes(path, status_json_bytes(status))


class Publisher:
    """Paced playback + publishing for one session (see the module docstring)."""

    def __init__(self, folder: Path, status_source: Callable[[Player], dict],
                 on_frame: Callable[[Frame], None] = lambda frame: None,
                 on_status: Callable[[dict], None] = lambda status: None,
                 fps: float = DEFAULT_FPS, target_seconds: float = DEFAULT_TARGET_SECONDS,
                 min_buffer_seconds: float = DEFAULT_MIN_BUFFER_SECONDS,
                 frames_dir: Path | None = None, next_frame: int = 1):
        """``frames_dir`` holds the session's frames so far, ``next_frame`` is the index its next frame
        gets: the frames on disk that were not shown yet are played first."""
        self.folder = Path(folder)
        self.current_link = self.folder / CURRENT_FRAME_FILE
        self.status_path = self.folder / STATUS_FILE
        self.status_source = status_source
        self.on_frame = on_frame
        self.on_status = on_status
        self.player = player_from_disk(self.folder, frames_dir, next_frame, fps, target_seconds, min_buffer_seconds)
        self.settings = (fps, target_seconds, min_buffer_seconds)
        self.last_status: dict | None = None
        self._subscribers: dict[int, Callable[[Frame], None]] = {}
        self._jpegs: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"dream_window-play-{self.folder.name}", daemon=True)
        self._thread.start()

    def configure(self, fps: float, target_seconds: float, min_buffer_seconds: float) -> None:
        """Apply new playback settings; the buffer and the frames shown carry over."""
        if (fps, target_seconds, min_buffer_seconds) != self.settings:
            self.player.configure(fps, target_seconds, min_buffer_seconds)
            self.settings = (fps, target_seconds, min_buffer_seconds)

    def frames_written(self, frames: list[tuple[int, str]]) -> None:
        """Frames are on disk (called by the frame writer's thread)."""
        self.player.add_frames(frames)

    def first_unplayed(self) -> int | None:
        """The index of the next frame to show (what the frame writer must keep)."""
        return self.player.metrics().next_index

    def latest(self) -> Frame | None:
        return self.player.latest()

    def subscribe(self, callback: Callable[[Frame], None]) -> int:
        with self._lock:
            key = id(callback)
            self._subscribers[key] = callback
            return key

    def unsubscribe(self, key: int) -> None:
        with self._lock:
            self._subscribers.pop(key, None)

    def viewers(self) -> int:
        """Subscribers (open streams) now."""
        with self._lock:
            return len(self._subscribers)

    def jpeg(self, frame: Frame, quality: int = 85) -> bytes:
        """The frame as JPEG (for MJPEG streams), encoded once and shared by every viewer."""
        with self._lock:
            cached = self._jpegs.get(frame.index)
        if cached is not None:
            return cached
        with Image.open(frame.path) as img:
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="JPEG", quality=quality)
        data = buf.getvalue()
        with self._lock:
            self._jpegs[frame.index] = data
            while len(self._jpegs) > JPEG_CACHE:
                self._jpegs.popitem(last=False)
        return data

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        next_status = 0.0
        while not self._stop.is_set():
            frame = self.player.tick()
            if frame is not None:
                self._publish(frame)
            now = time.monotonic()
            if now >= next_status:
                next_status = now + STATUS_INTERVAL
                self._write_status()
            if frame is None:
                self._stop.wait(TICK)

    def _publish(self, frame: Frame) -> None:
        try:
            atomic_link(frame.path, self.current_link)
        except FileNotFoundError:
            return  # deleted by someone else: retention keeps every frame until it was played
        except OSError as exc:
            log.error("dream_window: cannot update %s: %s", self.current_link, exc)
            return
        self.on_frame(frame)
        with self._lock:
            subscribers = list(self._subscribers.values())
        for callback in subscribers:
            callback(frame)

    def _write_status(self) -> None:
        try:
            status = self.status_source(self.player)
            write_status(self.status_path, status)
            self.last_status = status
            self.on_status(status)
        except Exception as exc:  # the publisher must outlive a bad status or a full disk
            log.error("dream_window: cannot write %s: %s", self.status_path, exc)
