"""Acceleration nodes: the diffusion model's forward replayed from CUDA graphs (``core.accel.cuda_graph``)."""

from __future__ import annotations

import logging

from ..core.accel.cuda_graph import DEFAULT_MAX_GRAPHS, UnetGraphWrapper, is_dynamic_vram
from . import comfy_adapter as adapter
from .comfy_adapter import io, ui
from .common import CATEGORY

log = logging.getLogger("dream_window")

NODE_ID = "DreamWindowCudaGraph"


class DreamWindowCudaGraph(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return adapter.schema(
            node_id=NODE_ID,
            display_name="Dream Window CUDA Graph",
            category=CATEGORY,
            description="Speeds up the dream loop's sampler on a CUDA GPU: the diffusion model's forward is "
                        "captured once per shape in a CUDA graph and replayed at every step, with no Python or "
                        "kernel-launch overhead. Anything a replay cannot reproduce exactly (another shape, "
                        "ControlNet, model patches or hooks it does not know, a partially offloaded model or one "
                        "whose weights ComfyUI's dynamic VRAM pages in and out, CPU or MPS) runs the normal eager "
                        "forward, logged once with the reason. Graphs are released when the model is unloaded or "
                        "patched differently. Put it between the model loader (or the last model patch) and "
                        "KSampler.",
            search_aliases=["cuda graph", "accelerate", "speed up", "faster sampling", "unet capture"],
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to accelerate (Load Checkpoint's MODEL, or "
                                                "the output of your last model patch node)."),
                io.Boolean.Input("enabled", default=True,
                                 tooltip="Off: the model passes through unchanged. On: forwards are replayed "
                                         "from CUDA graphs where that is exact (always eager on CPU/MPS)."),
            ],
            outputs=[io.Model.Output("model_out", display_name="model",
                                     tooltip="The same model, its forward served from CUDA graphs: wire it into "
                                             "KSampler.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, enabled):
        if not enabled:
            return io.NodeOutput(model, ui=ui.PreviewText("off: the model passes through unchanged"))
        if "model_function_wrapper" in model.model_options:
            text = ("left unchanged: this model already has a model_function_wrapper (from another node); "
                    "put DreamWindowCudaGraph before that node or remove it")
            log.warning("%s #%s: %s", NODE_ID, cls.hidden.unique_id, text)
            return io.NodeOutput(model, ui=ui.PreviewText(text))
        if is_dynamic_vram(model):
            text = ("left unchanged, every forward runs eagerly: ComfyUI loads this model with dynamic VRAM, which "
                    "pages its weights in and out while it runs (a replayed graph would read moved weights); "
                    "start ComfyUI with --disable-dynamic-vram to use CUDA graphs")
            log.warning("%s #%s: %s", NODE_ID, cls.hidden.unique_id, text)
            return io.NodeOutput(model, ui=ui.PreviewText(text))
        wrapper = UnetGraphWrapper(f"{NODE_ID} #{cls.hidden.unique_id}", adapter.forward_wrappers)
        device = model.load_device
        if device.type == "cuda":
            text = (f"on {device}: each forward shape is captured once and replayed (at most {DEFAULT_MAX_GRAPHS} "
                    f"graphs); counters are logged as '{wrapper.name}: after N sampling runs: ...'")
        else:
            text = f"no CUDA device ({device}): every forward runs eagerly, exactly as without this node"
        return io.NodeOutput(adapter.clone_with_unet_wrapper(model, wrapper), ui=ui.PreviewText(text))


NODES = [DreamWindowCudaGraph]
