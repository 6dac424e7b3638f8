"""Nodes for what a person sees: rotating prompts and a session's frames as an IMAGE batch (playback
and status run in the runtime)."""

from __future__ import annotations

import time
from collections import OrderedDict

import torch

from ..core.loop import prompts
from ..core.loop.frames import frames_on_disk, select_frames
from ..core.loop.seed_images import load_image
from ..core.loop.session import SessionError
from . import comfy_adapter as comfy
from .comfy_adapter import io
from .common import CATEGORY, SessionType, fail, session_input
from .runtime import RUNTIME

CONDITIONING_CACHE = 8
_conditioning: OrderedDict[tuple[int, str], tuple[object, object]] = OrderedDict()


def encode(clip, text: str):
    """CLIP-encode ``text``, reusing the result while the same CLIP model and text repeat."""
    key = (id(clip), text)
    hit = _conditioning.get(key)
    if hit is not None and hit[0] is clip:
        _conditioning.move_to_end(key)
        return hit[1]
    conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(text))
    _conditioning[key] = (clip, conditioning)
    while len(_conditioning) > CONDITIONING_CACHE:
        _conditioning.popitem(last=False)
    return conditioning


class DreamWindowPrompts(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return comfy.schema(
            node_id="DreamWindowPrompts",
            display_name="Dream Window Prompts",
            category=CATEGORY,
            description="Rotating themes: a positive prompt and its paired negative per theme, switching to the "
                        "next theme every N normal keyframes (injected keyframes do not use a slot), with optional "
                        "time-of-day modifiers. Encodes them with the CLIP input.",
            search_aliases=["prompt rotation", "themes", "prompt schedule"],
            inputs=[
                session_input(),
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP text encoder."),
                io.String.Input("themes", multiline=True, default=prompts.DEFAULT_THEMES_TEXT,
                                tooltip="One theme per block (blocks separated by a blank line or ---): the positive "
                                        "prompt, then an optional line starting 'negative:'."),
                io.Int.Input("rotation_interval", default=prompts.DEFAULT_ROTATION_INTERVAL, min=1, max=100000,
                             tooltip="Normal keyframes per theme before moving to the next one."),
                io.Boolean.Input("time_of_day", default=True,
                                 tooltip="Append a modifier for the local time of day (dawn, daylight, afternoon, "
                                         "twilight, evening, midnight) to the positive prompt."),
            ],
            outputs=[
                io.Conditioning.Output("positive", tooltip="The current theme's positive conditioning."),
                io.Conditioning.Output("negative", tooltip="The current theme's paired negative conditioning."),
                io.String.Output("positive_text", tooltip="The positive prompt text in use."),
                io.String.Output("negative_text", tooltip="The negative prompt text in use."),
            ],
        )

    @classmethod
    def validate_inputs(cls, themes=None):
        # Named alone: ComfyUI lists a refusal once for every input this function names.
        if themes is None:
            return True
        try:
            prompts.parse_themes(themes)
        except ValueError as exc:
            return f"DreamWindowPrompts: {exc}"
        return True

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")

    @classmethod
    def execute(cls, session, clip, themes, rotation_interval, time_of_day):
        try:
            parsed = prompts.parse_themes(themes)
        except ValueError as exc:
            raise fail("DreamWindowPrompts", str(exc)) from exc
        state = RUNTIME.session(session.name)
        with state.lock:
            rotation = prompts.RotationState.from_dict(state.rotation)
        theme = parsed[rotation.peek(len(parsed), rotation_interval)]
        positive = prompts.apply_time_of_day(theme.positive, enabled=time_of_day, hour=time.localtime().tm_hour)
        RUNTIME.plan_prompt(session.name, positive, len(parsed), rotation_interval)
        return io.NodeOutput(encode(clip, positive), encode(clip, theme.negative), positive, theme.negative)


class DreamWindowLoadFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return comfy.schema(
            node_id="DreamWindowLoadFrames",
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
        node = "DreamWindowLoadFrames"
        name = session.name if session is not None else session_name
        try:
            folder = RUNTIME.session(name).frames_dir
        except SessionError as exc:
            raise fail(node, f"{exc}; give the name of a Dream Window session") from exc
        except KeyError:
            known = ", ".join(RUNTIME.registry.names()) or "none yet"
            raise fail(node, f"no session named {name!r} (sessions: {known}); give the Session node's name") from None
        if folder.is_symlink():
            raise fail(node, f"{folder} is a link; frames are only read inside the session folder: remove the link")
        frames = frames_on_disk(folder)
        try:
            chosen = select_frames(frames, first, last, stride)
        except ValueError as exc:
            raise fail(node, f"session {name!r}: {exc}; change first/last") from exc
        images = []
        for index in chosen:
            try:
                images.append(load_image(frames[index]))
            except FileNotFoundError:  # deleted by the retention since the folder was listed
                continue
        if not images:
            raise fail(node, f"session {name!r}: the frames from {chosen[0]} to {chosen[-1]} were deleted while "
                             f"loading (retention); load newer frames")
        sizes = sorted({tuple(image.shape[1:3]) for image in images})
        if len(sizes) > 1:
            raise fail(node, f"session {name!r}: the frames from {chosen[0]} to {chosen[-1]} differ in size "
                             f"({', '.join(f'{w}x{h}' for h, w in sizes)}); load a range of one size")
        return io.NodeOutput(torch.cat(images))


NODES = [DreamWindowPrompts, DreamWindowLoadFrames]
