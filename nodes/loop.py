"""The dream loop's nodes: session, prompts, keyframe source, interpolation, commit and autoqueue. Each
``execute`` checks its inputs and calls its step of the loop service (``core.loop.loop_service``)."""

from __future__ import annotations

from collections import OrderedDict

from ..core.loop import interpolation, prompts, resolution
from ..core.loop.frames import frame_name, png_text, to_image
from ..core.loop.iteration import MODES
from ..core.loop.loop_service import (AUTOQUEUE_NODE, COMMIT_NODE, INTERPOLATE_NODE, LATENT_SCALE, MAX_SIZE, MIN_SIZE,
                                 PROMPTS_NODE, SESSION_NODE, SOURCE_NODE)
from ..core.loop.session import SessionError, strip_is_changed, validate_name
from ..core.loop.session_settings import DEFAULTS
from . import comfy_adapter as adapter
from .comfy_adapter import io
from .common import CATEGORY, CacheType, SessionType, finite, output_linked, session_input
from .registry import LOOP, SessionHandle

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


class DreamWindowSession(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return adapter.schema(
            node_id=SESSION_NODE,
            display_name="Dream Window Session",
            category=CATEGORY,
            description="Owns one endless dream loop: its state (keyframes, counters, control state) is kept "
                        "in memory and under output/dream_window/<name>/, and its output is wired to every "
                        "other Dream Window node of the loop.",
            search_aliases=["dream loop", "session", "endless"],
            inputs=[io.String.Input("name", default="dream",
                                    tooltip="Session name; becomes a folder name. Letters, digits, '_' and "
                                            "'-', at most 64 characters."),
                    io.Float.Input("fps", default=DEFAULTS.fps, min=0.1, max=120.0, step=0.1,
                                   tooltip="Playback frame rate of current_frame.png, the viewer and the stream."),
                    io.Float.Input("min_buffer_seconds", default=DEFAULTS.min_buffer_seconds, min=0.0, max=600.0,
                                   step=0.5,
                                   tooltip="Seconds of frames buffered before playback starts.")],
            outputs=[SessionType.Output("session_out", display_name="session",
                                        tooltip="Wire this into every Dream Window node of this loop.")],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def validate_inputs(cls, name=None):
        # ComfyUI lists a refusal once for every input this function names (and checks no min or max
        # of those), so each node names only what ComfyUI cannot check itself: here the name.
        try:
            validate_name(name)
        except SessionError as exc:
            return f"{SESSION_NODE}: {exc}"
        return True

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")  # a fresh NaN object: never equal, so every queue re-runs the loop

    @classmethod
    def execute(cls, name, fps, min_buffer_seconds):
        finite(SESSION_NODE, fps=fps, min_buffer_seconds=min_buffer_seconds)
        LOOP.begin(name, fps, min_buffer_seconds, cls.hidden.prompt, adapter.current_client_id(),
                   cls.hidden.extra_pnginfo)
        return io.NodeOutput(SessionHandle(name))


class DreamWindowPrompts(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return adapter.schema(
            node_id=PROMPTS_NODE,
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
            return f"{PROMPTS_NODE}: {exc}"
        return True

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")

    @classmethod
    def execute(cls, session, clip, themes, rotation_interval, time_of_day):
        positive, negative = LOOP.choose_prompt(session.name, themes, rotation_interval, time_of_day)
        return io.NodeOutput(encode(clip, positive), encode(clip, negative), positive, negative)


class DreamWindowKeyframeSource(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return adapter.schema(
            node_id=SOURCE_NODE,
            display_name="Dream Window Keyframe Source",
            category=CATEGORY,
            description="The img2img source of each keyframe: the previous keyframe's latent (no VAE "
                        "re-encode), or on the first iteration a seed image encoded once, or an empty "
                        "latent (txt2img at denoise 1.0). With a cache wired in it also decides, per keyframe, "
                        "whether to blend in a related-but-different cached frame or a seed image. Gives the "
                        "sampler its denoise and a fresh seed.",
            search_aliases=["feedback", "img2img loop", "previous keyframe"],
            inputs=[
                session_input(),
                io.Int.Input("width", default=512, min=MIN_SIZE, max=MAX_SIZE, step=LATENT_SCALE,
                             tooltip="Frame width in pixels (multiple of 8). Changing it mid-session needs a reset."),
                io.Int.Input("height", default=256, min=MIN_SIZE, max=MAX_SIZE, step=LATENT_SCALE,
                             tooltip="Frame height in pixels (multiple of 8). Changing it mid-session needs a reset."),
                io.Float.Input("denoise", default=0.2, min=0.0, max=1.0, step=0.01,
                               tooltip="How much each keyframe may change from the previous one (img2img denoise)."),
                adapter.Choice("seed_mode", options=["random", "sequence"], default="random",
                               tooltip="random: a fresh random 32-bit seed per keyframe; "
                                       "sequence: base_seed + iteration, so a run can be replayed."),
                io.Int.Input("base_seed", default=0, min=0, max=0xFFFFFFFF,
                             tooltip="First seed of the 'sequence' mode; ignored by 'random'."),
                adapter.Choice("mode", options=list(MODES), default="hybrid",
                               tooltip="hybrid: keyframes plus interpolated frames between them; img2img: "
                                       "keyframes only; interpolate: no sampling at all, a slow slerp walk "
                                       "between cached keyframes and seed images (needs a cache)."),
                io.String.Input("seed_folder", default="", optional=True,
                                tooltip="Optional folder under ComfyUI's input folder with .png/.jpg/.webp seed "
                                        "images: the first keyframe, and the images seed injections blend in."),
                io.Vae.Input("vae", optional=True,
                             tooltip="The workflow's VAE, used to encode seed images."),
                io.Image.Input("image", optional=True, lazy=True,
                               tooltip="Optional seed image (e.g. from Load Image) for the first iteration; "
                                       "wins over seed_folder."),
                CacheType.Input("cache", optional=True,
                                tooltip="The Dream Window Cache: enables cache and seed injections."),
            ],
            outputs=[
                io.Latent.Output("latent", tooltip="The img2img source latent for KSampler."),
                io.Float.Output("denoise_out", display_name="denoise",
                                tooltip="Denoise for KSampler: the input value, or 1.0 when starting from an empty latent."),
                io.Int.Output("seed", tooltip="The sampler seed for this keyframe."),
            ],
        )

    @classmethod
    def validate_inputs(cls, width=None, height=None):
        # ComfyUI checks no INT's step (the frontend rounds to it), nor the range of an input named here;
        # naming both sizes lists a refusal twice, once per size.
        for key, value in (("width", width), ("height", height)):
            if isinstance(value, int) and not (MIN_SIZE <= value <= MAX_SIZE and value % LATENT_SCALE == 0):
                return (f"{SOURCE_NODE}: {key} must be a multiple of {LATENT_SCALE} from {MIN_SIZE} "
                        f"to {MAX_SIZE}, got {value}")
        return True

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")

    @classmethod
    def check_lazy_status(cls, session, **inputs):
        # An unconnected optional input is absent; a connected one not yet evaluated is None.
        wanted = "image" in inputs and inputs["image"] is None
        return ["image"] if wanted and LOOP.needs_first_image(session.name) else []

    @classmethod
    def execute(cls, session, width, height, denoise, seed_mode, base_seed, mode, seed_folder="", vae=None,
                image=None, cache=None):
        finite(SOURCE_NODE, denoise=denoise)
        latent, denoise, seed = LOOP.source(session.name, width=width, height=height, denoise=denoise,
                                            seed_mode=seed_mode, base_seed=base_seed, mode=mode,
                                            seed_folder=seed_folder, encode=vae.encode if vae is not None else None,
                                            image=image, cache=cache)
        return io.NodeOutput({"samples": latent}, denoise, seed)


class DreamWindowInterpolate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return adapter.schema(
            node_id=INTERPOLATE_NODE,
            display_name="Dream Window Interpolate",
            category=CATEGORY,
            description="Frames between the previous keyframe and the new one: a global slerp (or lerp) of "
                        "the whole latent with linearly interpolated magnitude, all frames at once. With the "
                        "checkpoint's VAE wired into 'vae' it decodes them too, straight to frames on the GPU "
                        "(no VAE Decode node; Commit takes them), else it outputs one LATENT batch (the "
                        "in-between frames, then the new keyframe) for one VAE Decode. In the keyframe "
                        "source's interpolate mode it walks to a cached keyframe instead and the sampler is "
                        "skipped.",
            search_aliases=["slerp", "latent interpolation", "tween"],
            inputs=[
                session_input(),
                io.Latent.Input("keyframe", lazy=True,
                                tooltip="The new keyframe: KSampler's output (not evaluated in interpolate mode)."),
                io.Int.Input("frames", default=10, min=0, max=512,
                             tooltip="In-between frames per keyframe pair (endpoints excluded); 0 = keyframes only."),
                adapter.Choice("method", options=list(interpolation.METHODS), default="slerp",
                               tooltip="slerp: spherical (keeps the latent's energy); lerp: straight line."),
                adapter.Choice("easing", options=list(interpolation.EASINGS), default="linear",
                               tooltip="Spacing of the frames in time: linear, an even pace; ease_in_out, slower near "
                                       "both keyframes; ease_in, near the previous one; ease_out, near the new one."),
                adapter.Choice("divisor", options=list(resolution.DIVISORS), default=resolution.DEFAULT_DIVISOR,
                               optional=True,
                               tooltip="Framerate mode for smaller GPUs: make the in-between frames at 1/divisor of "
                                       "the keyframe's width and height, decode them small with 'vae' and upscale "
                                       "them back (keyframes stay full size). 1: off."),
                adapter.Choice("downsample", options=list(resolution.DOWNSAMPLE_METHODS),
                               default=resolution.DEFAULT_DOWNSAMPLE,
                               optional=True,
                               tooltip="How the keyframe latents are shrunk for the in-between frames (divisor > 1)."),
                adapter.Choice("upscale", options=list(resolution.UPSCALE_METHODS),
                               default=resolution.DEFAULT_UPSCALE,
                               optional=True,
                               tooltip="How the small decoded frames are enlarged to the keyframe's size "
                                       "(divisor > 1)."),
                io.Vae.Input("vae", optional=True,
                             tooltip="The checkpoint's VAE: this node decodes the frames with it, on the VAE's "
                                     "device, and Commit takes them (leave Commit's 'images' unwired). Needed "
                                     "for divisor > 1. Unwired: decode this node's output with VAE Decode."),
            ],
            outputs=[io.Latent.Output("frames_out", display_name="frames",
                                      tooltip="In-between frames then the new keyframe, as one batch: wire it into "
                                              "Commit's 'latents'. The first iteration has no previous keyframe and "
                                              "emits the keyframe only; with divisor > 1 the batch is the keyframe "
                                              "alone (the small in-between frames exist only decoded).")],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")

    @classmethod
    def check_lazy_status(cls, session, keyframe=None, **inputs):
        return [] if keyframe is not None or LOOP.walking(session.name) else ["keyframe"]

    @classmethod
    def execute(cls, session, frames, method, easing, keyframe=None, divisor=resolution.DEFAULT_DIVISOR,
                downsample=resolution.DEFAULT_DOWNSAMPLE, upscale=resolution.DEFAULT_UPSCALE, vae=None):
        samples = keyframe["samples"] if keyframe is not None else None
        decoder = adapter.frame_decoder(vae) if vae is not None else None
        return io.NodeOutput({"samples": LOOP.interpolate(session.name, samples, frames, method, easing, divisor,
                                                          downsample, upscale, decoder)})


class DreamWindowCommit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return adapter.schema(
            node_id=COMMIT_NODE,
            display_name="Dream Window Commit",
            category=CATEGORY,
            description="Records the new keyframe in the session (persisted atomically), numbers the frames "
                        "(decoded by the Interpolate node with its VAE, or by VAE Decode into 'images') "
                        "and writes each one to disk once, off the executor thread, into "
                        "output/dream_window/<session>/frames with a retention limit; with a cache wired in, "
                        "embeds the keyframe and the pair's midpoint and admits the diverse ones. Each frame PNG "
                        "carries the prompt and workflow as Save Image writes them (unless ComfyUI runs with "
                        "--disable-metadata): drop one on the graph to get the dream's workflow back. Also "
                        "outputs the new keyframe as an IMAGE.",
            search_aliases=["save frames", "dream commit"],
            is_output_node=True,
            inputs=[
                session_input(),
                io.Latent.Input("latents", tooltip="The Interpolate node's batch (its last latent is the new "
                                                   "keyframe; the next iteration starts from it)."),
                io.Image.Input("images", optional=True,
                               tooltip="Leave unwired when the Interpolate node has the VAE (it decoded the frames). "
                                       "Else: VAE Decode of the Interpolate node's output."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, control_after_generate=False,
                             tooltip="The keyframe's sampler seed, recorded in the session (wire it from the "
                                     "keyframe source)."),
                io.Int.Input("retention", default=DEFAULTS.retention, min=1, max=1_000_000,
                             tooltip="Played frames kept on disk (for the frame route and export); older played "
                                     "frames are deleted. A frame not played yet is never deleted, so the folder "
                                     "holds the unplayed buffer plus this many."),
                CacheType.Input("cache", optional=True,
                                tooltip="The Dream Window Cache: keyframes and midpoints are offered to it."),
            ],
            outputs=[SessionType.Output("session_out", display_name="session",
                                        tooltip="The session again, after this iteration is committed: wire it "
                                                "into the autoqueue node."),
                     io.Image.Output("keyframe", display_name="keyframe",
                                     tooltip="The new keyframe as an IMAGE (the last frame of the batch): wire "
                                             "it into Preview Image, Save Image or a video node.")],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def _frame_text(cls) -> bytes:
        """The text chunks of this iteration's frames, as ComfyUI's SaveImage writes them (none with
        ``--disable-metadata``): the prompt as it was queued, without the ``is_changed`` values (NaN,
        which is not JSON) ComfyUI adds to a prompt whose nodes always run, and the workflow (the
        session's supervisor queues every iteration with the one its prompt came with)."""
        if adapter.metadata_disabled():
            return b""
        prompt = cls.hidden.prompt
        return png_text(strip_is_changed(prompt) if prompt is not None else None, cls.hidden.extra_pnginfo)

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")

    @classmethod
    def execute(cls, session, latents, seed, retention, images=None, cache=None):
        shown, keyframe = LOOP.commit(session.name, latents["samples"], images, seed, retention, cache,
                                      cls._frame_text())
        ui = None
        if shown is not None:
            subfolder = f"dream_window/{session.name}/frames"
            ui = {"images": [{"filename": frame_name(shown), "subfolder": subfolder, "type": "output"}]}
        keyframe = to_image(keyframe)
        if output_linked(cls.hidden.prompt, cls.hidden.unique_id, 1):  # else no wait for the GPU's copy
            keyframe = keyframe.to(adapter.intermediate_device())
        return io.NodeOutput(session, keyframe, ui=ui)


class DreamWindowAutoQueue(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return adapter.schema(
            node_id=AUTOQUEUE_NODE,
            display_name="Dream Window AutoQueue",
            category=CATEGORY,
            description="Keeps the loop going with no browser open: after each iteration the session's "
                        "supervisor (on ComfyUI's server) queues the workflow again, retries failed iterations "
                        "up to 3 times and then pauses with the error (on a configuration error at once). Stop "
                        "or pause it from the Dream Window panel or POST /dream_window/stop.",
            search_aliases=["auto queue", "loop forever", "requeue"],
            is_output_node=True,
            inputs=[
                session_input(),
                io.Boolean.Input("enabled", default=DEFAULTS.enabled,
                                 tooltip="Off: run one iteration per Queue press."),
                io.Int.Input("max_iterations", default=DEFAULTS.max_iterations, min=0, max=2**31 - 1,
                             tooltip="Stop after this many keyframes in total, counted across restarts; 0 = endless."),
                io.Float.Input("min_delay", default=DEFAULTS.min_delay, min=0.0, max=3600.0, step=0.1,
                               tooltip="Seconds to wait between the end of one iteration and the next."),
                io.Float.Input("buffer_target", default=DEFAULTS.buffer_target, min=0.0, max=3600.0, step=1.0,
                               tooltip="Hold the next iteration back while this many seconds of frames wait to "
                                       "be played; 0 turns throttling off (generate as fast as possible)."),
            ],
            outputs=[],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")

    @classmethod
    def execute(cls, session, enabled, max_iterations, min_delay, buffer_target):
        finite(AUTOQUEUE_NODE, min_delay=min_delay, buffer_target=buffer_target)
        text = LOOP.autoqueue(session.name, enabled=bool(enabled), max_iterations=int(max_iterations),
                              min_delay=float(min_delay), buffer_target=float(buffer_target))
        return io.NodeOutput(ui={"text": [text]})


NODES = [DreamWindowSession, DreamWindowPrompts, DreamWindowKeyframeSource, DreamWindowInterpolate, DreamWindowCommit,
         DreamWindowAutoQueue]
