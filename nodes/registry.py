"""The process-wide objects: the live sessions (``core.loop.live_session``) and the loop service over them,
built with the ComfyUI server as their ``Host``.

V3 node classes are cloned for every execution, so nothing may live on them; everything that must
outlast one prompt lives in a session's ``LiveSession``, found here by name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.loop.live_session import Host, LiveSessions
from ..core.loop.loop_service import SESSION_NODE, LoopService
from ..core.server_settings import TORCH_THREADS
from ..core.accel.torch_threads import planned_threads, usable_cores
from . import comfy_adapter as adapter
from . import settings

log = logging.getLogger("dream_window")


@dataclass(frozen=True)
class SessionHandle:
    """What flows along the DREAM_WINDOW_SESSION wire: the session's name."""

    name: str

    def __repr__(self) -> str:
        return f"DreamWindowSession({self.name!r})"


class ThreadsCheck:
    """Once per process, on the executor thread, before the first frame writer starts (see
    ``core.accel.torch_threads``; the Dream Window setting "torch threads")."""

    def __init__(self) -> None:
        self.done = False

    def __call__(self) -> None:
        if self.done:
            return
        self.done = True
        current = torch.get_num_threads()
        threads = planned_threads(current, usable_cores(), adapter.torch_device().type != "cpu",
                                  settings.value(TORCH_THREADS))
        if threads is not None and threads != current:
            torch.set_num_threads(threads)
            log.info("dream_window: torch CPU threads %d -> %d so the frame writer has a core of its own "
                     "(the setting %s or %s=keep leaves them)", current, threads, TORCH_THREADS.id, TORCH_THREADS.env)


SESSIONS = LiveSessions(Host(
    sessions_folder=settings.sessions_folder,
    cache_root=lambda: Path(adapter.output_directory()) / "dream_window_cache",
    input_folder=lambda: Path(adapter.input_directory()),
    backend=adapter.ComfyBackend(SESSION_NODE),
    send_event=adapter.send_event,
    run_on_server_loop=adapter.run_on_server_loop,
    executing_prompt_id=adapter.executing_prompt_id,
    executing_node_id=adapter.executing_node_id,
    intermediate_device=adapter.intermediate_device,
    before_first_writer=ThreadsCheck(),
))
LOOP = LoopService(SESSIONS)
