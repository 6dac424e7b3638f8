"""The dream loop's sequence as named steps, one per node: begin an iteration, choose the prompt, make the
keyframe source, interpolate, commit; beside them, configure the cache and the autoqueue, load frames.

Each node's ``execute`` checks what ComfyUI cannot, calls its step and returns. A step works on the
session's ``LiveSession`` and its open ``Iteration`` record; what needs ComfyUI (the VAE, the
intermediate device, the folders) arrives as an argument or through the ``Host``. The algorithms stay in
their modules (``core.cache.injection``, ``core.cache.aesthetic_loop``, ``core.loop.interpolation``, ``core.loop.prompts``). An
error a user must act on is raised by ``fail``, naming the node and the fix.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from pathlib import Path
from typing import Callable

import torch

from . import interpolation, prompts, resolution
from ..cache.aesthetic_loop import ACTION_CACHE, ACTION_NONE, ACTION_SEED, AestheticLoop
from ..cache.store import CacheStoreError, EmbeddingMismatchError
from .decode import VaeDecoder, pixels_to_uint8
from .frames import FrameBatch, frames_on_disk, select_frames
from .seed_images import fit_image, load_image, seed_files
from .iteration import Iteration, PromptChoice, WalkTarget
from .live_session import LiveSession, LiveSessions, LoopMemory
from .session import KeyframeCommit, Session, SessionError, validate_name
from .session_settings import CacheSettings, autoqueue_settings
from .supervisor import fail, finished_message

log = logging.getLogger("dream_window")

SESSION_NODE = "DreamWindowSession"
PROMPTS_NODE = "DreamWindowPrompts"
SOURCE_NODE = "DreamWindowKeyframeSource"
INTERPOLATE_NODE = "DreamWindowInterpolate"
COMMIT_NODE = "DreamWindowCommit"
AUTOQUEUE_NODE = "DreamWindowAutoQueue"
CACHE_NODE = "DreamWindowCache"
LOAD_FRAMES_NODE = "DreamWindowLoadFrames"

LATENT_SCALE = 8
"""Pixels per latent cell of SD-family VAEs; width and height must be multiples of it."""
MIN_SIZE, MAX_SIZE = 64, 8192
SEEDS_IN_WALK = 32
"""Seed images added to the cache for the interpolate walk, at most."""

Encode = Callable[[torch.Tensor], torch.Tensor]
"""The workflow's VAE encode: an IMAGE batch to a latent."""


