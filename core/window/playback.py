"""Per-session frame buffer and paced playback on an absolute clock.

Frames are identified by a monotonic integer index assigned by the producer
when the frame exists on disk (a frame that will never exist must never get an
index, or playback waits for it forever). The producer, ComfyUI's executor
thread, hands frames to ``Player.add_frames`` (usually in batches of N+1: the
interpolations of a pair and its end keyframe); another thread calls
``Player.tick`` often (every 10 ms or so) and publishes whatever frame it
returns. All state is guarded by one lock, and nothing here sleeps: the clock
is a function (``time.monotonic`` by default) and ``tick`` takes an optional
``now``, so tests drive playback with a fake clock.

Playback rules
--------------
* **Start.** Playback starts on the first tick at which at least
  ``start_frames`` contiguous frames are ready from the play pointer:
  ``ceil(min_buffer_seconds * fps)``, default 10 s at 3.5 fps = 35 frames. Any
  ``min_buffer_seconds`` >= 0 is honoured (0 starts on the first frame), except that it is capped
  at the throttle target so the throttle can never hold the producer before
  playback can start. ``force_start`` (the producer stopped: the loop was stopped,
  paused, or reached its limit) starts with whatever is ready and plays it to the
  end; ``wait_for_buffer`` (the producer runs again) brings the minimum back for a
  playback that has not started yet.
* **Absolute clock.** With the clock anchored at time ``t0`` on frame ``k0``,
  frame ``k`` is due at ``t0 + (k - k0) / fps``, computed from the anchor each
  time rather than accumulated, so a steady stream never drifts. ``tick``
  returns frame ``k`` on the first call at or after its due time, one frame per
  call, strictly in index order: never early, never skipped.
* **Gaps and re-anchoring.** If the next frame is due but not ready, ``tick``
  returns ``None`` quietly and the player counts as buffering. When a frame is
  finally shown at least one frame interval after its due time (it arrived
  late, or the ticker itself stalled), the clock is
  re-anchored at that moment: frame ``k`` is shown now and ``k + j`` at
  ``now + j / fps``, so a stall never causes a catch-up burst. A frame shown
  less than one interval late (ordinary tick jitter) keeps the schedule.
  Playback resumes as soon as the next frame is ready; there
  is no re-buffer threshold after a gap. While the producer is stopped nothing is
  awaited: a player that has shown every frame it has is not buffering.
* **Throttle.** ``should_hold_next_iteration`` is true while
  ``seconds_buffered >= target_seconds`` (default 30 s); a target of 0 turns
  throttling off.
* **Pruning.** Played frames leave the buffer at once; only the one shown last
  is kept (``latest``), so memory is bounded by the throttled buffer.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

DEFAULT_FPS = 3.5
"""Playback frame rate, in frames per second."""

DEFAULT_TARGET_SECONDS = 30.0
"""Throttle target in seconds of buffered frames."""

DEFAULT_MIN_BUFFER_SECONDS = 10.0
"""Buffered seconds needed before playback starts."""

FPS_WINDOW_SECONDS = 10.0
"""Window over which the achieved frame rate is measured."""

PathType = str | os.PathLike[str]


@dataclass(frozen=True)
class Frame:
    """A frame ready for display: its sequence index and the file that holds it."""

    index: int
    path: str


@dataclass(frozen=True)
class BufferMetrics:
    """A consistent snapshot of the buffer and playback state."""

    frames_ready: int
    """Contiguous ready frames from the play pointer on (frames after a gap excluded)."""
    frames_pending: int
    """All received, not yet played frames, including those after a gap."""
    seconds_buffered: float
    """``frames_ready / fps``."""
    target_seconds: float
    """Throttle target in seconds; 0 when throttling is off."""
    target_frames: int
    """Throttle target in frames, ``round(target_seconds * fps)``."""
    percentage: float
    """``min(100, seconds_buffered / target_seconds * 100)``; 100 when throttling is off."""
    is_buffering: bool
    """True before playback starts and while the due frame is missing, unless the producer stopped."""
    started: bool
    frames_played: int
    """Frames shown since this player was created."""
    next_index: int | None
    """Index of the next frame to show; None until the first frame is known."""
    fps: float
    fps_achieved: float
    """Frames shown per second over the last ``FPS_WINDOW_SECONDS``."""


class Player:
    """A session's frame buffer and its paced, strictly ordered playback.

    Thread-safe: producers and the ticking thread may call any method concurrently.
    """

    def __init__(
        self,
        *,
        fps: float = DEFAULT_FPS,
        target_seconds: float = DEFAULT_TARGET_SECONDS,
        min_buffer_seconds: float = DEFAULT_MIN_BUFFER_SECONDS,
        start_index: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create an empty player.

        ``start_index`` is the index of the first frame to play; when None, the
        first frame received defines it. ``clock`` returns seconds on a
        monotonic scale and is used when ``tick``/``metrics`` get no ``now``.
        """
        self._apply(fps, target_seconds, min_buffer_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[int, Frame] = {}
        self._latest: Frame | None = None
        self._show_times: deque[float] = deque()
        self._next: int | None = start_index
        self._ready_end: int | None = start_index
        self._anchor_time = 0.0
        self._anchor_index = 0
        self._started = False
        self._force_start = False
        self._stalled = False
        self._frames_played = 0

    def _apply(self, fps: float, target_seconds: float, min_buffer_seconds: float) -> None:
        """Validate and set the pacing settings."""
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}.")
        if target_seconds < 0:
            raise ValueError(f"target_seconds must be >= 0 (0 disables throttling), got {target_seconds}.")
        if min_buffer_seconds < 0:
            raise ValueError(f"min_buffer_seconds must be >= 0, got {min_buffer_seconds}.")
        self.fps = float(fps)
        self.interval = 1.0 / self.fps
        self.target_seconds = float(target_seconds)
        self.target_frames = round(self.target_seconds * self.fps)
        start_frames = max(1, math.ceil(min_buffer_seconds * self.fps - 1e-9))
        if self.target_seconds > 0:
            start_frames = min(start_frames, max(1, math.ceil(self.target_seconds * self.fps - 1e-9)))
        self.start_frames = start_frames

    def configure(self, fps: float, target_seconds: float, min_buffer_seconds: float) -> None:
        """Change the pacing settings in place: the buffer, the frames shown and the play pointer
        stay; a running playback keeps the next frame's due time."""
        with self._lock:
            due = self._due_time() if self._started else None
            self._apply(fps, target_seconds, min_buffer_seconds)
            if due is not None:
                self._anchor_time, self._anchor_index = due, self._next

    def add_frames(self, frames: Iterable[tuple[int, PathType]]) -> None:
        """Receive ready frames as ``(index, path)`` pairs, all under one lock.

        Frames normally arrive in index order but may arrive out of order.
        Raises ``ValueError`` for an index already received or already passed by
        playback; the frames before the offending one are kept.
        """
        with self._lock:
            for index, path in frames:
                if isinstance(index, bool) or not isinstance(index, int):
                    raise ValueError(f"frame index must be an int, got {index!r}.")
                if self._next is None:
                    self._next = self._ready_end = index
                if index < self._next:
                    raise ValueError(
                        f"frame {index} arrived after playback passed it "
                        f"(next frame to play is {self._next})."
                    )
                if index in self._pending:
                    raise ValueError(f"frame {index} was already received.")
                self._pending[index] = Frame(index, os.fspath(path))
                while self._ready_end in self._pending:
                    self._ready_end += 1

    def tick(self, now: float | None = None) -> Frame | None:
        """Return the frame to show now, or None when none is due, ready or allowed."""
        with self._lock:
            if now is None:
                now = self._clock()
            if self._next is None:
                return None
            if not self._started:
                ready = self._ready_end - self._next
                if ready == 0 or (ready < self.start_frames and not self._force_start):
                    return None
                self._started = True
                self._anchor(now)
            due = self._due_time()
            if now < due:
                return None
            frame = self._pending.pop(self._next, None)
            if frame is None:
                self._stalled = True
                return None
            if now - due >= self.interval:
                self._anchor(now)
            self._next += 1
            self._stalled = False
            self._frames_played += 1
            self._latest = frame
            self._show_times.append(now)
            self._forget_show_times(now)
            return frame

    def _anchor(self, now: float) -> None:
        """Re-anchor the absolute clock so the next frame is due at ``now``."""
        self._anchor_time = now
        self._anchor_index = self._next

    def _due_time(self) -> float:
        """Clock time at which the next frame is due (playback must have started)."""
        return self._anchor_time + (self._next - self._anchor_index) / self.fps

    def force_start(self) -> None:
        """The producer stopped: start with any ready frame, without waiting for the minimum buffer,
        and count as buffering no more (nothing else is coming)."""
        with self._lock:
            self._force_start = True

    def wait_for_buffer(self) -> None:
        """The producer runs again: a playback not started yet waits for the minimum buffer."""
        with self._lock:
            self._force_start = False

    def latest(self) -> Frame | None:
        """Return the frame shown most recently, or None if none was shown yet."""
        with self._lock:
            return self._latest

    def should_hold_next_iteration(self) -> bool:
        """Return True while the buffer holds at least the target; always False for a target of 0."""
        with self._lock:
            return self.target_seconds > 0 and self._frames_ready() / self.fps >= self.target_seconds

    def _frames_ready(self) -> int:
        """Contiguous ready frames from the play pointer on."""
        return 0 if self._next is None else self._ready_end - self._next

    def metrics(self, now: float | None = None) -> BufferMetrics:
        """Snapshot of the buffer; ``now`` (default: the clock) dates the achieved fps."""
        with self._lock:
            if now is None:
                now = self._clock()
            frames_ready = self._frames_ready()
            seconds = frames_ready / self.fps
            if self.target_seconds > 0:
                percentage = min(100.0, seconds / self.target_seconds * 100.0)
            else:
                percentage = 100.0
            return BufferMetrics(
                frames_ready=frames_ready,
                frames_pending=len(self._pending),
                seconds_buffered=seconds,
                target_seconds=self.target_seconds,
                target_frames=self.target_frames,
                percentage=percentage,
                is_buffering=not self._force_start and (not self._started or self._stalled),
                started=self._started,
                frames_played=self._frames_played,
                next_index=self._next,
                fps=self.fps,
                fps_achieved=self._fps_achieved(now),
            )

    def _forget_show_times(self, now: float) -> None:
        """Drop show times that fell out of the fps window ending at ``now``."""
        while self._show_times and self._show_times[0] <= now - FPS_WINDOW_SECONDS:
            self._show_times.popleft()

    def _fps_achieved(self, now: float) -> float:
        """Frames per second shown over the window ending at ``now``."""
        self._forget_show_times(now)
        elapsed = now - self._show_times[0] if self._show_times else 0.0
        if len(self._show_times) < 2 or elapsed <= 0:
            return 0.0
        return (len(self._show_times) - 1) / elapsed
