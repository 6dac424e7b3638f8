"""Nodes for what a person sees: rotating prompts (playback and status run in the runtime)."""

from __future__ import annotations

import time
from collections import OrderedDict

from ..core import prompts
from . import comfy_adapter as comfy
from .comfy_adapter import io
from .common import CATEGORY, fail, session_input
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


NODES = [DreamWindowPrompts]
