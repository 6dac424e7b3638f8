"""The loop's re-queue logic: one supervisor per session, running on ComfyUI's event loop.

The iteration itself never queues its successor (an in-graph re-queue dies with the first
failed node). Instead the session node *attaches* each prompt it runs to the session's
supervisor, which waits for that prompt to land in ComfyUI's history and then:

* success → re-queues the stored prompt (after the autoqueue's minimum delay, while the
  session is running, below ``max_iterations`` and not held back by the playback buffer);
* error → retries with backoff up to ``MAX_RETRIES`` times, then pauses the session with
  the error recorded; a configuration error (``ConfigurationError``, a missing model file, a
  workflow the server refuses) pauses it at once, since no retry can fix it;
* interrupted (the user's Cancel) or removed from the queue (clear queue) → pauses, never retries.

Exactly one chain per session: nothing is re-queued while another prompt of the session
is queued or running. Finished prompts of the session are deleted from ComfyUI's history
(the newest one is kept for the UI). ComfyUI itself is reached only through ``LoopBackend``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Callable, Protocol

from .session import Session, strip_is_changed

log = logging.getLogger("dream_window")

MAX_RETRIES = 3
BACKOFF_BASE = 0.5
POLL_INTERVAL = 0.002
"""Seconds between looks at the watched prompts: half of it is, on average, added to the gap
between two iterations; a look is two dictionary lookups under ComfyUI's queue lock."""
HOLD_POLL = 0.5
WIND_DOWN_POLL = 0.05


class ConfigurationError(RuntimeError):
    """An error no retry can fix (a setting, a wire, a missing model or folder): the session pauses on
    the first one, with its message. Raised through ``fail``."""


def fail(node: str, message: str, retry: bool = False) -> RuntimeError:
    """An error that names the node, as users see it in ComfyUI's error dialog.

    A ``ConfigurationError`` (a setting, a wire, a missing file or folder), on which the session pauses at
    once; ``retry=True`` for an error a retry can cure (a failed disk write, a failed cache analysis),
    which the supervisor retries before it pauses.
    """
    return RuntimeError(f"{node}: {message}") if retry else ConfigurationError(f"{node}: {message}")


class ControlRefused(Exception):
    """A control call the session's state does not allow; the message says why and what to do."""


def finished_message(name: str, limit: int) -> str:
    """What a session that reached its ``max_iterations`` says when it is asked for another keyframe."""
    return (f"session {name!r} has finished: it reached max_iterations={limit}; raise max_iterations in its "
            f"Dream Window AutoQueue node (0 = endless) and queue the workflow again")


def type_name(cls: type) -> str:
    """An exception class as ComfyUI's history names it (``exception_type``): module and qualified
    name, or the bare name of a builtin."""
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


CONFIGURATION_ERRORS = frozenset({type_name(ConfigurationError), type_name(FileNotFoundError)})
"""The ``exception_type`` of the errors no retry can fix: ours, and the ``FileNotFoundError`` ComfyUI
raises for a model file that is not there. Out of memory, other I/O errors and the rest are retried."""


def retryable(error: dict | None) -> bool:
    """Whether a failed iteration is worth retrying (see ``CONFIGURATION_ERRORS``)."""
    return (error or {}).get("exception_type") not in CONFIGURATION_ERRORS


def describe_error(error: dict | None) -> str:
    """An iteration error for the log: the node id and type that failed, and the message."""
    error = error or {}
    node = " ".join(str(part) for part in (error.get("node_id"), error.get("node_type")) if part)
    return f"node {node}: {error.get('message')}" if node else str(error.get("message"))


class LoopBackend(Protocol):
    """What the supervisor needs from the server; the adapter implements it for ComfyUI."""

    def prompt_result(self, prompt_id: str) -> tuple[str, dict | None] | None:
        """``None`` while unfinished, else ``("success"|"error"|"interrupted", error_info)``."""

    def session_queued(self, session: str) -> bool:
        """Whether any queued or running prompt belongs to ``session``."""

    def prompt_queued(self, prompt_id: str) -> bool:
        """Whether ``prompt_id`` is waiting in the queue or running."""

    async def queue_prompt(self, prompt: dict, client_id: str | None, prompt_id: str,
                           extra_pnginfo: dict | None) -> None:
        """Queue through the server's own ``/prompt`` handling under the given prompt id, with the
        ``extra_pnginfo`` (the editor's workflow) the session's prompt was queued with."""

    def delete_history(self, prompt_id: str) -> None:
        """Remove a finished prompt from the server's history."""

    def drop_queued(self, session: str) -> int:
        """Remove ``session``'s prompts waiting in the queue (not the running one); how many."""


