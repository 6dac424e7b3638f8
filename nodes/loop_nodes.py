"""The dream loop's nodes: session, keyframe source, interpolation, commit and autoqueue."""

from __future__ import annotations

import logging
import math
import random
import secrets
from pathlib import Path

import torch

from ..core import images as seed_images
from ..core import interpolation
from ..core.frames import frame_name, to_uint8
from ..core.session import SessionError, validate_name
from . import comfy_adapter as comfy
from .comfy_adapter import io
from .runtime import RUNTIME, SessionHandle

log = logging.getLogger("dream_window")

CATEGORY = "dream_window"
SessionType = io.Custom("DREAM_WINDOW_SESSION")
LATENT_SCALE = 8
"""Pixels per latent cell of SD-family VAEs; width and height must be multiples of it."""


def session_input() -> "io.Input":
    return SessionType.Input("session", tooltip="The Dream Window session this node belongs to: "
                                                "wire it from the DreamWindowSession node.")


def fail(node: str, message: str) -> RuntimeError:
    """An error that names the node, as users see it in ComfyUI's error dialog."""
    return RuntimeError(f"{node}: {message}")


class DreamWindowSession(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return comfy.schema(
            node_id="DreamWindowSession",
            display_name="Dream Window Session",
            category=CATEGORY,
            description="Owns one endless dream loop: its state (keyframes, counters, control state) is kept "
                        "in memory and under output/dream_window/<name>/, and its output is wired to every "
                        "other Dream Window node of the loop.",
            search_aliases=["dream loop", "session", "endless"],
            inputs=[io.String.Input("name", default="dream",
                                    tooltip="Session name; becomes a folder name. Letters, digits, '_' and "
                                            "'-', at most 64 characters."),
                    io.Float.Input("fps", default=3.5, min=0.1, max=120.0, step=0.1,
                                   tooltip="Playback frame rate of current_frame.png, the viewer and the stream."),
                    io.Float.Input("min_buffer_seconds", default=10.0, min=0.0, max=600.0, step=0.5,
                                   tooltip="Seconds of frames buffered before playback starts.")],
            outputs=[SessionType.Output("session_out", display_name="session",
                                        tooltip="Wire this into every Dream Window node of this loop.")],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, name, fps=3.5, min_buffer_seconds=10.0):
        if not (math.isfinite(fps) and fps > 0 and math.isfinite(min_buffer_seconds) and min_buffer_seconds >= 0):
            return "DreamWindowSession: fps must be > 0 and min_buffer_seconds >= 0 (finite numbers)"
        try:
            validate_name(name)
        except SessionError as exc:
            return f"DreamWindowSession: {exc}"
        return True

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")  # a fresh NaN object: never equal, so every queue re-runs the loop

    @classmethod
    def execute(cls, name, fps, min_buffer_seconds):
        try:
            session = RUNTIME.session(validate_name(name), create=True)
        except SessionError as exc:
            raise fail("DreamWindowSession", str(exc)) from exc
        with session.lock:
            session.settings.update(fps=float(fps), min_buffer_seconds=float(min_buffer_seconds))
        RUNTIME.configure_playback(session)
        RUNTIME.begin_iteration(name, cls.hidden.prompt, comfy.current_client_id())
        return io.NodeOutput(SessionHandle(name))


class DreamWindowKeyframeSource(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return comfy.schema(
            node_id="DreamWindowKeyframeSource",
            display_name="Dream Window Keyframe Source",
            category=CATEGORY,
            description="The img2img source of each keyframe: the previous keyframe's latent (no VAE "
                        "re-encode), or on the first iteration a seed image encoded once, or an empty "
                        "latent (txt2img at denoise 1.0). Also gives the sampler its denoise and a fresh seed.",
            search_aliases=["feedback", "img2img loop", "previous keyframe"],
            inputs=[
                session_input(),
                io.Int.Input("width", default=512, min=64, max=8192, step=LATENT_SCALE,
                             tooltip="Frame width in pixels (multiple of 8). Changing it mid-session needs a reset."),
                io.Int.Input("height", default=256, min=64, max=8192, step=LATENT_SCALE,
                             tooltip="Frame height in pixels (multiple of 8). Changing it mid-session needs a reset."),
                io.Float.Input("denoise", default=0.2, min=0.0, max=1.0, step=0.01,
                               tooltip="How much each keyframe may change from the previous one (img2img denoise)."),
                io.Combo.Input("seed_mode", options=["random", "sequence"], default="random",
                               tooltip="random: a fresh random 32-bit seed per keyframe (the original's rule); "
                                       "sequence: base_seed + iteration, so a run can be replayed."),
                io.Int.Input("base_seed", default=0, min=0, max=0xFFFFFFFF,
                             tooltip="First seed of the 'sequence' mode; ignored by 'random'."),
                io.String.Input("seed_folder", default="", optional=True,
                                tooltip="Optional folder under ComfyUI's input folder; on the first iteration a "
                                        "random .png/.jpg/.webp from it becomes the first keyframe."),
                io.Vae.Input("vae", optional=True,
                             tooltip="The workflow's VAE, used once to encode the seed image."),
                io.Image.Input("image", optional=True, lazy=True,
                               tooltip="Optional seed image (e.g. from Load Image) for the first iteration; "
                                       "wins over seed_folder."),
            ],
            outputs=[
                io.Latent.Output("latent", tooltip="The img2img source latent for KSampler."),
                io.Float.Output("denoise_out", display_name="denoise",
                                tooltip="Denoise for KSampler: the input value, or 1.0 when starting from an empty latent."),
                io.Int.Output("seed", tooltip="The sampler seed for this keyframe."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")

    @classmethod
    def check_lazy_status(cls, session, **inputs):
        # An unconnected optional input is absent; a connected one not yet evaluated is None.
        wanted = "image" in inputs and inputs["image"] is None
        return ["image"] if wanted and RUNTIME.session(session.name).prev_latent is None else []

    @classmethod
    def execute(cls, session, width, height, denoise, seed_mode, base_seed, seed_folder="", vae=None, image=None):
        node = "DreamWindowKeyframeSource"
        if width % LATENT_SCALE or height % LATENT_SCALE:
            raise fail(node, f"width and height must be multiples of {LATENT_SCALE}, got {width}x{height}")
        if not math.isfinite(denoise):
            raise fail(node, "denoise must be a number between 0 and 1")
        state = RUNTIME.session(session.name)
        with state.lock:
            prev, iteration = state.prev_latent, state.iteration
        seed = (base_seed + iteration) % 2**32 if seed_mode == "sequence" else secrets.randbits(32)
        if prev is not None:
            want = (height // LATENT_SCALE, width // LATENT_SCALE)
            if tuple(prev.shape[-2:]) != want:
                have = (prev.shape[-1] * LATENT_SCALE, prev.shape[-2] * LATENT_SCALE)
                raise fail(node, f"session '{session.name}' holds {have[0]}x{have[1]} keyframes but this "
                                 f"workflow asks for {width}x{height}; reset the session (Reset in the Dream "
                                 f"Window panel or POST /dream_window/reset) or set the size back")
            RUNTIME.mark(session.name, "source_done")
            return io.NodeOutput({"samples": prev.clone().to(comfy.intermediate_device())}, denoise, seed)
        pixels = image if image is not None else cls._seed_folder_image(seed_folder, seed)
        if pixels is None:
            empty = torch.zeros((1, 4, height // LATENT_SCALE, width // LATENT_SCALE),
                                device=comfy.intermediate_device())
            RUNTIME.mark(session.name, "source_done")
            return io.NodeOutput({"samples": empty}, 1.0, seed)
        if vae is None:
            raise fail(node, "a seed image needs the workflow's VAE: wire the checkpoint's VAE into 'vae'")
        pixels = seed_images.fit_image(pixels[:1], width, height)
        latent = vae.encode(pixels)
        RUNTIME.mark(session.name, "source_done")
        return io.NodeOutput({"samples": latent}, denoise, seed)

    @staticmethod
    def _seed_folder_image(seed_folder: str, seed: int):
        if not seed_folder:
            return None
        node = "DreamWindowKeyframeSource"
        root = Path(comfy.input_directory()).resolve()
        folder = (root / seed_folder).resolve()
        if root not in folder.parents and folder != root:
            raise fail(node, f"seed_folder {seed_folder!r} leaves ComfyUI's input folder; give a folder inside {root}")
        try:
            path = seed_images.pick_seed(folder, random.Random(seed))
        except FileNotFoundError as exc:
            raise fail(node, f"{exc}; put seed images there or clear seed_folder") from exc
        return seed_images.load_image(path)


class DreamWindowInterpolate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return comfy.schema(
            node_id="DreamWindowInterpolate",
            display_name="Dream Window Interpolate",
            category=CATEGORY,
            description="Frames between the previous keyframe and the new one: a global slerp (or lerp) of "
                        "the whole latent with linearly interpolated magnitude, all frames at once. Outputs "
                        "one LATENT batch (the in-between frames, then the new keyframe) for one VAE Decode.",
            search_aliases=["slerp", "latent interpolation", "tween"],
            inputs=[
                session_input(),
                io.Latent.Input("keyframe", tooltip="The new keyframe: KSampler's output."),
                io.Int.Input("frames", default=10, min=0, max=512,
                             tooltip="In-between frames per keyframe pair (endpoints excluded); 0 = keyframes only."),
                io.Combo.Input("method", options=list(interpolation.METHODS), default="slerp",
                               tooltip="slerp: spherical (keeps the latent's energy); lerp: straight line."),
                io.Combo.Input("easing", options=list(interpolation.EASINGS), default="linear",
                               tooltip="Spacing of the frames in time; linear is the original's."),
            ],
            outputs=[io.Latent.Output("frames_out", display_name="frames",
                                      tooltip="In-between frames then the new keyframe, as one batch. The first "
                                              "iteration has no previous keyframe and emits the keyframe only.")],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")

    @classmethod
    def execute(cls, session, keyframe, frames, method, easing):
        node = "DreamWindowInterpolate"
        RUNTIME.mark(session.name, "sampled")
        new = keyframe["samples"]
        if new.dim() != 4 or new.shape[0] != 1 or 0 in new.shape:
            raise fail(node, f"expected one keyframe latent [1, C, H, W], got shape {tuple(new.shape)}; "
                             f"set the sampler's batch size to 1")
        if frames < 0:
            raise fail(node, f"frames must be >= 0, got {frames}")
        state = RUNTIME.session(session.name)
        with state.lock:
            prev = state.prev_latent
        if prev is None or frames == 0:
            RUNTIME.mark(session.name, "interpolated")
            return io.NodeOutput({"samples": new})
        prev = prev.to(new.device, new.dtype)
        if prev.shape != new.shape:
            raise fail(node, f"the new keyframe {tuple(new.shape)} does not match the previous one "
                             f"{tuple(prev.shape)}; reset the session after changing size or model")
        between = interpolation.interpolate(prev[0], new[0], frames, method, easing)
        RUNTIME.mark(session.name, "interpolated")
        return io.NodeOutput({"samples": torch.cat([between, new], dim=0)})


class DreamWindowCommit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return comfy.schema(
            node_id="DreamWindowCommit",
            display_name="Dream Window Commit",
            category=CATEGORY,
            description="Records the new keyframe in the session (persisted atomically), numbers the frames "
                        "and writes each one to disk once, off the executor thread, into "
                        "output/dream_window/<session>/frames with a retention limit; current_frame.png "
                        "always points at the newest frame.",
            search_aliases=["save frames", "dream commit"],
            is_output_node=True,
            inputs=[
                session_input(),
                io.Latent.Input("keyframe", tooltip="The new keyframe latent (KSampler's output); the next "
                                                    "iteration starts from it."),
                io.Image.Input("images", tooltip="The decoded frames of this iteration (VAE Decode of the "
                                                 "Interpolate node's batch)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF,
                             tooltip="The keyframe's sampler seed, recorded in the session (wire it from the "
                                     "keyframe source)."),
                io.Int.Input("retention", default=128, min=1, max=1_000_000,
                             tooltip="Frames kept on disk; older ones are deleted. The default covers a 30 s "
                                     "playback buffer at 3.5 fps plus two iterations of 11 frames."),
            ],
            outputs=[SessionType.Output("session_out", display_name="session",
                                        tooltip="The session again, after this iteration is committed: wire it "
                                                "into the autoqueue node.")],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")

    @classmethod
    def execute(cls, session, keyframe, images, seed, retention):
        node = "DreamWindowCommit"
        latent = keyframe["samples"]
        if images.dim() != 4 or images.shape[0] == 0:
            raise fail(node, f"expected a batch of images, got shape {tuple(images.shape)}")
        if latent.dim() != 4 or latent.shape[0] != 1:
            raise fail(node, f"expected one keyframe latent [1, C, H, W], got shape {tuple(latent.shape)}")
        state = RUNTIME.session(session.name)
        writer = RUNTIME.writer(state, retention)
        if writer.error is not None:
            error, writer.error = writer.error, None
            raise fail(node, f"cannot write frames to {writer.folder}: {error}; free disk space or make the "
                             f"folder writable, then start the session again")
        if state.iteration == 0 and images.shape[0] != 1:
            raise fail(node, f"the first iteration has no previous keyframe and must give 1 frame, got "
                             f"{images.shape[0]}; wire the Interpolate node's output into VAE Decode")
        RUNTIME.mark(session.name, "decoded")
        elapsed = RUNTIME.span(session.name, "start", "decoded")
        with state.lock:
            stats = dict(state.stats)
            stats["keyframe_time"] = RUNTIME.span(session.name, "source_done", "sampled")
            stats["batch_decode_time"] = RUNTIME.span(session.name, "interpolated", "decoded")
            count = stats.get("iterations_timed", 0)
            if elapsed is not None:
                stats["iteration_time"] = elapsed
                stats["mean_iteration_time"] = (stats.get("mean_iteration_time", 0.0) * count + elapsed) / (count + 1)
                stats["iterations_timed"] = count + 1
            stats["frames_last_iteration"] = int(images.shape[0])
            updates = RUNTIME.commit_updates(state, stats, injected=False)
            try:
                first, _ = state.commit_keyframe(latent, int(seed), int(images.shape[0]), stats, updates)
            except OSError as exc:
                raise fail(node, f"cannot save the session state in {state.folder}: {exc}; free disk space "
                                 f"or make the folder writable, then start the session again") from exc
        shown = writer.last_written
        writer.submit(first, to_uint8(images))
        ui = None
        if shown is not None:
            subfolder = f"dream_window/{session.name}/frames"
            ui = {"images": [{"filename": frame_name(shown), "subfolder": subfolder, "type": "output"}]}
        return io.NodeOutput(session, ui=ui)


class DreamWindowAutoQueue(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return comfy.schema(
            node_id="DreamWindowAutoQueue",
            display_name="Dream Window AutoQueue",
            category=CATEGORY,
            description="Keeps the loop going with no browser open: after each iteration the session's "
                        "supervisor (on ComfyUI's server) queues the workflow again, retries failed iterations "
                        "up to 3 times and then pauses with the error. Stop or pause it from the Dream Window "
                        "panel or POST /dream_window/stop.",
            search_aliases=["auto queue", "loop forever", "requeue"],
            is_output_node=True,
            inputs=[
                session_input(),
                io.Boolean.Input("enabled", default=True,
                                 tooltip="Off: run one iteration per Queue press."),
                io.Int.Input("max_iterations", default=0, min=0, max=2**31 - 1,
                             tooltip="Stop after this many keyframes in total, counted across restarts; 0 = endless."),
                io.Float.Input("min_delay", default=0.0, min=0.0, max=3600.0, step=0.1,
                               tooltip="Seconds to wait between the end of one iteration and the next."),
                io.Float.Input("buffer_target", default=30.0, min=0.0, max=3600.0, step=1.0,
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
        for label, value in (("min_delay", min_delay), ("buffer_target", buffer_target)):
            if not math.isfinite(value) or value < 0:
                raise fail("DreamWindowAutoQueue", f"{label} must be a finite number of seconds >= 0")
        state = RUNTIME.session(session.name)
        settings = {"enabled": bool(enabled), "max_iterations": int(max_iterations), "min_delay": float(min_delay),
                    "buffer_target": float(buffer_target)}
        with state.lock:
            if {k: state.settings.get(k) for k in settings} != settings:
                state.settings.update(settings)
                state.save_control()
                RUNTIME.configure_playback(state)
            text = f"session {session.name}: iteration {state.iteration}, {state.frames_produced()} frames"
        return io.NodeOutput(ui={"text": [text]})


NODES = [DreamWindowSession, DreamWindowKeyframeSource, DreamWindowInterpolate, DreamWindowCommit,
         DreamWindowAutoQueue]
