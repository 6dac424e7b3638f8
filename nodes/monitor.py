"""The GPU monitor in the ComfyUI process (one for all sessions; the logic is ``core.accel.gpu_monitor``).

Each check reads the settings again (a change in the settings dialog applies at the next check),
runs the probes off the server loop, and yields or resumes: running sessions pause with the reason,
ComfyUI unloads its models and frees memory as ``POST /free`` makes it (unless the user keeps them),
and playback plays out what is buffered. Once the reason has been gone for ``resume_after`` seconds,
the sessions this monitor paused start again; a session the user paused or stopped meanwhile stays so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from ..core.accel.gpu_monitor import Checker, MonitorConfig, YieldGate, has_display
from ..core.loop.live_session import LiveSession, LiveSessions
from ..core.loop.session import SessionError
from ..core.loop.supervisor import ControlRefused
from ..core.server_settings import MONITOR_INTERVAL
from . import comfy_adapter as adapter
from . import settings
from .registry import SESSIONS

log = logging.getLogger("dream_window")

FREE_POLL = 0.1
"""Seconds between looks, while yielding, for the paused sessions' last iterations to end."""


class GpuMonitor:
    def __init__(self, sessions: LiveSessions):
        self.sessions = sessions
        self.gate = YieldGate()
        self.checker = Checker(lambda message: log.warning("dream_window: GPU monitor: %s", message))
        self.config: MonitorConfig | None = None
        self.checks = 0
        self.last_check: float | None = None
        self._task: asyncio.Task | None = None
        self._freeing: asyncio.Task | None = None

    def start(self) -> None:
        """Run the checks on the server loop from now on (once per process)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception as exc:  # the checks go on whatever one of them met
                self.checker.once(f"a check failed ({type(exc).__name__}: {exc}); checking again")
            await asyncio.sleep(self.config.interval if self.config is not None else MONITOR_INTERVAL.default)

    async def check(self) -> None:
        stored = adapter.stored_settings()
        config = MonitorConfig.read(lambda setting: settings.value(setting, stored), has_display())
        self.config = config
        reason = (await asyncio.get_running_loop().run_in_executor(None, self.checker.check, config)
                  if config.enabled else None)
        self.checks += 1
        self.last_check = time.monotonic()
        action = self.gate.update(reason, self.last_check, config.resume_after if config.enabled else 0.0)
        if self.gate.reason is not None:
            self.yield_running(self.gate.reason, config)
        elif action == "resume":
            await self.resume()

    def yield_running(self, reason: str, config: MonitorConfig) -> None:
        """Pause every running session with ``reason`` (sessions started while yielding too)."""
        paused = []
        for name in self.sessions.names():
            try:
                live = self.sessions.get(name)
                if live.session.state != "running":
                    continue
                live.supervisor.set_state("paused", reason)
            except (SessionError, KeyError):
                continue
            live.paused_by_monitor = True
            paused.append(name)
        if not paused:
            return
        log.info("dream_window: GPU monitor: %s; paused %s%s", reason, ", ".join(paused),
                 "" if config.keep_models else "; the models are unloaded once their iterations end")
        if not config.keep_models and (self._freeing is None or self._freeing.done()):
            self._freeing = asyncio.get_running_loop().create_task(self._free_when_idle())
        adapter.send_event("dream_window.monitor", self.state())

    async def _free_when_idle(self) -> None:
        """Free ComfyUI's models once no prompt of a session is queued or running (none runs while yielding;
        a prompt queued before its session paused would load them again)."""
        while self.gate.reason is not None and any(self.sessions.host.backend.session_queued(n)
                                                   for n in self.sessions.names()):
            await asyncio.sleep(FREE_POLL)
        if self.gate.reason is not None:
            adapter.free_models()
            log.info("dream_window: GPU monitor: the sessions' last iterations ended; unloading the models")

    async def resume(self) -> None:
        """Start again the sessions this monitor paused that are still paused by it."""
        resumed = []
        for live in self.paused_sessions():
            live.paused_by_monitor = False
            if live.session.state != "paused" or live.session.paused_reason is None:
                continue  # the user paused, stopped or started it meanwhile
            try:
                live.resumed_at = time.monotonic()
                await live.supervisor.start()
            except (SessionError, ControlRefused, OSError) as exc:
                live.resumed_at = None
                log.error("dream_window[%s]: GPU monitor could not resume the session: %s", live.session.name, exc)
                continue
            resumed.append(live.session.name)
        log.info("dream_window: GPU monitor: clear for %g s; resumed %s", self.config.resume_after,
                 ", ".join(resumed) or "no session")
        adapter.send_event("dream_window.monitor", self.state())

    def paused_sessions(self) -> list[LiveSession]:
        """The sessions this monitor paused, by name (a deleted session is no longer among them)."""
        return sorted((live for live in self.sessions.loaded() if live.paused_by_monitor),
                      key=lambda live: live.session.name)

    def state(self) -> dict:
        """``GET /dream_window/monitor`` and the ``dream_window.monitor`` event."""
        config = self.config
        clear_since = self.gate.clear_since
        return {
            "enabled": bool(config and config.enabled),
            "yielding": self.gate.reason is not None,
            "reason": self.gate.reason,
            "clear_for": None if clear_since is None else round(time.monotonic() - clear_since, 2),
            "paused_sessions": [live.session.name for live in self.paused_sessions()],
            "checks": self.checks,
            "last_check_ago": None if self.last_check is None else round(time.monotonic() - self.last_check, 2),
            "vram_check": ("off: " + self.checker.vram_off) if self.checker.vram_off else
                          ("on" if config and config.watches_vram else "not configured"),
            "loaded_models": adapter.loaded_models(),
            "config": dataclasses.asdict(config) if config else None,
        }


MONITOR = GpuMonitor(SESSIONS)