class Supervisor:
    """Re-queues one session's prompt after each iteration (see the module docstring)."""

    def __init__(self, session: Session, backend: LoopBackend,
                 hold: Callable[[], bool] = lambda: False,
                 notify: Callable[[dict], None] = lambda summary: None):
        self.session = session
        self.backend = backend
        self.hold = hold
        self.notify = notify
        self.failures = 0
        self.watching: set[str] = set()
        self.own_prompts: set[str] = set()
        self.last_finished: str | None = None
        self.iterations_started = 0
        self.last_gap: float | None = None
        self._finished_at: float | None = None
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._posting: str | None = None
        """Our prompt on its way to the queue (its POST not answered yet): the queue does not show it, so
        this stands for it when deciding whether to queue another, until the POST is answered or the prompt
        has run and ended (on a loaded server it may, before the answer)."""

    # -- called from the session node (executor thread, marshalled onto the loop) --
    def attach(self, prompt_id: str, prompt: dict, client_id: str | None, settings: dict | None,
               extra_pnginfo: dict | None = None) -> None:
        """A prompt of this session started executing (with the workflow it was queued with, if any)."""
        s = self.session
        user_started = prompt_id not in self.own_prompts
        self.own_prompts.discard(prompt_id)
        if self._finished_at is not None:
            self.last_gap = time.monotonic() - self._finished_at
        self.iterations_started += 1
        with s.lock:
            s.prompt = strip_is_changed(prompt)
            if client_id is not None:
                s.client_id = client_id
            if extra_pnginfo is not None:
                s.extra_pnginfo = extra_pnginfo
            if settings is not None:
                s.settings = s.settings.with_values(**settings)
            if user_started:
                self.failures = 0
                s.state = "running" if s.settings.enabled else "idle"
                s.error, s.paused_reason = None, None
            self._save()
        if user_started:
            self.notify(s.summary())
        self.watching.add(prompt_id)
        self._ensure_task()

    # -- control, called from routes on the loop --
    async def start(self, client_id: str | None = None) -> str:
        """Queue the stored prompt and mark the session running (``ControlRefused`` when there is no
        stored prompt, or the session has reached its ``max_iterations``)."""
        s = self.session
        with s.lock:
            if s.prompt is None:
                raise ControlRefused(f"session {s.name!r} has no stored workflow yet: queue the Dream Window "
                                     f"workflow once (Queue button or POST /prompt)")
            limit = s.settings.max_iterations
            if limit and s.iteration >= limit:
                raise ControlRefused(finished_message(s.name, limit))
            if client_id:
                s.client_id = client_id
            s.state, s.error, s.paused_reason = "running", None, None
            self._save()
        self.failures = 0
        self.notify(s.summary())
        if self._in_queue():
            return "already queued"
        return await self._queue()

    def set_state(self, state: str, reason: str | None = None) -> bool:
        """Pause or stop: takes effect at the next iteration boundary. A pause leaves a stopped or idle
        session as it is (nothing runs that could be paused): False then, else True. ``reason``: why the GPU
        monitor pauses it (kept with the state; any other change, the user's own pause included, clears it)."""
        with self.session.lock:
            if state == "paused" and self.session.state in ("stopped", "idle"):
                return False
            self.session.state = state
            self.session.paused_reason = reason if state == "paused" else None
            self._save()
        self._wake.set()
        self.notify(self.session.summary())
        return True

    async def wind_down(self, timeout: float) -> bool:
        """Before a delete or reset: drop the session's prompts waiting in the queue, then wait up to
        ``timeout`` s for its running iteration (a pause or stop lands only at the next boundary) to end.
        True once nothing of the session is queued or running."""
        name = self.session.name
        deadline = time.monotonic() + timeout
        while True:
            # Again each time: a prompt whose POST was under way lands in the queue after the first drop.
            dropped = self.backend.drop_queued(name)
            if dropped:
                log.info("dream_window[%s]: %d queued prompt(s) removed from the queue", name, dropped)
            if not self._in_queue():
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(WIND_DOWN_POLL)

    def _in_queue(self) -> bool:
        """Whether a prompt of the session is queued, running, or on its way to the queue."""
        return self._posting is not None or self.backend.session_queued(self.session.name)

    def _save(self) -> None:
        """Persist the control state; a failed write is logged, never fatal.

        The watcher and the control routes must go on (retry, pause) when ``state.json``
        cannot be written (a full disk, a broken folder, a workflow holding NaN, which JSON
        cannot store): the state in memory is current, the file keeps the last one written.
        """
        try:
            self.session.save_control()
        except (OSError, ValueError) as exc:
            fix = ("free disk space or make the folder writable" if isinstance(exc, OSError)
                   else "the workflow holds NaN or infinity in an input: fix that input")
            log.error("dream_window[%s]: cannot save %s (%s); going on with the state in memory: %s",
                      self.session.name, self.session.folder / "state.json", exc, fix)

    # -- the watcher --
    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while self.watching:
            for prompt_id in sorted(self.watching):
                result = self._result(prompt_id)
                if result is None:
                    continue
                self.watching.discard(prompt_id)
                if self._posting == prompt_id:
                    self._posting = None
                try:
                    await self._finished(prompt_id, *result)
                except Exception:  # the watcher must outlive any single bad iteration
                    log.exception("dream_window[%s]: supervisor failed handling %s", self.session.name, prompt_id)
            await asyncio.sleep(POLL_INTERVAL)

    def _result(self, prompt_id: str) -> tuple[str, dict | None] | None:
        result = self.backend.prompt_result(prompt_id)
        if result is not None or self.backend.prompt_queued(prompt_id):
            return result
        # Neither queued nor running: finished just now (history is written as it leaves the
        # queue, so look again), or removed from the queue by the user's "clear queue".
        return self.backend.prompt_result(prompt_id) or ("cleared", None)

    async def _finished(self, prompt_id: str, outcome: str, error: dict | None) -> None:
        self._finished_at = time.monotonic()
        if self.last_finished is not None:
            self.backend.delete_history(self.last_finished)
        self.last_finished = prompt_id
        await self._outcome(outcome, error)

    async def _outcome(self, outcome: str, error: dict | None) -> None:
        s = self.session
        if outcome in ("interrupted", "cleared"):
            log.info("dream_window[%s]: iteration %s by the user; session paused", s.name,
                     "cancelled" if outcome == "interrupted" else "removed from the queue")
            self.set_state("paused")
            return
        if outcome == "error":
            self.failures += 1
            with s.lock:
                s.error = dict(error or {}, retries=self.failures - 1, at=time.time())
                self._save()
            if not s.settings.enabled:
                self.failures = 0
                log.error("dream_window[%s]: iteration failed (%s); autoqueue is off, not retried",
                          s.name, describe_error(error))
                return
            if not retryable(error):
                log.error("dream_window[%s]: configuration error, which no retry can fix; session paused: %s",
                          s.name, describe_error(error))
                self.set_state("paused")
                return
            if self.failures > MAX_RETRIES:
                log.error("dream_window[%s]: iteration failed %d times; session paused: %s",
                          s.name, self.failures, describe_error(error))
                self.set_state("paused")
                return
            delay = BACKOFF_BASE * 2 ** (self.failures - 1)
            log.warning("dream_window[%s]: iteration failed (%s); retry %d/%d in %.1f s", s.name,
                        describe_error(error), self.failures, MAX_RETRIES, delay)
            await asyncio.sleep(delay)
        else:
            self.failures = 0
        await self._continue()

    async def _continue(self) -> None:
        s = self.session
        with s.lock:
            settings = s.settings
            limit = settings.max_iterations
            if s.state == "running" and limit and s.iteration >= limit:
                log.info("dream_window[%s]: reached max_iterations=%d; stopped", s.name, limit)
                s.state = "stopped"
                self._save()
                self.notify(s.summary())
        if not settings.enabled:
            return
        if settings.min_delay > 0:
            await asyncio.sleep(settings.min_delay)
        while self.hold() and self.session.state == "running":
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), HOLD_POLL)
            except asyncio.TimeoutError:
                pass
        if self.session.state != "running" or self._in_queue():
            return
        try:
            await self._queue()
        except Exception as exc:  # a rejected prompt counts as a failed iteration
            await self._outcome("error", {"message": str(exc), "node_type": "POST /prompt", "node_id": None,
                                          "exception_type": type_name(type(exc))})

    async def _queue(self) -> str:
        s = self.session
        with s.lock:
            prompt, client_id, extra_pnginfo = s.prompt, s.client_id, s.extra_pnginfo
        # The id is ours before the POST: the prompt may start (and attach) before the reply arrives.
        prompt_id = str(uuid.uuid4())
        self.own_prompts.add(prompt_id)
        self._posting = prompt_id
        try:
            await self.backend.queue_prompt(strip_is_changed(prompt), client_id, prompt_id, extra_pnginfo)
        except BaseException:
            self.own_prompts.discard(prompt_id)
            if self._posting == prompt_id:
                self._posting = None
            raise
        if self._posting != prompt_id:  # the watcher saw it end while the POST went unanswered
            return prompt_id
        self._posting = None
        # Watch it from now on: a node that fails before the session node runs must retry too.
        self.watching.add(prompt_id)
        self._ensure_task()
        return prompt_id
