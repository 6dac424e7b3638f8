"""Process-wide Dream Window state: the session registry, supervisors and frame writers.

V3 node classes are cloned for every execution, so nothing may live on them; everything
that must outlast one prompt lives here, keyed by session name.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..core.accel.torch_threads import planned_threads, usable_cores
from ..core.loop import prompts
from ..core.loop.frames import FrameWriter
from ..core.loop.session import Session, SessionRegistry
from ..core.loop.supervisor import Supervisor
from ..core.server_settings import TORCH_THREADS
from ..core.window.playback import Frame, Player
from ..core.window.publisher import Publisher
from ..core.window.status import CacheStats, build_status
from . import comfy_adapter as comfy
from . import settings

log = logging.getLogger("dream_window")

SESSION_NODE = "DreamWindowSession"
AUTOQUEUE_NODE = "DreamWindowAutoQueue"


@dataclass(frozen=True)
class SessionHandle:
    """What flows along the DREAM_WINDOW_SESSION wire: the session's name."""

    name: str

    def __repr__(self) -> str:
        return f"DreamWindowSession({self.name!r})"


class Runtime:
    def __init__(self) -> None:
        self._registry: SessionRegistry | None = None
        self.supervisors: dict[str, Supervisor] = {}
        self.writers: dict[str, FrameWriter] = {}
        self.publishers: dict[str, Publisher] = {}
        self.marks: dict[str, dict[str, float]] = {}
        self.plans: dict[str, dict] = {}
        self.cache_stats: dict[str, CacheStats] = {}
        self.forget_hooks: list[Callable[[str], None]] = []
        self.commit_hooks: list[Callable[[str], None]] = []
        self.started = time.monotonic()
        self.backend = comfy.ComfyBackend(SESSION_NODE)
        self.threads_checked = False

    @property
    def registry(self) -> SessionRegistry:
        if self._registry is None:
            self._registry = SessionRegistry(settings.sessions_folder())
        return self._registry

    def session(self, name: str, create: bool = False) -> Session:
        return self.registry.get(name, create=create)

    def supervisor(self, name: str) -> Supervisor:
        """The session's supervisor; call on the server loop only."""
        sup = self.supervisors.get(name)
        if sup is None:
            sup = Supervisor(self.session(name), self.backend, hold=self.publisher(name).player.should_hold_next_iteration,
                             notify=lambda summary: self.state_changed(name, summary))
            self.supervisors[name] = sup
        return sup

    def writer(self, session: Session, retention: int) -> FrameWriter:
        writer = self.writers.get(session.name)
        if writer is None:
            self.leave_cores_to_the_workers()
            publisher = self.publisher(session.name)
            writer = FrameWriter(session.frames_dir, retention, on_written=publisher.frames_written,
                                 first_unplayed=publisher.first_unplayed)
            self.writers[session.name] = writer
        writer.retention = retention
        return writer

    def leave_cores_to_the_workers(self) -> None:
        """Once per process, on the executor thread, before the first frame writer starts
        (see ``core.threads``; the Dream Window setting "torch threads")."""
        if self.threads_checked:
            return
        self.threads_checked = True
        current = torch.get_num_threads()
        threads = planned_threads(current, usable_cores(), comfy.torch_device().type != "cpu",
                                  settings.value(TORCH_THREADS))
        if threads is not None and threads != current:
            torch.set_num_threads(threads)
            log.info("dream_window: torch CPU threads %d -> %d so the frame writer has a core of its own "
                     "(the setting %s or %s=keep leaves them)", current, threads, TORCH_THREADS.id, TORCH_THREADS.env)

    def publisher(self, name: str) -> Publisher:
        """The session's playback and status writer (started on first use)."""
        publisher = self.publishers.get(name)
        if publisher is None:
            session = self.session(name)
            settings = session.settings
            publisher = Publisher(session.folder, lambda player: self.status(name, player),
                                  on_frame=lambda frame: self.frame_shown(name, frame),
                                  on_status=lambda status: comfy.send_event("dream_window.status",
                                                                            {"session": name, **status}),
                                  fps=settings.get("fps", 3.5), target_seconds=settings.get("buffer_target", 30.0),
                                  min_buffer_seconds=settings.get("min_buffer_seconds", 10.0),
                                  frames_dir=session.frames_dir, next_frame=session.next_frame)
            self.publishers[name] = publisher
            self.follow_generation(publisher, session.state)
        return publisher

    def frame_shown(self, name: str, frame: Frame) -> None:
        """Playback showed ``frame``: the frontend is told, the played frames beyond the retention go."""
        comfy.send_event("dream_window.frame", frame_event(name, frame))
        writer = self.writers.get(name)
        if writer is not None:
            writer.played()

    def state_changed(self, name: str, summary: dict) -> None:
        """A supervisor changed the session's state: playback follows, the frontend is told."""
        self.follow_generation(self.publisher(name), summary["state"])
        comfy.send_event("dream_window.session", summary)

    @staticmethod
    def follow_generation(publisher: Publisher, state: str) -> None:
        """While the session runs, playback waits for its minimum buffer; once generation stops (stopped,
        paused, an error, max_iterations, an interrupted or single-shot session) what is buffered plays
        to the end."""
        if state == "running":
            publisher.player.wait_for_buffer()
        else:
            publisher.player.force_start()

    def configure_playback(self, session: Session) -> None:
        """Apply the session's playback settings (fps, buffer target, minimum buffer)."""
        s = session.settings
        self.publisher(session.name).configure(s.get("fps", 3.5), s.get("buffer_target", 30.0),
                                               s.get("min_buffer_seconds", 10.0))

    def mark(self, name: str, event: str) -> None:
        """Timestamp an iteration event (for keyframe and decode times)."""
        self.marks.setdefault(name, {})[event] = time.monotonic()

    def span(self, name: str, start: str, end: str) -> float | None:
        marks = self.marks.get(name, {})
        if start in marks and end in marks and marks[end] >= marks[start]:
            return marks[end] - marks[start]
        return None

    def status(self, name: str, player: Player) -> dict:
        """The session's status document (``status.json`` and ``GET /dream_window/status``)."""
        session = self.session(name)
        with session.lock:
            state, error, stats, reason = session.state, session.error, dict(session.stats), session.paused_reason
            iteration, frames = session.iteration, session.frames_produced()
        message = (error or {}).get("message") if state == "paused" else None
        shown = {"idle": "stopped", "paused": "error" if message else "paused"}.get(state, state)
        return build_status(state=shown, buffer=player.metrics(), uptime_seconds=time.monotonic() - self.started,
                            current_prompt=stats.get("prompt", ""), mode=stats.get("mode"),
                            generation_time=stats.get("mean_keyframe_time", 0.0),
                            keyframe_time=stats.get("keyframe_time"), batch_decode_time=stats.get("batch_decode_time"),
                            keyframes_generated=iteration, interpolations_generated=max(0, frames - iteration),
                            cache=self.cache_stats.get(name), error_message=message, paused_reason=reason)

    def plan_prompt(self, name: str, positive: str, themes: int, interval: int) -> None:
        """The prompt node's choice for this iteration; the commit consumes its rotation slot."""
        self.plans.setdefault(name, {})["prompt"] = (positive, themes, interval)

    def commit_updates(self, session: Session, stats: dict, injected: bool) -> dict:
        """Persisted fields the commit changes: the prompt rotation (normal keyframes only)."""
        plan = self.plans.get(session.name, {})
        if "prompt" not in plan:
            return {}
        positive, themes, interval = plan["prompt"]
        rotation = prompts.RotationState.from_dict(session.rotation)
        rotation.consume(themes, interval, injected=injected)
        stats["prompt"] = positive
        return {"rotation": rotation.to_dict()}

    def committed(self, name: str) -> None:
        """The session's keyframe was committed (executor thread): the ``commit_hooks`` are told."""
        for hook in self.commit_hooks:
            hook(name)

    def begin_iteration(self, name: str, prompt: dict, client_id: str | None, extra_pnginfo: dict | None) -> None:
        """Called by the session node, first in every iteration (executor thread)."""
        self.marks[name] = {}
        self.plans[name] = {}
        self.mark(name, "start")
        prompt_id = comfy.executing_prompt_id()
        if prompt_id is None or not prompt:
            return
        settings = autoqueue_settings(prompt, name)
        comfy.run_on_server_loop(self._attach, name, prompt_id, prompt, client_id, settings, extra_pnginfo)

    def _attach(self, name, prompt_id, prompt, client_id, settings, extra_pnginfo) -> None:
        self.supervisor(name).attach(prompt_id, prompt, client_id, settings, extra_pnginfo)
        self.configure_playback(self.session(name))

    async def resume_running(self, attempts: int = 240, delay: float = 0.5) -> None:
        """Re-queue every session that was running when the server stopped, now "interrupted" (opt-in at
        start-up).

        Runs on the server loop as soon as ComfyUI imports the pack; the first POST may come
        before the server listens, so connection errors are retried for up to two minutes.
        """
        names = [n for n in self.registry.names() if self._resumable(n)]
        for name in names:
            for _ in range(attempts):
                try:
                    await self.supervisor(name).start()
                    log.info("dream_window[%s]: resumed at server start", name)
                    break
                except OSError:
                    await asyncio.sleep(delay)
                except Exception as exc:
                    log.error("dream_window[%s]: could not resume at server start: %s", name, exc)
                    break

    def _resumable(self, name: str) -> bool:
        try:
            session = self.session(name)
        except Exception as exc:
            log.error("dream_window[%s]: not resumed: %s", name, exc)
            return False
        return session.state == "interrupted" and session.prompt is not None

    def forget_iterations(self, name: str) -> None:
        """Drop everything the session's iterations keep in memory: what the ``forget_hooks`` hold
        (the cache loop with its injection policy, detector and pending analysis), the marks, the
        plan and the cache stats, so its next iteration starts as a fresh session's would.
        Reset and delete both go through here."""
        for hook in self.forget_hooks:  # first: a pending analysis may still write the cache stats
            hook(name)
        for per_session in (self.marks, self.plans, self.cache_stats):
            per_session.pop(name, None)

    def reset(self, name: str) -> None:
        """Forget the session's keyframes (on disk and in memory); frame numbering goes on."""
        self.session(name).reset()
        self.forget_iterations(name)

    def forget(self, name: str) -> None:
        """Stop and drop a session's in-memory objects, then delete its folder."""
        self.forget_iterations(name)
        self.supervisors.pop(name, None)
        writer = self.writers.pop(name, None)
        if writer is not None:
            writer.flush(timeout=10)
        publisher = self.publishers.pop(name, None)
        if publisher is not None:
            publisher.stop()
        self.registry.delete(name)


