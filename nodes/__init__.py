"""Dream Window's ComfyUI nodes and routes (thin wrappers over ``core``)."""

from __future__ import annotations

import asyncio

from ..core.server_settings import RESUME_ON_START
from . import routes, settings
from .accel import NODES as ACCEL_NODES
from .cache import NODES as CACHE_NODES
from .comfy_adapter import ComfyExtension
from .loop import NODES as LOOP_NODES
from .monitor import MONITOR
from .registry import SESSIONS
from .window import NODES as WINDOW_NODES

_registered = False


class DreamWindowExtension(ComfyExtension):
    async def get_node_list(self):
        return LOOP_NODES + CACHE_NODES + WINDOW_NODES + ACCEL_NODES


async def entrypoint() -> DreamWindowExtension:
    global _registered
    if not _registered:
        routes.register()
        _registered = True
        MONITOR.start()
        SESSIONS.publish_interrupted_status()
        if settings.value(RESUME_ON_START):
            asyncio.get_running_loop().create_task(SESSIONS.resume_interrupted())
    return DreamWindowExtension()
