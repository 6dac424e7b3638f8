"""The Dream Window Cache node (the machinery lives in ``caches``)."""

from __future__ import annotations

from ..core.cache.aesthetic_loop import apply_tuning
from ..core.cache.similarity import STRATEGY_NAMES, open_clip_configs, strategy_class
from ..core.cache.store import EVICTION_POLICIES, CacheStoreError
from ..core.loop.session import SessionError
from . import comfy_adapter as comfy
from .caches import CACHES, NODE, CacheHandle, image_encoder
from .comfy_adapter import io
from .common import CATEGORY, CacheType, fail, session_input
from .runtime import RUNTIME

DEFAULT_STRATEGY = "dual_metric"
DEFAULT_OPEN_CLIP_CONFIG = "ViT-B-32"
NO_WEIGHTS = ""
"""The open_clip_weights choice "none" (the only strategy that needs weights is open_clip)."""


def open_clip_inputs() -> list:
    """The open_clip config and weights combos: what is installed, listed when ComfyUI asks for the node's
    inputs (so a file put into models/clip_vision shows after the editor refreshes its node definitions)."""
    configs = open_clip_configs()
    config_tip = "For strategy open_clip: the open_clip model config the weights file was trained with."
    if not configs:
        configs = [DEFAULT_OPEN_CLIP_CONFIG]
        config_tip += (" open_clip is not installed, so only the default is listed: install open_clip_torch "
                       "into ComfyUI's Python to list its configs and use this strategy.")
    weights = [NO_WEIGHTS, *comfy.model_files("clip_vision")]
    return [
        comfy.Choice("open_clip_config", options=configs, default=DEFAULT_OPEN_CLIP_CONFIG, optional=True,
                     tooltip=config_tip),
        comfy.Choice("open_clip_weights", options=weights, default=NO_WEIGHTS, optional=True,
                     tooltip="For strategy open_clip: an open_clip weights file from models/clip_vision "
                             "(empty: none; put the file there and refresh the node definitions, Dream Window "
                             "never downloads models)."),
    ]


def tuning_refusal(strategy: str, tuning: str) -> str | None:
    """Why ``tuning`` does not suit ``strategy``, as the node's error; None when it does."""
    try:
        apply_tuning(strategy_class(strategy), tuning)
    except ValueError as exc:
        return f"{NODE}: {exc}"
    return None


class DreamWindowCache(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return comfy.schema(
            node_id=NODE,
            display_name="Dream Window Cache",
            category=CATEGORY,
            description="A persistent cache of diverse past keyframes that fights mode collapse: keyframes and "
                        "pair midpoints are admitted by a diversity rule, a collapse detector watches how alike "
                        "consecutive keyframes grow, and the injection policy blends related-but-different "
                        "cached frames (or seed images) back into the loop. Wire its output into the keyframe "
                        "source and the commit node.",
            search_aliases=["aesthetic cache", "mode collapse", "injection", "clip similarity"],
            inputs=[
                session_input(),
                io.String.Input("cache_name", default="",
                                tooltip="Cache folder under output/dream_window_cache/. Empty: private to this "
                                        "session (named after it); give several sessions one name to share it."),
                comfy.Choice("strategy", options=list(STRATEGY_NAMES), default=DEFAULT_STRATEGY,
                             tooltip="How similarity is measured: dual_metric (HSV colour histogram + perceptual "
                                     "hash, no model), latent_pool (free), clip_vision (CLIP_VISION input), "
                                     "open_clip (a local open_clip weights file)."),
                io.Int.Input("capacity", default=50, min=1, max=100000,
                             tooltip="Entries kept; when full, the eviction policy removes one per new entry."),
                comfy.Choice("eviction", options=list(EVICTION_POLICIES), default="fifo",
                             tooltip="fifo: drop the oldest entry; redundancy: drop the entry most similar to "
                                     "another, which keeps the cache varied."),
                comfy.Choice("admission", options=["mean", "max", "mean+max", "always"], default="mean",
                             tooltip="mean: admit a frame whose mean similarity to the cache is low enough; max: "
                                     "also keep out near-duplicates of any single entry; mean+max: both; always: "
                                     "admit everything."),
                comfy.Choice("logic", options=["all", "any"], default="all",
                             tooltip="all: every metric must be diverse to admit; any: one is enough."),
                io.Boolean.Input("injection", default=True,
                                 tooltip="Off: cache and analyse only, never inject."),
                io.Int.Input("rng_seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seed of the injection draws: the same seed replays the same decisions."),
                io.String.Input("tuning", default="{}", multiline=True,
                                tooltip="Advanced, JSON: override policy values, e.g. {\"injection_probability\": "
                                        "0.3, \"warmup_keyframes\": 20, \"windows\": {\"cosine\": [0.6, 0.9]}, "
                                        "\"admission_mean\": {\"cosine\": 0.85}}; the collapse detector's "
                                        "\"collapse_thresholds\" ({\"cosine\": [convergence, force]}), "
                                        "\"reset_policy\" (window, partial, full, none) and \"keep_recent\"; "
                                        "\"background_analysis\": true analyses each keyframe on a worker thread "
                                        "beside the next iteration instead of in the Commit node. Unknown keys and values out of "
                                        "range are refused when the workflow is queued."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="For strategy clip_vision: a CLIP vision model from Load CLIP Vision."),
                *open_clip_inputs(),
            ],
            outputs=[CacheType.Output("cache", tooltip="Wire into the keyframe source and the commit node.")],
        )

    @classmethod
    def validate_inputs(cls, tuning=None):
        # ComfyUI lists a refusal once for every input this function names, so it names tuning alone and
        # cannot see the strategy: a tuning no strategy accepts is refused here (with the default strategy's
        # message); a metric the chosen strategy lacks, and a bad cache_name, are refused when the node runs.
        if tuning is None:
            return True
        refusals = [tuning_refusal(name, tuning) for name in (DEFAULT_STRATEGY, *STRATEGY_NAMES)]
        return True if None in refusals else refusals[0]

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")

    @classmethod
    def execute(cls, session, cache_name, strategy, capacity, eviction, admission, logic, injection, rng_seed,
                tuning, clip_vision=None, open_clip_config=DEFAULT_OPEN_CLIP_CONFIG, open_clip_weights=NO_WEIGHTS):
        handle = CacheHandle(session.name, cache_name or session.name, strategy, capacity, eviction, admission,
                             logic, bool(injection), tuning or "{}", rng_seed)
        try:
            loop = CACHES.loop(handle, image_encoder(strategy, clip_vision, open_clip_config, open_clip_weights))
        except (CacheStoreError, SessionError, ValueError) as exc:
            raise fail(NODE, str(exc)) from exc
        RUNTIME.cache_stats[session.name] = loop.stats()
        return io.NodeOutput(handle, ui={"text": [f"cache {handle.name}: {len(loop.store)} entries ({strategy})"]})


NODES = [DreamWindowCache]
