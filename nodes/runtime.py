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
from pathlib import Path

from ..core.frames import FrameWriter
from ..core.session import Session, SessionRegistry
from ..core.supervisor import Supervisor
from . import comfy_adapter as comfy

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
        self.iteration_started: dict[str, float] = {}
        self.backend = comfy.ComfyBackend(SESSION_NODE)

    @property
    def registry(self) -> SessionRegistry:
        if self._registry is None:
            self._registry = SessionRegistry(Path(comfy.output_directory()) / "dream_window")
        return self._registry

    def session(self, name: str, create: bool = False) -> Session:
        return self.registry.get(name, create=create)

    def supervisor(self, name: str) -> Supervisor:
        """The session's supervisor; call on the server loop only."""
        sup = self.supervisors.get(name)
        if sup is None:
            sup = Supervisor(self.session(name), self.backend,
                             notify=lambda summary: comfy.send_event("dream_window.session", summary))
            self.supervisors[name] = sup
        return sup

    def writer(self, session: Session, retention: int) -> FrameWriter:
        writer = self.writers.get(session.name)
        if writer is None or writer.folder != session.frames_dir:
            writer = FrameWriter(session.frames_dir, session.folder / "current_frame.png", retention)
            self.writers[session.name] = writer
        writer.retention = retention
        return writer

    def begin_iteration(self, name: str, prompt: dict, client_id: str | None) -> None:
        """Called by the session node, first in every iteration (executor thread)."""
        self.iteration_started[name] = time.monotonic()
        prompt_id = comfy.executing_prompt_id()
        if prompt_id is None or not prompt:
            return
        settings = autoqueue_settings(prompt, name)
        comfy.run_on_server_loop(self._attach, name, prompt_id, prompt, client_id, settings)

    def _attach(self, name, prompt_id, prompt, client_id, settings) -> None:
        self.supervisor(name).attach(prompt_id, prompt, client_id, settings)

    async def resume_running(self, attempts: int = 240, delay: float = 0.5) -> None:
        """Re-queue every session that was running when the server stopped (opt-in at start-up).

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
        return session.state == "running" and session.prompt is not None

    def forget(self, name: str) -> None:
        """Drop in-memory objects of a deleted session."""
        self.supervisors.pop(name, None)
        self.writers.pop(name, None)
        self.registry.delete(name)


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
        for key, cast in (("enabled", bool), ("max_iterations", int), ("min_delay", float)):
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
