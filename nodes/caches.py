"""The per-session cache machinery behind the Dream Window Cache node.

One ``CacheStore`` per cache folder (shared by the sessions that name it) and one
``AestheticLoop`` per session, rebuilt when the cache node's settings change. A keyframe's
analysis runs on a worker thread when its strategy only uses the CPU (``core.background``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core.cache.aesthetic_loop import AestheticLoop
from ..core.cache.pending_jobs import PendingJobs
from ..core.cache.similarity import StrategyUnavailableError, get_strategy, load_open_clip
from ..core.cache.store import CacheStore
from ..core.loop.session import SessionError, validate_name
from . import comfy_adapter as comfy
from .common import fail
from .runtime import RUNTIME

NODE = "DreamWindowCache"


@dataclass(frozen=True)
class CacheHandle:
    """What flows along the DREAM_WINDOW_CACHE wire (the encoder stays in ``CACHES``)."""

    session: str
    name: str
    strategy: str
    capacity: int
    eviction: str
    admission: str
    logic: str
    injection: bool
    tuning: str
    rng_seed: int


class CacheRegistry:
    """One ``CacheStore`` per cache folder (shared by sessions), one loop per session."""

    def __init__(self) -> None:
        self.stores: dict[Path, CacheStore] = {}
        self.loops: dict[str, tuple[CacheHandle, AestheticLoop]] = {}
        self.encoders: dict[tuple, object] = {}
        self.analyses = PendingJobs("dream_window_cache")
        self._lock = threading.Lock()

    @staticmethod
    def folder(name: str) -> Path:
        """The cache's folder, refusing names and planted links that leave ``output/dream_window_cache``."""
        root = Path(comfy.output_directory()) / "dream_window_cache"
        folder = root / validate_name(name, "cache name")
        if folder.is_symlink() or (folder.exists() and folder.resolve().parent != root.resolve()):
            raise SessionError(f"cache folder {folder} is a link or leaves {root}; remove it")
        return folder

    def loop(self, handle: CacheHandle, encoder=None) -> AestheticLoop:
        """The session's aesthetic loop for this cache configuration (rebuilt when it changes: a new
        admission, capacity or eviction applies from here; a store built with another strategy
        refuses to load, naming the way to rebuild it)."""
        with self._lock:
            known = self.loops.get(handle.session)
            if known is not None and known[0] == handle:
                return known[1]
            self.analyses.discard(handle.session)  # the replaced loop's last analysis
            strategy = get_strategy(handle.strategy, **({"encoder": encoder} if encoder is not None else {}))
            folder = self.folder(handle.name)
            store = self.stores.get(folder)
            if store is None or store.strategy.name != handle.strategy:
                store = CacheStore(folder, strategy, capacity=handle.capacity, eviction=handle.eviction)
                self.stores[folder] = store
            else:  # evict down to a smaller capacity with the eviction policy chosen now
                store.strategy = strategy
                store.set_eviction(handle.eviction)
                store.set_capacity(handle.capacity)
            loop = AestheticLoop.create(store, admission_rule=handle.admission, admission_logic=handle.logic,
                                        tuning=handle.tuning, rng_seed=handle.rng_seed)
            session = RUNTIME.session(handle.session)
            with session.lock:
                loop.load_policy_state(session.policy)
            self.loops[handle.session] = (handle, loop)
            return loop

    def forget(self, session: str) -> None:
        """Drop the session's loop (its policy state, detector and analysis) once its last analysis
        has finished; the cache folder's store stays (other sessions may share it)."""
        with self._lock:
            self.analyses.discard(session)
            self.loops.pop(session, None)

    def current(self, session: str) -> AestheticLoop | None:
        known = self.loops.get(session)
        return known[1] if known else None

    def analyse(self, session: str, loop: AestheticLoop, job: Callable[[], None]) -> None:
        """Run a keyframe's analysis: on the worker when the strategy only uses the CPU (a model
        ComfyUI manages must stay on the executor) and the tuning allows it, else here."""
        if loop.analyses_in_background:
            self.analyses.submit(session, job)
        else:
            job()

    def settle(self, session: str, node: str) -> None:
        """Wait for the session's last analysis before its cache state is read."""
        try:
            self.analyses.settle(session)
        except Exception as exc:
            raise fail(node, f"the cache analysis of the last keyframe failed: {exc}; the loop retries it, "
                             f"then pauses: fix the cause (or change the cache settings), then start the "
                             f"session again", retry=True) from exc


CACHES = CacheRegistry()
RUNTIME.forget_hooks.append(CACHES.forget)


def image_encoder(strategy: str, clip_vision, open_clip_config: str, open_clip_weights: str):
    """The image encoder a CLIP strategy needs, or None for the others."""
    if strategy == "clip_vision":
        if clip_vision is None:
            raise fail(NODE, "strategy clip_vision needs a CLIP_VISION input: wire a Load CLIP Vision node "
                             "(models from models/clip_vision)")
        return lambda images: clip_vision.encode_image(images).image_embeds
    if strategy == "open_clip":
        folders = ", ".join(comfy.models_folders("clip_vision"))
        if not open_clip_weights:  # any other name is one ComfyUI listed (the input is a choice)
            raise fail(NODE, f"strategy open_clip needs open_clip_weights: the name of a weights file in "
                             f"models/clip_vision ({folders})")
        path = comfy.model_path("clip_vision", open_clip_weights)
        if path is None:
            raise fail(NODE, f"open_clip weights file {open_clip_weights!r} is not in {folders}; put it there "
                             f"(Dream Window never downloads models)")
        key = (open_clip_config, path)
        if key not in CACHES.encoders:
            try:
                CACHES.encoders[key] = load_open_clip(open_clip_config, path, comfy.torch_device())
            except StrategyUnavailableError as exc:
                raise fail(NODE, str(exc)) from exc
            except RuntimeError as exc:
                raise fail(NODE, f"open_clip config {open_clip_config!r} does not fit the weights in "
                                 f"{open_clip_weights!r}: {exc}") from exc
        return CACHES.encoders[key]
    return None
