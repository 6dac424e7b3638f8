"""The dream loop's nodes: session, keyframe source, interpolation, commit and autoqueue."""

from __future__ import annotations

import logging
import random
import secrets
from pathlib import Path

import torch

from ..core.cache.aesthetic_loop import ACTION_CACHE, ACTION_NONE, ACTION_SEED
from ..core.cache.store import EmbeddingMismatchError
from ..core.loop import interpolation, seed_images
from ..core.loop.frames import frame_name, png_text, to_uint8
from ..core.loop.session import SessionError, strip_is_changed, validate_name
from . import comfy_adapter as comfy
from .caches import CACHES
from .comfy_adapter import io
from .common import CATEGORY, CacheType, SessionType, fail, finite, log_prefix, session_input
from .runtime import RUNTIME, SessionHandle

log = logging.getLogger("dream_window")

LATENT_SCALE = 8
"""Pixels per latent cell of SD-family VAEs; width and height must be multiples of it."""
MIN_SIZE, MAX_SIZE = 64, 8192
MODES = ("hybrid", "img2img", "interpolate")
SEEDS_IN_WALK = 32
"""Seed images added to the cache for the interpolate walk, at most."""


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
            hidden=[io.Hidden.prompt, io.Hidden.unique_id, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def validate_inputs(cls, name=None):
        # ComfyUI lists a refusal once for every input this function names (and checks no min or max
        # of those), so each node names only what ComfyUI cannot check itself: here the name.
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
        finite("DreamWindowSession", fps=fps, min_buffer_seconds=min_buffer_seconds)
        try:
            session = RUNTIME.session(validate_name(name), create=True)
        except SessionError as exc:
            raise fail("DreamWindowSession", str(exc)) from exc
        with session.lock:
            session.settings.update(fps=float(fps), min_buffer_seconds=float(min_buffer_seconds))
        RUNTIME.configure_playback(session)
        RUNTIME.begin_iteration(name, cls.hidden.prompt, comfy.current_client_id(), cls.hidden.extra_pnginfo)
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
                comfy.Choice("seed_mode", options=["random", "sequence"], default="random",
                             tooltip="random: a fresh random 32-bit seed per keyframe; "
                                     "sequence: base_seed + iteration, so a run can be replayed."),
                io.Int.Input("base_seed", default=0, min=0, max=0xFFFFFFFF,
                             tooltip="First seed of the 'sequence' mode; ignored by 'random'."),
                comfy.Choice("mode", options=list(MODES), default="hybrid",
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
                return (f"DreamWindowKeyframeSource: {key} must be a multiple of {LATENT_SCALE} from {MIN_SIZE} "
                        f"to {MAX_SIZE}, got {value}")
        return True

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")

    @classmethod
    def check_lazy_status(cls, session, **inputs):
        # An unconnected optional input is absent; a connected one not yet evaluated is None.
        wanted = "image" in inputs and inputs["image"] is None
        return ["image"] if wanted and RUNTIME.session(session.name).prev_latent is None else []

    @classmethod
    def execute(cls, session, width, height, denoise, seed_mode, base_seed, mode, seed_folder="", vae=None,
                image=None, cache=None):
        node = "DreamWindowKeyframeSource"
        if width % LATENT_SCALE or height % LATENT_SCALE:
            raise fail(node, f"width and height must be multiples of {LATENT_SCALE}, got {width}x{height}")
        finite(node, denoise=denoise)
        if mode == "interpolate" and cache is None:
            raise fail(node, "mode 'interpolate' walks between cached keyframes: wire a Dream Window Cache "
                             "into 'cache'")
        state = RUNTIME.session(session.name)
        with state.lock:
            prev, iteration = state.prev_latent, state.iteration
        seed = (base_seed + iteration) % 2**32 if seed_mode == "sequence" else secrets.randbits(32)
        plan = RUNTIME.plans.setdefault(session.name, {})
        plan.update(mode=mode, injected=False)
        loop = CACHES.current(session.name) if cache is not None else None
        if loop is not None:
            CACHES.settle(session.name, node)  # the last keyframe's analysis feeds this decision
            loop.proposal = None  # a failed attempt's decision is made again, never committed
        seeds = cls._seed_files(seed_folder)
        if mode == "interpolate" and loop is not None and seeds and vae is not None:
            cls._seed_walk_bank(loop, seeds, vae, width, height)
        if prev is None:
            start = loop.walk_target(1, None) if mode == "interpolate" else None
            if start is None and mode == "interpolate" and image is None and not seeds:
                raise fail(node, "mode 'interpolate' has nothing to walk between: run the loop in hybrid mode "
                                 "for a while to fill the cache, or give a seed_folder and a VAE")
            if start is None:
                latent, denoise = cls._first(width, height, denoise, image, seeds, seed, vae)
                start = (None, latent)
            latent = start[1]
            if mode == "interpolate":
                plan["walk"] = start
        else:
            want = (height // LATENT_SCALE, width // LATENT_SCALE)
            if tuple(prev.shape[-2:]) != want:
                have = (prev.shape[-1] * LATENT_SCALE, prev.shape[-2] * LATENT_SCALE)
                raise fail(node, f"session '{session.name}' holds {have[0]}x{have[1]} keyframes but this "
                                 f"workflow asks for {width}x{height}; reset the session (Reset in the Dream "
                                 f"Window panel or POST /dream_window/reset) or set the size back")
            latent = prev.clone()
            if mode == "interpolate":
                target = loop.walk_target(iteration + 1, state.policy.get("walk_at"))
                if target is None:
                    raise fail(node, "mode 'interpolate' found no cached keyframe to walk to: run the loop in "
                                     "hybrid mode for a while, or give a seed_folder and a VAE")
                plan["walk"] = target
            elif loop is not None and cache.injection:
                latent = cls._inject(session.name, loop, plan, iteration + 1, latent, seeds, vae, width, height)
        RUNTIME.mark(session.name, "source_done")
        return io.NodeOutput({"samples": latent.to(comfy.intermediate_device())}, denoise, seed)

    @classmethod
    def _first(cls, width, height, denoise, image, seeds, seed, vae):
        """The first keyframe's source: the IMAGE input, a random seed file, or an empty latent."""
        if image is None and seeds:
            image = seed_images.load_image(random.Random(seed).choice(seeds))
        if image is None:
            return torch.zeros((1, 4, height // LATENT_SCALE, width // LATENT_SCALE)), 1.0
        return cls._encode(vae, image, width, height), denoise

    @staticmethod
    def _encode(vae, image, width, height) -> torch.Tensor:
        if vae is None:
            raise fail("DreamWindowKeyframeSource", "seed images need the workflow's VAE: wire the checkpoint's "
                                                    "VAE into 'vae'")
        return vae.encode(seed_images.fit_image(image[:1], width, height)).to("cpu", torch.float32)

    @classmethod
    def _inject(cls, name, loop, plan, keyframe, current, seeds, vae, width, height) -> torch.Tensor:
        """Apply the policy's decision: a cache or seed blend replaces the sampler's input."""
        decision = loop.decide(keyframe, len(seeds) if vae is not None else 0)
        record = decision.to_dict()
        blended = current
        try:
            if decision.action == ACTION_CACHE:
                blended = loop.injected_latent(decision, current)
            elif decision.action == ACTION_SEED:
                seed = cls._encode(vae, seed_images.load_image(seeds[decision.seed_index % len(seeds)]),
                                   width, height)
                blended = loop.seed_latent(seed, current)
        except (LookupError, OSError, ValueError) as exc:
            log.warning("%s: injection for keyframe %d skipped: %s", log_prefix(name, "DreamWindowKeyframeSource"),
                        keyframe, exc)
            record.update(action=ACTION_NONE, reason=f"{record['reason']}; skipped: {exc}")
        plan.update(decision=record, injected=record["action"] != ACTION_NONE)
        return blended

    @classmethod
    def _seed_walk_bank(cls, loop, seeds, vae, width, height) -> None:
        """Interpolate mode walks through the seed images too: cache them once, as "seed" entries."""
        if any(entry.source == "seed" for entry in loop.store.entries()):
            return
        for path in seeds[:SEEDS_IN_WALK]:
            image = seed_images.fit_image(seed_images.load_image(path), width, height)
            latent = cls._encode(vae, image, width, height)
            embedding = loop.store.strategy.embed(images=image, latents=latent)[0]
            loop.store.add(embedding, latent=latent, image=image, source="seed", prompt=path.name)

    @staticmethod
    def _seed_files(seed_folder: str) -> list[Path]:
        if not seed_folder:
            return []
        node = "DreamWindowKeyframeSource"
        root = Path(comfy.input_directory()).resolve()
        shown = repr(seed_folder) if len(seed_folder) <= 80 else repr(seed_folder[:77]) + "..."
        try:
            folder = (root / seed_folder).resolve()
            if root not in folder.parents and folder != root:
                raise fail(node, f"seed_folder {shown} leaves ComfyUI's input folder; give a folder inside {root}")
            return seed_images.seed_files(folder)
        except FileNotFoundError as exc:
            raise fail(node, f"{exc}; put seed images there or clear seed_folder") from exc
        except (OSError, ValueError) as exc:  # a NUL byte, a name too long for the filesystem
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise fail(node, f"seed_folder {shown} is not a usable folder name ({reason}); give a folder inside "
                             f"{root} or clear seed_folder") from exc


class DreamWindowInterpolate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return comfy.schema(
            node_id="DreamWindowInterpolate",
            display_name="Dream Window Interpolate",
            category=CATEGORY,
            description="Frames between the previous keyframe and the new one: a global slerp (or lerp) of "
                        "the whole latent with linearly interpolated magnitude, all frames at once. Outputs "
                        "one LATENT batch (the in-between frames, then the new keyframe) for one VAE Decode. "
                        "In the keyframe source's interpolate mode it walks to a cached keyframe instead and "
                        "the sampler is skipped.",
            search_aliases=["slerp", "latent interpolation", "tween"],
            inputs=[
                session_input(),
                io.Latent.Input("keyframe", lazy=True,
                                tooltip="The new keyframe: KSampler's output (not evaluated in interpolate mode)."),
                io.Int.Input("frames", default=10, min=0, max=512,
                             tooltip="In-between frames per keyframe pair (endpoints excluded); 0 = keyframes only."),
                comfy.Choice("method", options=list(interpolation.METHODS), default="slerp",
                             tooltip="slerp: spherical (keeps the latent's energy); lerp: straight line."),
                comfy.Choice("easing", options=list(interpolation.EASINGS), default="linear",
                             tooltip="Spacing of the frames in time: linear, an even pace; ease_in_out, slower near "
                                     "both keyframes; ease_in, near the previous one; ease_out, near the new one."),
            ],
            outputs=[io.Latent.Output("frames_out", display_name="frames",
                                      tooltip="In-between frames then the new keyframe, as one batch. The first "
                                              "iteration has no previous keyframe and emits the keyframe only.")],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")

    @classmethod
    def check_lazy_status(cls, session, keyframe=None, **inputs):
        walking = RUNTIME.plans.get(session.name, {}).get("mode") == "interpolate"
        return [] if walking or keyframe is not None else ["keyframe"]

    @classmethod
    def execute(cls, session, frames, method, easing, keyframe=None):
        node = "DreamWindowInterpolate"
        RUNTIME.mark(session.name, "sampled")
        plan = RUNTIME.plans.get(session.name, {})
        if plan.get("mode") == "interpolate":
            new = plan["walk"][1].to(comfy.intermediate_device(), torch.float32)
        elif keyframe is None:
            raise fail(node, "no keyframe: wire KSampler's output into 'keyframe'")
        else:
            new = keyframe["samples"]
        if new.dim() != 4 or new.shape[0] != 1 or 0 in new.shape:
            raise fail(node, f"expected one keyframe latent [1, C, H, W], got shape {tuple(new.shape)}; "
                             f"set the sampler's batch size to 1")
        if frames < 0:
            raise fail(node, f"frames must be >= 0, got {frames}")
        state = RUNTIME.session(session.name)
        with state.lock:
            prev = state.prev_latent
        if prev is None or frames == 0 or plan.get("mode") == "img2img":
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
                io.Image.Input("images", tooltip="The same batch decoded (VAE Decode of the Interpolate node's "
                                                 "output)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, control_after_generate=False,
                             tooltip="The keyframe's sampler seed, recorded in the session (wire it from the "
                                     "keyframe source)."),
                io.Int.Input("retention", default=128, min=1, max=1_000_000,
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
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def _frame_text(cls) -> bytes:
        """The text chunks of this iteration's frames, as ComfyUI's SaveImage writes them (none with
        ``--disable-metadata``): the prompt as it was queued, without the ``is_changed`` values (NaN,
        which is not JSON) ComfyUI adds to a prompt whose nodes always run, and the workflow (the
        session's supervisor queues every iteration with the one its prompt came with)."""
        if comfy.metadata_disabled():
            return b""
        prompt = cls.hidden.prompt
        return png_text(strip_is_changed(prompt) if prompt is not None else None, cls.hidden.extra_pnginfo)

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")

    @classmethod
    def execute(cls, session, latents, images, seed, retention, cache=None):
        node = "DreamWindowCommit"
        batch = latents["samples"]
        if images.dim() != 4 or images.shape[0] == 0:
            raise fail(node, f"expected a batch of images, got shape {tuple(images.shape)}")
        if batch.dim() != 4 or batch.shape[0] != images.shape[0]:
            raise fail(node, f"{tuple(batch.shape)[:1]} latents but {images.shape[0]} images: decode the "
                             f"Interpolate node's output and wire both here")
        state = RUNTIME.session(session.name)
        writer = RUNTIME.writer(state, retention)
        cls._check_frames_folder(writer.folder)
        if writer.error is not None:
            error, writer.error = writer.error, None
            raise fail(node, f"cannot write frames to {writer.folder}: {error}; free disk space or make the "
                             f"folder writable, then start the session again", retry=True)
        if state.iteration == 0 and images.shape[0] != 1:
            raise fail(node, f"the first iteration has no previous keyframe and must give 1 frame, got "
                             f"{images.shape[0]}; wire the Interpolate node's output into VAE Decode")
        RUNTIME.mark(session.name, "decoded")
        plan = RUNTIME.plans.get(session.name, {})
        keyframe = state.iteration + 1
        loop = CACHES.current(session.name) if cache is not None else None
        if loop is not None:  # before the commit: an analysis failing here leaves the state as it was
            CACHES.settle(session.name, node)
            cls._offer_to_cache(loop, session.name, keyframe, batch, images, plan)
        elapsed = RUNTIME.span(session.name, "start", "decoded")
        with state.lock:
            stats = dict(state.stats)
            stats["keyframe_time"] = RUNTIME.span(session.name, "source_done", "sampled")
            stats["batch_decode_time"] = RUNTIME.span(session.name, "interpolated", "decoded")
            if elapsed is not None:
                stats["iteration_time"] = elapsed
            for kind, value in (("iteration", elapsed), ("keyframe", stats["keyframe_time"])):
                if value is not None:  # running means; status.json's generation_time is the keyframe one
                    count = stats.get(f"{kind}s_timed", 0)
                    stats[f"mean_{kind}_time"] = (stats.get(f"mean_{kind}_time", 0.0) * count + value) / (count + 1)
                    stats[f"{kind}s_timed"] = count + 1
            stats["frames_last_iteration"] = int(images.shape[0])
            stats["mode"] = plan.get("mode", "hybrid")
            if "decision" in plan:
                stats["last_decision"] = plan["decision"]
            updates = RUNTIME.commit_updates(state, stats, injected=plan.get("injected", False))
            if loop is not None:
                updates["policy"] = dict(loop.policy_state(keyframe), walk_at=(plan.get("walk") or (None,))[0])
            try:
                first, _ = state.commit_keyframe(batch[-1:], int(seed), int(images.shape[0]), stats, updates)
            except OSError as exc:
                raise fail(node, f"cannot save the session state in {state.folder}: {exc}; free disk space "
                                 f"or make the folder writable, then start the session again", retry=True) from exc
            except ValueError as exc:  # JSON refuses NaN: a node input of the stored workflow holds one
                raise fail(node, f"cannot save the session state in {state.folder}: {exc}; the workflow holds "
                                 f"NaN or infinity in an input: fix that input, then start the session "
                                 f"again") from exc
            if loop is not None:  # only now: a keyframe that failed before here decides again the same way
                loop.commit(keyframe)
        RUNTIME.committed(session.name)
        shown = writer.last_written
        writer.submit(first, to_uint8(images), cls._frame_text())
        ui = None
        if shown is not None:
            subfolder = f"dream_window/{session.name}/frames"
            ui = {"images": [{"filename": frame_name(shown), "subfolder": subfolder, "type": "output"}]}
        return io.NodeOutput(session, images[-1:], ui=ui)

    @staticmethod
    def _check_frames_folder(folder: Path) -> None:
        """Refuse, before anything is committed, a frames folder that cannot take the frames."""
        node = "DreamWindowCommit"
        if folder.is_symlink():
            raise fail(node, f"{folder} is a link; frames are only written inside the session folder: remove "
                             f"the link, then start the session again")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            fix = ("it is a file, not a folder: remove or rename that file" if folder.exists()
                   else "free disk space or make the folder writable")
            raise fail(node, f"cannot write frames to {folder}: {exc}; {fix}, then start the session again",
                       retry=True) from exc

    @staticmethod
    def _offer_to_cache(loop, name, keyframe, batch, images, plan) -> None:
        """Embed the keyframe (and the pair's midpoint) in one batch; admit, analyse: on the cache
        worker when the strategy allows it (the next keyframe source waits for it), else here."""
        rows = [batch.shape[0] - 1] + ([(batch.shape[0] - 1) // 2] if batch.shape[0] > 1 else [])
        latents, pair = batch[rows].to("cpu", torch.float32), images[rows].cpu()  # copies: the frames change below
        injected, prompt = plan.get("injected", False), plan.get("prompt", ("",))[0]
        admit, prefix = plan.get("mode") != "interpolate", log_prefix(name, "DreamWindowCommit")

        def analyse() -> None:
            with torch.inference_mode():
                record = loop.after_keyframe(keyframe, latents, pair, injected=injected, prompt=prompt, admit=admit)
            if record.get("cache_error"):
                log.warning("%s: keyframe %d not cached, the loop goes on without caching: %s", prefix, keyframe,
                            record["cache_error"])
            RUNTIME.cache_stats[name] = loop.stats()

        try:
            CACHES.analyse(name, loop, analyse)
        except EmbeddingMismatchError as exc:
            raise fail("DreamWindowCommit", str(exc)) from exc


class DreamWindowAutoQueue(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return comfy.schema(
            node_id="DreamWindowAutoQueue",
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
        finite("DreamWindowAutoQueue", min_delay=min_delay, buffer_target=buffer_target)
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
