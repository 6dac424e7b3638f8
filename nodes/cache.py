"""The Dream Window Cache node and the image encoders its CLIP strategies need (the loop it configures
lives in the session's ``LiveSession``, see ``core.loop.live_session``)."""

from __future__ import annotations

from ..core.cache.aesthetic_loop import apply_tuning
from ..core.cache.store import EVICTION_POLICIES
from ..core.loop.loop_service import CACHE_NODE
from ..core.loop.session_settings import CACHE_DEFAULTS, CacheSettings
from ..core.cache.similarity import (STRATEGY_NAMES, StrategyUnavailableError, load_open_clip, open_clip_configs,
                               strategy_class)
from . import comfy_adapter as adapter
from .comfy_adapter import io
from .common import CATEGORY, CacheType, fail, session_input
from .registry import LOOP

DEFAULT_OPEN_CLIP_CONFIG = "ViT-B-32"
NO_WEIGHTS = ""
"""The open_clip_weights choice "none" (the only strategy that needs weights is open_clip)."""

_open_clip_encoders: dict[tuple[str, str], object] = {}
"""Loaded open_clip encoders by (config, weights file), shared by every session."""


def image_encoder(strategy: str, clip_vision, open_clip_config: str, open_clip_weights: str):
    """The image encoder a CLIP strategy needs, or None for the others."""
    if strategy == "clip_vision":
        if clip_vision is None:
            raise fail(CACHE_NODE, "strategy clip_vision needs a CLIP_VISION input: wire a Load CLIP Vision node "
                                   "(models from models/clip_vision)")
        return lambda images: clip_vision.encode_image(images).image_embeds
    if strategy != "open_clip":
        return None
    folders = ", ".join(adapter.models_folders("clip_vision"))
    if not open_clip_weights:  # any other name is one ComfyUI listed (the input is a choice)
        raise fail(CACHE_NODE, f"strategy open_clip needs open_clip_weights: the name of a weights file in "
                               f"models/clip_vision ({folders})")
    path = adapter.model_path("clip_vision", open_clip_weights)
    if path is None:
        raise fail(CACHE_NODE, f"open_clip weights file {open_clip_weights!r} is not in {folders}; put it there "
                               f"(Dream Window never downloads models)")
    key = (open_clip_config, path)
    if key not in _open_clip_encoders:
        try:
            _open_clip_encoders[key] = load_open_clip(open_clip_config, path, adapter.torch_device())
        except StrategyUnavailableError as exc:
            raise fail(CACHE_NODE, str(exc)) from exc
        except RuntimeError as exc:
            raise fail(CACHE_NODE, f"open_clip config {open_clip_config!r} does not fit the weights in "
                                   f"{open_clip_weights!r}: {exc}") from exc
    return _open_clip_encoders[key]


def open_clip_inputs() -> list:
    """The open_clip config and weights combos: what is installed, listed when ComfyUI asks for the node's
    inputs (so a file put into models/clip_vision shows after the editor refreshes its node definitions)."""
    configs = open_clip_configs()
    config_tip = "For strategy open_clip: the open_clip model config the weights file was trained with."
    if not configs:
        configs = [DEFAULT_OPEN_CLIP_CONFIG]
        config_tip += (" open_clip is not installed, so only the default is listed: install open_clip_torch "
                       "into ComfyUI's Python to list its configs and use this strategy.")
    weights = [NO_WEIGHTS, *adapter.model_files("clip_vision")]
    return [
        adapter.Choice("open_clip_config", options=configs, default=DEFAULT_OPEN_CLIP_CONFIG, optional=True,
                       tooltip=config_tip),
        adapter.Choice("open_clip_weights", options=weights, default=NO_WEIGHTS, optional=True,
                       tooltip="For strategy open_clip: an open_clip weights file from models/clip_vision "
                               "(empty: none; put the file there and refresh the node definitions, Dream Window "
                               "never downloads models)."),
    ]


def tuning_refusal(strategy: str, tuning: str) -> str | None:
    """Why ``tuning`` does not suit ``strategy``, as the node's error; None when it does."""
    try:
        apply_tuning(strategy_class(strategy), tuning)
    except ValueError as exc:
        return f"{CACHE_NODE}: {exc}"
    return None


class DreamWindowCache(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return adapter.schema(
            node_id=CACHE_NODE,
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
                adapter.Choice("strategy", options=list(STRATEGY_NAMES), default=CACHE_DEFAULTS.strategy,
                               tooltip="How similarity is measured: dual_metric (HSV colour histogram + perceptual "
                                       "hash, no model), latent_pool (free), clip_vision (CLIP_VISION input), "
                                       "open_clip (a local open_clip weights file)."),
                io.Int.Input("capacity", default=CACHE_DEFAULTS.capacity, min=1, max=100000,
                             tooltip="Entries kept; when full, the eviction policy removes one per new entry."),
                adapter.Choice("eviction", options=list(EVICTION_POLICIES), default=CACHE_DEFAULTS.eviction,
                               tooltip="fifo: drop the oldest entry; redundancy: drop the entry most similar to "
                                       "another, which keeps the cache varied."),
                adapter.Choice("admission", options=["mean", "max", "mean+max", "always"],
                               default=CACHE_DEFAULTS.admission,
                               tooltip="mean: admit a frame whose mean similarity to the cache is low enough; max: "
                                       "also keep out near-duplicates of any single entry; mean+max: both; always: "
                                       "admit everything."),
                adapter.Choice("logic", options=["all", "any"], default=CACHE_DEFAULTS.logic,
                               tooltip="all: every metric must be diverse to admit; any: one is enough."),
                io.Boolean.Input("injection", default=CACHE_DEFAULTS.injection,
                                 tooltip="Off: cache and analyse only, never inject."),
                io.Int.Input("rng_seed", default=CACHE_DEFAULTS.rng_seed, min=0, max=2**31 - 1,
                             tooltip="Seed of the injection draws: the same seed replays the same decisions."),
                io.String.Input("tuning", default=CACHE_DEFAULTS.tuning, multiline=True,
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
        refusals = [tuning_refusal(name, tuning) for name in (CACHE_DEFAULTS.strategy, *STRATEGY_NAMES)]
        return True if None in refusals else refusals[0]

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")

    @classmethod
    def execute(cls, session, cache_name, strategy, capacity, eviction, admission, logic, injection, rng_seed,
                tuning, clip_vision=None, open_clip_config=DEFAULT_OPEN_CLIP_CONFIG, open_clip_weights=NO_WEIGHTS):
        settings = CacheSettings(cache_name or session.name, strategy, capacity, eviction, admission, logic,
                                 bool(injection), tuning or "{}", rng_seed)
        encoder = image_encoder(strategy, clip_vision, open_clip_config, open_clip_weights)
        loop = LOOP.configure_cache(session.name, settings, encoder)
        return io.NodeOutput(settings, ui={"text": [f"cache {settings.name}: {len(loop.store)} entries ({strategy})"]})


NODES = [DreamWindowCache]
