"""Work that finishes beside the executor: one worker thread, at most one pending job per key.

The Commit node hands a keyframe's cache analysis (embed, admit, analyse) to the worker and
returns, so the analysis overlaps the rest of the iteration, ComfyUI's gap between prompts and
the next iteration's first nodes; the next reader of that session's cache state (the keyframe
source, before its injection decision) settles the job first. A job that failed on the worker
runs once more on the settling thread: a passing fault costs one extra run, a lasting one stays
pending and fails every settle (so the loop's supervisor retries, then pauses with the error).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Hashable

log = logging.getLogger("dream_window")


class PendingJobs:
    """A single worker thread (started on first use) and each key's unsettled job."""

    def __init__(self, thread_name: str) -> None:
        self._thread_name = thread_name
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[Hashable, tuple[Callable[[], None], Future]] = {}
        self._lock = threading.Lock()

    def submit(self, key: Hashable, job: Callable[[], None]) -> None:
        """Start ``job`` on the worker; ``key``'s previous job must have been settled."""
        with self._lock:
            if key in self._pending:
                raise RuntimeError(f"{key!r}: the previous job was not settled")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._thread_name)
            self._pending[key] = (job, self._pool.submit(job))

    def pending(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._pending

    def settle(self, key: Hashable) -> None:
        """Wait for ``key``'s job; when it failed, run it again here, and when that fails too
        keep it pending and raise its error."""
        with self._lock:
            entry = self._pending.get(key)
        if entry is None:
            return
        job, future = entry
        error = future.exception()
        if error is not None:
            log.warning("dream_window: %r: background job failed (%s: %s); running it again",
                        key, type(error).__name__, error)
            job()
        with self._lock:
            if self._pending.get(key) is entry:
                del self._pending[key]

    def discard(self, key: Hashable) -> None:
        """Forget ``key``'s job once it has finished; a failure is logged, not raised."""
        with self._lock:
            entry = self._pending.pop(key, None)
        if entry is not None and entry[1].exception() is not None:
            log.warning("dream_window: %r: background job failed and was dropped: %s", key, entry[1].exception())