def frame_event(name: str, frame: Frame) -> dict:
    """The ``dream_window.frame`` websocket event for a frame being shown."""
    return {"session": name, "index": frame.index, "url": f"/dream_window/frame/{name}?index={frame.index}"}


def autoqueue_settings(prompt: dict, name: str) -> dict:
    """The literal settings of the autoqueue node wired to session ``name`` in an API prompt.

    No autoqueue node means a single-shot run: ``enabled`` is False. Values that arrive
    through links are left to the autoqueue node itself, which records them when it runs.
    """
    session_ids = {nid for nid, node in prompt.items() if isinstance(node, dict)
                   and node.get("class_type") == SESSION_NODE and (node.get("inputs") or {}).get("name") == name}
    settings: dict = {"enabled": False}
    for node in prompt.values():
        if not isinstance(node, dict) or node.get("class_type") != AUTOQUEUE_NODE:
            continue
        inputs = node.get("inputs") or {}
        if not _reaches(prompt, inputs.get("session"), session_ids):
            continue
        settings["enabled"] = True
        for key, cast in (("enabled", bool), ("max_iterations", int), ("min_delay", float), ("buffer_target", float)):
            value = inputs.get(key)
            if isinstance(value, (bool, int, float)) and not (isinstance(value, float) and math.isnan(value)):
                settings[key] = cast(value)
    return settings


def _reaches(prompt: dict, link, targets: set[str], depth: int = 0) -> bool:
    """Whether the node feeding ``link`` is, or is fed through session wires by, a target node."""
    if not (isinstance(link, list) and link) or depth > 32:
        return False
    nid = str(link[0])
    if nid in targets:
        return True
    node = prompt.get(nid) or {}
    return _reaches(prompt, (node.get("inputs") or {}).get("session"), targets, depth + 1)


RUNTIME = Runtime()
