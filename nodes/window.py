"""What a person does with a session's frames besides watching them: load them as an IMAGE batch (playback,
status and streaming run beside the session, see ``core.loop.live_session``)."""

from __future__ import annotations

from ..core.loop.loop_service import LOAD_FRAMES_NODE
from . import comfy_adapter as adapter
from .comfy_adapter import io
from .common import CATEGORY, SessionType
from .registry import LOOP


class DreamWindowLoadFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return adapter.schema(
            node_id=LOAD_FRAMES_NODE,
            display_name="Dream Window Load Frames",
            category=CATEGORY,
            description="Loads a session's frames from output/dream_window/<session>/frames as one IMAGE batch "
                        "(a range of frame numbers, every stride-th frame), e.g. for a video node. Only frames "
                        "still on disk are loaded: played frames beyond the Commit node's retention are deleted.",
            search_aliases=["load frames", "frames to video", "image batch", "dream frames"],
            inputs=[
                io.String.Input("session_name", default="dream",
                                tooltip="The session whose frames to load (the Session node's name); ignored "
                                        "when the session input is wired."),
                io.Int.Input("first", default=0, min=0, max=2**31 - 1,
                             tooltip="The first frame number to load (frame_<number>.png)."),
                io.Int.Input("last", default=-1, min=-1, max=2**31 - 1,
                             tooltip="The last frame number to load (included); -1: the newest frame on disk."),
                io.Int.Input("stride", default=1, min=1, max=100000,
                             tooltip="Load every stride-th frame, counted from first (1: every frame)."),
                SessionType.Input("session", optional=True,
                                  tooltip="Optional: the session wire of a running loop; wins over session_name."),
            ],
            outputs=[io.Image.Output("images", display_name="images",
                                     tooltip="The frames, oldest first, as one IMAGE batch.")],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")  # the frames on disk change while the loop runs: load them every time

    @classmethod
    def execute(cls, session_name, first, last, stride, session=None):
        name = session.name if session is not None else session_name
        return io.NodeOutput(LOOP.load_frames(name, first, last, stride))


NODES = [DreamWindowLoadFrames]
