"""Dream Window's ComfyUI nodes and routes (thin wrappers over ``core``)."""

from __future__ import annotations

from . import routes
from .comfy_adapter import ComfyExtension
from .loop_nodes import NODES

_registered = False


class DreamWindowExtension(ComfyExtension):
    async def get_node_list(self):
        return list(NODES)


async def entrypoint() -> DreamWindowExtension:
    global _registered
    if not _registered:
        routes.register()
        _registered = True
    return DreamWindowExtension()
