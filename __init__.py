"""Dream Window: an endless, slowly morphing dream loop running natively inside ComfyUI."""

from .nodes import entrypoint as comfy_entrypoint

WEB_DIRECTORY = "./web"

__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