class LoopService:
    """The steps of an iteration over the registry's live sessions (see the module docstring)."""

    def __init__(self, sessions: LiveSessions) -> None:
        self.sessions = sessions
        self.host = sessions.host

    # -- begin ----------------------------------------------------------------------------
    def begin(self, name: str, fps: float, min_buffer_seconds: float, prompt: dict | None, client_id: str | None,
              extra_pnginfo: dict | None) -> None:
        """The Session node, first in every iteration: the session (made when new) takes the playback
        settings, opens the iteration's record, and its supervisor watches the running prompt. A session
        that reached the ``max_iterations`` of the workflow queued makes no keyframe more: the prompt fails
        here and the session stays as it was."""
        try:
            live = self.sessions.get(validate_name(name), create=True)
        except SessionError as exc:
            raise fail(SESSION_NODE, str(exc)) from exc
        prompt_id = self.host.executing_prompt_id()
        queued = prompt_id is not None and bool(prompt)
        autoqueue = autoqueue_settings(prompt, name, SESSION_NODE, AUTOQUEUE_NODE) if queued else {}
        limit = autoqueue.get("max_iterations")
        with live.session.lock:
            keyframe = live.session.iteration + 1
        if limit and keyframe > limit:
            raise fail(SESSION_NODE, finished_message(name, limit))
        live.change_settings(fps=float(fps), min_buffer_seconds=float(min_buffer_seconds))
        live.memory.open_iteration(keyframe)
        if queued:
            self.host.run_on_server_loop(live.attach, prompt_id, prompt, client_id, autoqueue, extra_pnginfo)

    def _iteration(self, live: LiveSession) -> Iteration:
        """The open iteration's record (a new one when a reset dropped it mid-iteration)."""
        memory = live.memory
        if memory.iteration is None:
            with live.session.lock:
                memory.iteration = Iteration(live.session.iteration + 1)
        return memory.iteration

    # -- prompt ---------------------------------------------------------------------------
    def choose_prompt(self, name: str, themes: str, interval: int, time_of_day: bool) -> tuple[str, str]:
        """The Prompts node: the rotation's current theme, (positive, negative); the commit consumes its
        slot."""
        try:
            parsed = prompts.parse_themes(themes)
        except ValueError as exc:
            raise fail(PROMPTS_NODE, str(exc)) from exc
        live = self.sessions.get(name)
        with live.session.lock:
            rotation = prompts.RotationState.from_dict(live.session.rotation)
        theme = parsed[rotation.peek(len(parsed), interval)]
        positive = prompts.apply_time_of_day(theme.positive, enabled=time_of_day, hour=time.localtime().tm_hour)
        self._iteration(live).prompt = PromptChoice(positive, len(parsed), interval)
        return positive, theme.negative

    # -- source ---------------------------------------------------------------------------
    def needs_first_image(self, name: str) -> bool:
        """Whether the keyframe source would use an IMAGE input: the session has no keyframe yet."""
        return self.sessions.session(name).prev_latent is None

    def source(self, name: str, *, width: int, height: int, denoise: float, seed_mode: str, base_seed: int,
               mode: str, seed_folder: str, encode: Encode | None, image: torch.Tensor | None,
               cache: CacheSettings | None) -> tuple[torch.Tensor, float, int]:
        """The keyframe source: (latent, denoise, seed) for the sampler. The previous keyframe's latent,
        or the first keyframe's source; with a cache, the policy's injection or the interpolate walk."""
        if width % LATENT_SCALE or height % LATENT_SCALE:
            raise fail(SOURCE_NODE, f"width and height must be multiples of {LATENT_SCALE}, got {width}x{height}")
        if mode == "interpolate" and cache is None:
            raise fail(SOURCE_NODE, "mode 'interpolate' walks between cached keyframes: wire a Dream Window "
                                    "Cache into 'cache'")
        live = self.sessions.get(name)
        record, session = self._iteration(live), live.session
        with session.lock:
            prev, iteration, walk_at = session.prev_latent, session.iteration, session.policy.get("walk_at")
        seed = (base_seed + iteration) % 2**32 if seed_mode == "sequence" else secrets.randbits(32)
        record.mode, record.decision, record.walk = mode, None, None
        loop = live.memory.cache_loop if cache is not None else None
        if loop is not None:
            self._settle(live.memory, SOURCE_NODE)  # the last keyframe's analysis feeds this decision
        seeds = self._seed_files(seed_folder)
        if mode == "interpolate" and loop is not None and seeds and encode is not None:
            self._seed_walk_bank(loop, seeds, encode, width, height)
        if prev is None:
            latent, denoise = self._first(record, loop, width, height, denoise, image, seeds, seed, encode)
        else:
            latent = self._next(name, record, loop, cache, prev, walk_at, width, height, seeds, encode)
        record.source_done = record.now()
        return latent.to(self.host.intermediate_device()), denoise, seed

    def _first(self, record: Iteration, loop: AestheticLoop | None, width: int, height: int, denoise: float,
               image, seeds: list[Path], seed: int, encode: Encode | None) -> tuple[torch.Tensor, float]:
        """The first keyframe's source: a cached keyframe to walk from (interpolate mode), the IMAGE input,
        a random seed file, or an empty latent (at denoise 1.0)."""
        start = loop.walk_target(1, None) if record.walking else None
        if start is None and record.walking and image is None and not seeds:
            raise fail(SOURCE_NODE, "mode 'interpolate' has nothing to walk between: run the loop in hybrid mode "
                                    "for a while to fill the cache, or give a seed_folder and a VAE")
        if start is None:
            if image is None and seeds:
                image = load_image(random.Random(seed).choice(seeds))
            if image is None:
                latent, denoise = torch.zeros((1, 4, height // LATENT_SCALE, width // LATENT_SCALE)), 1.0
            else:
                latent = self._encode(encode, image, width, height)
            start = (None, latent)
        if record.walking:
            record.walk = WalkTarget(*start)
        return start[1], denoise

    def _next(self, name: str, record: Iteration, loop: AestheticLoop | None, cache: CacheSettings | None,
              prev: torch.Tensor, walk_at: str | None, width: int, height: int, seeds: list[Path],
              encode: Encode | None) -> torch.Tensor:
        """Every later keyframe's source: the previous keyframe, or the walk's next target, or the
        policy's blend."""
        want = (height // LATENT_SCALE, width // LATENT_SCALE)
        if tuple(prev.shape[-2:]) != want:
            have = (prev.shape[-1] * LATENT_SCALE, prev.shape[-2] * LATENT_SCALE)
            raise fail(SOURCE_NODE, f"session '{name}' holds {have[0]}x{have[1]} keyframes but this workflow asks "
                                    f"for {width}x{height}; reset the session (Reset in the Dream Window panel or "
                                    f"POST /dream_window/reset) or set the size back")
        latent = prev.clone()
        if record.walking:
            target = loop.walk_target(record.keyframe, walk_at)
            if target is None:
                raise fail(SOURCE_NODE, "mode 'interpolate' found no cached keyframe to walk to: run the loop in "
                                        "hybrid mode for a while, or give a seed_folder and a VAE")
            record.walk = WalkTarget(*target)
        elif loop is not None and cache.injection:
            latent = self._inject(name, record, loop, latent, seeds, encode, width, height)
        return latent

    @staticmethod
    def _encode(encode: Encode | None, image: torch.Tensor, width: int, height: int) -> torch.Tensor:
        if encode is None:
            raise fail(SOURCE_NODE, "seed images need the workflow's VAE: wire the checkpoint's VAE into 'vae'")
        return encode(fit_image(image[:1], width, height)).to("cpu", torch.float32)

    def _inject(self, name: str, record: Iteration, loop: AestheticLoop, current: torch.Tensor, seeds: list[Path],
                encode: Encode | None, width: int, height: int) -> torch.Tensor:
        """Apply the policy's decision: a cache or seed blend replaces the sampler's input."""
        decision = loop.decide(record.keyframe, len(seeds) if encode is not None else 0)
        made = decision.to_dict()
        blended = current
        try:
            if decision.action == ACTION_CACHE:
                blended = loop.injected_latent(decision, current)
            elif decision.action == ACTION_SEED:
                seed = self._encode(encode, load_image(seeds[decision.seed_index % len(seeds)]),
                                    width, height)
                blended = loop.seed_latent(seed, current)
        except (LookupError, OSError, ValueError) as exc:
            log.warning("%s: injection for keyframe %d skipped: %s", self._log_prefix(name, SOURCE_NODE),
                        record.keyframe, exc)
            made.update(action=ACTION_NONE, reason=f"{made['reason']}; skipped: {exc}")
        record.decision = made
        return blended

    def _seed_walk_bank(self, loop: AestheticLoop, seeds: list[Path], encode: Encode, width: int,
                        height: int) -> None:
        """Interpolate mode walks through the seed images too: cache them once, as "seed" entries."""
        if any(entry.source == "seed" for entry in loop.store.entries()):
            return
        for path in seeds[:SEEDS_IN_WALK]:
            image = fit_image(load_image(path), width, height)
            latent = self._encode(encode, image, width, height)
            embedding = loop.store.strategy.embed(images=image, latents=latent)[0]
            loop.store.add(embedding, latent=latent, image=image, source="seed", prompt=path.name)

    def _seed_files(self, seed_folder: str) -> list[Path]:
        if not seed_folder:
            return []
        root = Path(self.host.input_folder()).resolve()
        shown = repr(seed_folder) if len(seed_folder) <= 80 else repr(seed_folder[:77]) + "..."
        try:
            folder = (root / seed_folder).resolve()
            if root not in folder.parents and folder != root:
                raise fail(SOURCE_NODE, f"seed_folder {shown} leaves ComfyUI's input folder; give a folder inside "
                                        f"{root}")
            return seed_files(folder)
        except FileNotFoundError as exc:
            raise fail(SOURCE_NODE, f"{exc}; put seed images there or clear seed_folder") from exc
        except (OSError, ValueError) as exc:  # a NUL byte, a name too long for the filesystem
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise fail(SOURCE_NODE, f"seed_folder {shown} is not a usable folder name ({reason}); give a folder "
                                    f"inside {root} or clear seed_folder") from exc

    # -- interpolate ----------------------------------------------------------------------
    def walking(self, name: str) -> bool:
        """Whether the open iteration walks (interpolate mode): then no keyframe is sampled."""
        record = self.sessions.get(name).memory.iteration
        return record is not None and record.walking

    def interpolate(self, name: str, keyframe: torch.Tensor | None, frames: int, method: str, easing: str,
                    divisor: str, downsample: str, upscale: str, decoder: VaeDecoder | None) -> torch.Tensor:
        """Interpolate: the frames between the previous keyframe and the new one (the sampled keyframe, or
        the walk's target), then the new one, as one latent batch. With the workflow's VAE (``decoder``)
        the node also decodes them, straight to uint8 frames on the VAE's device (``core.loop.decode``),
        kept in the iteration record for Commit. With a divisor above 1 the frames between are made small,
        decoded and upscaled (``core.loop.resolution``), and the latent batch is the new keyframe alone."""
        live = self.sessions.get(name)
        record = self._iteration(live)
        record.sampled = record.now()
        if record.walking:
            new = record.walk.latent.to(self.host.intermediate_device(), torch.float32)
        elif keyframe is None:
            raise fail(INTERPOLATE_NODE, "no keyframe: wire KSampler's output into 'keyframe'")
        else:
            new = keyframe
        if new.dim() != 4 or new.shape[0] != 1 or 0 in new.shape:
            raise fail(INTERPOLATE_NODE, f"expected one keyframe latent [1, C, H, W], got shape {tuple(new.shape)}; "
                                         f"set the sampler's batch size to 1")
        if frames < 0:
            raise fail(INTERPOLATE_NODE, f"frames must be >= 0, got {frames}")
        small = resolution.factor(divisor) != 1
        if small and decoder is None:
            raise fail(INTERPOLATE_NODE, f"divisor {divisor} decodes the in-between frames in this node: wire the "
                                         f"checkpoint's VAE into 'vae', or set divisor to 1")
        with live.session.lock:
            prev = live.session.prev_latent
        pair = None
        if prev is not None and frames and record.mode != "img2img":
            pair = prev.to(new.device, new.dtype)
            if pair.shape != new.shape:
                raise fail(INTERPOLATE_NODE, f"the new keyframe {tuple(new.shape)} does not match the previous one "
                                             f"{tuple(pair.shape)}; reset the session after changing size or model")
        batch = new
        if pair is not None and not small:
            batch = torch.cat([interpolation.interpolate(pair[0], new[0], frames, method, easing), new], dim=0)
        record.interpolated = record.now()
        if decoder is not None:
            record.frames = self._decode(decoder, batch, pair if small else None, frames, method, easing, divisor,
                                         downsample, upscale)
            record.decoded = record.now()
        return batch

    @staticmethod
    def _decode(decoder: VaeDecoder, batch: torch.Tensor, prev: torch.Tensor | None, frames: int, method: str,
                easing: str, divisor: str, downsample: str, upscale: str) -> torch.Tensor:
        """The iteration's uint8 frames on the VAE's device: ``batch`` decoded, or (a divisor, and ``prev``
        the previous keyframe) the small in-between frames (decoded, upscaled to the keyframe's size) then
        the keyframe ``batch``."""
        if prev is None:
            return decoder.frames(batch)
        size = resolution.small_size(batch.shape[-2], batch.shape[-1], resolution.factor(divisor))
        pair = resolution.downscale(torch.cat([prev, batch]), size, downsample)
        small = decoder.pixels(interpolation.interpolate(pair[0], pair[1], frames, method, easing))
        scale_h, scale_w = small.shape[-2] // size[0], small.shape[-1] // size[1]
        pixels = resolution.upscale(small, (batch.shape[-2] * scale_h, batch.shape[-1] * scale_w), upscale)
        out = torch.empty((frames + 1, *pixels.shape[-2:], pixels.shape[1]), dtype=torch.uint8, device=pixels.device)
        pixels_to_uint8(pixels, out[:frames], signed=False)
        decoder.frames(batch, out=out[frames:])
        return out

    # -- commit ---------------------------------------------------------------------------
    def commit(self, name: str, latents: torch.Tensor, images: torch.Tensor | None, seed: int, retention: int,
               cache: CacheSettings | None, frame_text: bytes) -> tuple[int | None, torch.Tensor]:
        """Commit: record the new keyframe in the session (the one place the policy state and the prompt
        rotation advance), close the iteration, hand its frames and its durable commit to the writer.
        The frames are those the Interpolate node decoded, or the IMAGE batch wired in (``images``).
        Returns the newest frame written before (for the node's preview; None when none was) and the new
        keyframe's frame (uint8 where Interpolate decoded, else an IMAGE row).

        The keyframe is durable once the writer wrote its frames, its latents and ``state.json``; the
        next iteration starts from it in memory. A commit that failed there is raised here, by the next
        one, and until one succeeds each commit is waited for (so the retries fail here, as they would
        in line); so is the last one of a run (stopped, autoqueue off, ``max_iterations`` reached)."""
        live = self.sessions.get(name)
        session = live.session
        record = self._iteration(live)
        frames = self._frames(record, latents, images)
        live.change_settings(retention=int(retention))
        writer = live.writer()
        self._check_frames_folder(writer.folder)
        if writer.error is not None:
            error, writer.error = writer.error, None
            raise fail(COMMIT_NODE, f"cannot write frames to {writer.folder}: {error}; free disk space or make the "
                                    f"folder writable, then start the session again", retry=True)
        if session.iteration == 0 and frames.shape[0] != 1:
            raise fail(COMMIT_NODE, f"the first iteration has no previous keyframe and must give 1 frame, got "
                                    f"{frames.shape[0]}; wire the Interpolate node's output into VAE Decode")
        if record.decoded is None:
            record.decoded = record.now()
        loop = live.memory.cache_loop if cache is not None else None
        if loop is not None:  # before the commit: an analysis failing here leaves the state as it was
            self._settle(live.memory, COMMIT_NODE)
            self._offer_to_cache(live, loop, record, latents, frames)
        commit = self._persist(live, record, loop, latents[-1:], int(seed), int(frames.shape[0]))
        live.committed()
        shown = writer.last_written
        live.submit(commit, FrameBatch(frames), frame_text)
        if commit.waited:
            commit.done.wait()
            with session.lock:
                session.commit_error = None
            if commit.error is not None:
                raise self._state_error(session, commit.error)
        return shown, frames[-1:]

    @staticmethod
    def _frames(record: Iteration, latents: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
        """The iteration's frames: the uint8 frames the Interpolate node decoded, or the IMAGE batch wired
        into Commit (one image per latent); never both."""
        if latents.dim() != 4 or latents.shape[0] == 0:
            raise fail(COMMIT_NODE, f"expected a batch of latents, got shape {tuple(latents.shape)}: wire the "
                                    f"Interpolate node's output into 'latents'")
        if record.frames is not None:
            if images is not None:
                raise fail(COMMIT_NODE, "the Interpolate node decoded these frames already (its 'vae' is wired): "
                                        "remove the link into 'images' and the VAE Decode node before it, or "
                                        "unwire the Interpolate node's 'vae'")
            return record.frames
        if images is None:  # also after a reset during this iteration: the retry decodes again
            raise fail(COMMIT_NODE, "no frames reached Commit: wire the checkpoint's VAE into the Interpolate "
                                    "node's 'vae' (it decodes the frames), or VAE Decode of its output into "
                                    "'images'", retry=True)
        if images.dim() != 4 or images.shape[0] == 0:
            raise fail(COMMIT_NODE, f"expected a batch of images, got shape {tuple(images.shape)}")
        if latents.shape[0] != images.shape[0]:
            raise fail(COMMIT_NODE, f"{tuple(latents.shape)[:1]} latents but {images.shape[0]} images: decode the "
                                    f"Interpolate node's output and wire both here")
        return images

    @staticmethod
    def _persist(live: LiveSession, record: Iteration, loop: AestheticLoop | None, keyframe: torch.Tensor,
                 seed: int, frames: int) -> KeyframeCommit:
        """Stage the keyframe with the stats, rotation and policy state the iteration leads to; only then
        does the loop take its proposed policy state and the iteration close. Returns its commit (a failed
        earlier one is raised instead)."""
        session = live.session
        with session.lock:
            error, session.commit_error = session.commit_error, None
            if error is not None:
                raise LoopService._state_error(session, error)
            updates = {}
            if record.prompt is not None:
                rotation = prompts.RotationState.from_dict(session.rotation)
                rotation.consume(record.prompt.themes, record.prompt.interval, injected=record.injected)
                updates["rotation"] = rotation.to_dict()
            if loop is not None:
                walk_at = record.walk.entry_id if record.walk is not None else None
                updates["policy"] = dict(loop.policy_state(record.keyframe), walk_at=walk_at)
            try:
                commit = session.stage_keyframe(keyframe, seed, frames, record.stats(session.stats, frames), updates)
            except ValueError as exc:
                raise LoopService._state_error(session, exc) from exc
            commit.waited = session.commits_failing or session.run_ends()
            if loop is not None:  # only now: a keyframe that failed before here decides again the same way
                loop.commit(record.keyframe)
            live.memory.iteration = None
        return commit

    @staticmethod
    def _state_error(session: Session, error: Exception) -> RuntimeError:
        """The error a failed keyframe commit reaches the user with."""
        if isinstance(error, ValueError):  # JSON refuses NaN: a node input of the stored workflow holds one
            return fail(COMMIT_NODE, f"cannot save the session state in {session.folder}: {error}; the workflow "
                                     f"holds NaN or infinity in an input: fix that input, then start the session "
                                     f"again")
        return fail(COMMIT_NODE, f"cannot save the session state in {session.folder}: {error}; free disk space or "
                                 f"make the folder writable, then start the session again", retry=True)

    @staticmethod
    def _check_frames_folder(folder: Path) -> None:
        """Refuse, before anything is committed, a frames folder that cannot take the frames."""
        if folder.is_symlink():
            raise fail(COMMIT_NODE, f"{folder} is a link; frames are only written inside the session folder: remove "
                                    f"the link, then start the session again")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            fix = ("it is a file, not a folder: remove or rename that file" if folder.exists()
                   else "free disk space or make the folder writable")
            raise fail(COMMIT_NODE, f"cannot write frames to {folder}: {exc}; {fix}, then start the session again",
                       retry=True) from exc

    def _offer_to_cache(self, live: LiveSession, loop: AestheticLoop, record: Iteration, batch: torch.Tensor,
                        images: torch.Tensor) -> None:
        """Embed the keyframe (and the pair's midpoint) in one batch; admit, analyse: on the cache
        worker when the strategy allows it (the next keyframe source waits for it), else here. The two
        frames are copied to the CPU by the analysis itself, so on the worker Commit never waits for the
        GPU to finish decoding them."""
        rows = [batch.shape[0] - 1] + ([(batch.shape[0] - 1) // 2] if batch.shape[0] > 1 else [])
        offset = images.shape[0] - batch.shape[0]  # a divisor's in-between frames have no latent here
        keyframe, injected, admit = record.keyframe, record.injected, not record.walking
        prompt = record.prompt.positive if record.prompt is not None else ""
        memory, prefix = live.memory, self._log_prefix(live.name, COMMIT_NODE)

        def analyse() -> None:
            with torch.inference_mode():
                latents = batch[rows].to("cpu", torch.float32)
                pair = images[[offset + row for row in rows]].cpu()  # uint8 frames, or an IMAGE
                made = loop.after_keyframe(keyframe, latents, pair, injected=injected, prompt=prompt, admit=admit)
            if made.get("cache_error"):
                log.warning("%s: keyframe %d not cached, the loop goes on without caching: %s", prefix, keyframe,
                            made["cache_error"])
            memory.cache_stats = loop.stats()

        try:
            memory.analyse(analyse)
        except EmbeddingMismatchError as exc:
            raise fail(COMMIT_NODE, str(exc)) from exc

    @staticmethod
    def _settle(memory: LoopMemory, node: str) -> None:
        """Wait for the session's last analysis before its cache state is read."""
        try:
            memory.settle()
        except Exception as exc:
            raise fail(node, f"the cache analysis of the last keyframe failed: {exc}; the loop retries it, then "
                             f"pauses: fix the cause (or change the cache settings), then start the session again",
                       retry=True) from exc

    def _log_prefix(self, name: str, node: str) -> str:
        """``dream_window[<session>]: node <id> <type>``: how a node's log lines start."""
        return f"dream_window[{name}]: node {self.host.executing_node_id()} {node}"

    # -- beside the iteration -------------------------------------------------------------
    def configure_cache(self, name: str, settings: CacheSettings, encoder=None) -> AestheticLoop:
        """The Cache node: the session's cache loop for these settings (built again when they changed)."""
        live = self.sessions.get(name)
        try:
            loop = self.sessions.cache_loop(live, settings, encoder)
        except (CacheStoreError, SessionError, ValueError) as exc:
            raise fail(CACHE_NODE, str(exc)) from exc
        live.memory.cache_stats = loop.stats()
        return loop

    def autoqueue(self, name: str, **settings) -> str:
        """The AutoQueue node: record its settings (saved at once when they changed); a line for the node."""
        live = self.sessions.get(name)
        session = live.session
        with session.lock:
            if any(getattr(session.settings, key) != value for key, value in settings.items()):
                live.change_settings(**settings)
                session.save_control()
            return f"session {name}: iteration {session.iteration}, {session.frames_produced()} frames"

    def load_frames(self, name: str, first: int, last: int, stride: int) -> torch.Tensor:
        """The Load Frames node: the session's frames from ``first`` to ``last`` (-1: the newest), every
        ``stride``-th, still on disk, as one IMAGE batch."""
        try:
            folder = self.sessions.session(name).frames_dir
        except SessionError as exc:
            raise fail(LOAD_FRAMES_NODE, f"{exc}; give the name of a Dream Window session") from exc
        except KeyError:
            known = ", ".join(self.sessions.names()) or "none yet"
            raise fail(LOAD_FRAMES_NODE, f"no session named {name!r} (sessions: {known}); give the Session node's "
                                         f"name") from None
        if folder.is_symlink():
            raise fail(LOAD_FRAMES_NODE, f"{folder} is a link; frames are only read inside the session folder: "
                                         f"remove the link")
        frames = frames_on_disk(folder)
        try:
            chosen = select_frames(frames, first, last, stride)
        except ValueError as exc:
            raise fail(LOAD_FRAMES_NODE, f"session {name!r}: {exc}; change first/last") from exc
        loaded = []
        for index in chosen:
            try:
                loaded.append(load_image(frames[index]))
            except FileNotFoundError:  # deleted by the retention since the folder was listed
                continue
        if not loaded:
            raise fail(LOAD_FRAMES_NODE, f"session {name!r}: the frames from {chosen[0]} to {chosen[-1]} were deleted "
                                         f"while loading (retention); load newer frames")
        sizes = sorted({tuple(image.shape[1:3]) for image in loaded})
        if len(sizes) > 1:
            raise fail(LOAD_FRAMES_NODE, f"session {name!r}: the frames from {chosen[0]} to {chosen[-1]} differ in "
                                         f"size ({', '.join(f'{w}x{h}' for h, w in sizes)}); load a range of one size")
        return torch.cat(loaded)
