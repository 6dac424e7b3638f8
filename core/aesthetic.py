"""One session's aesthetic loop: what keeps the dream from collapsing into one look.

Ties the cache store, the similarity strategy, the admission rule, the collapse detector
and the injection policy together per keyframe, in the original's order:

* ``decide(k)`` — before keyframe ``k`` is made: warm-up, rate update from the last
  verdict, seed or cache injection (``core.injection``), drawn from a generator seeded by
  ``(rng_seed, k)`` so a run replays exactly.
* ``after_keyframe(...)`` — once keyframe ``k`` is committed: embed it and the pair's
  midpoint in one batch, admit each into the cache by the diversity rule, feed the
  detector (after warm-up), and keep the keyframe's similarities to the cache for the next
  decision. After an injected keyframe the detector is reset.

Cache failures (a folder that cannot be written) are reported in the record and the loop
goes on without caching; the detector and analysis live in memory (they warm up again
after a restart), the injection counters round-trip through ``policy_state``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from .admission import AdmissionPolicy
from .cache_store import CacheStore, CacheStoreError, EmbeddingMismatchError
from .collapse import CollapseDetector, CollapseResult
from .injection import (ACTION_CACHE, ACTION_NONE, ACTION_SEED, InjectionConfig, InjectionDecision,
                        InjectionPolicy, blend_latents, choose_walk_target)
from .similarity import mean_pairwise_similarity
from .status import CacheStats

log = logging.getLogger("dream_window")

RECENT_DECISIONS_KEPT = 20


@dataclass
class Analysis:
    """The last committed keyframe's similarity to the cache, for the next decision."""

    ids: tuple[str, ...]
    similarities: Mapping[str, np.ndarray]
    collapse: CollapseResult | None
    keyframe: int


@dataclass
class AestheticLoop:
    """Per-session cache/detector/policy state around one shared ``CacheStore``."""

    store: CacheStore
    admission: AdmissionPolicy
    policy: InjectionPolicy
    detector: CollapseDetector
    rng_seed: int = 0
    background_analysis: bool = True
    analysis: Analysis | None = None
    cache_error: str | None = None
    decisions: list[dict] = field(default_factory=list)

    @classmethod
    def create(cls, store: CacheStore, *, admission_rule: str = "mean", admission_logic: str = "all",
               tuning: Mapping[str, Any] | None = None, rng_seed: int = 0) -> "AestheticLoop":
        """Build the loop with the strategy's defaults; ``tuning`` overrides policy fields
        (e.g. ``{"injection_probability": 1.0, "warmup_keyframes": 0, "windows": {...}}``),
        admission thresholds (``admission_mean``/``admission_max``: per-metric dicts) and
        ``background_analysis`` (false: never on the worker, see :attr:`analyses_in_background`)."""
        tuning = dict(tuning or {})
        background = tuning.pop("background_analysis", True)
        if not isinstance(background, bool):
            raise ValueError(f"background_analysis must be true or false, got {background!r}")
        strategy = store.strategy
        admission = AdmissionPolicy.for_strategy(strategy, rule=admission_rule, logic=admission_logic,
                                                 mean_thresholds=tuning.pop("admission_mean", None),
                                                 max_thresholds=tuning.pop("admission_max", None))
        config = InjectionConfig.for_strategy(strategy, **tuning)
        return cls(store, admission, InjectionPolicy(config), CollapseDetector(strategy), rng_seed, background)

    @property
    def analyses_in_background(self) -> bool:
        """Whether ``after_keyframe`` may run on a worker thread beside the next iteration: the
        strategy only uses the CPU and the tuning did not turn it off."""
        return self.background_analysis and self.store.strategy.cpu_only

    def rng(self, keyframe: int) -> np.random.Generator:
        return np.random.default_rng([self.rng_seed, keyframe])

    # -- before a keyframe ------------------------------------------------------------
    def decide(self, keyframe: int, seed_count: int) -> InjectionDecision:
        """The injection decision for keyframe ``keyframe`` (updates the policy state)."""
        analysis = self.analysis
        if analysis is None or not analysis.ids:
            ids, sims = (), {metric: np.empty(0) for metric in self.store.strategy.metrics}
        else:
            live = [i for i, entry_id in enumerate(analysis.ids) if entry_id in self.store]
            ids = tuple(analysis.ids[i] for i in live)
            sims = {metric: np.asarray(values)[live] for metric, values in analysis.similarities.items()}
        collapse = analysis.collapse if analysis is not None else None
        decision = self.policy.decide(keyframe, self.rng(keyframe), cache_ids=ids, similarities=sims,
                                      seed_count=seed_count, collapse=collapse)
        self.decisions = (self.decisions + [decision.to_dict()])[-RECENT_DECISIONS_KEPT:]
        return decision

    def injected_latent(self, decision: InjectionDecision, current: torch.Tensor) -> torch.Tensor:
        """The blend for a cache injection: ``0.75 * cached + 0.25 * current`` (config weights)."""
        if decision.action != ACTION_CACHE:
            raise ValueError("not a cache injection")
        cached = self.store.load_latent(decision.entry_id)
        return blend_latents(cached, current, self.policy.config.blend_weight)

    def seed_latent(self, seed: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """The blend for a seed injection: ``0.85 * seed + 0.15 * current`` (config weights)."""
        return blend_latents(seed, current, self.policy.config.seed_blend_weight)

    def walk_target(self, keyframe: int, current_id: str | None) -> tuple[str, torch.Tensor] | None:
        """Interpolate mode: the next cached keyframe to slerp towards, and its latent."""
        ids, bank = self.store.snapshot()
        with_latent = [i for i, entry_id in enumerate(ids) if self.store.get(entry_id).has_latent]
        if not with_latent:
            return None
        ids = tuple(ids[i] for i in with_latent)
        bank = bank[with_latent]
        anchor = bank[ids.index(current_id)] if current_id in ids else bank[-1]
        sims = self.store.strategy.metric_similarities(anchor.reshape(1, -1), bank)
        choice = choose_walk_target(ids, {m: v[0] for m, v in sims.items()}, self.policy.config.windows,
                                    self.rng(keyframe), current_id=current_id,
                                    recent_ids=self.policy.state.recent_ids)
        if choice is None:
            return None
        self.policy.state.recent_ids.append(choice.entry_id)
        return choice.entry_id, self.store.load_latent(choice.entry_id)

    # -- after a keyframe -------------------------------------------------------------
    def after_keyframe(self, keyframe: int, latents: torch.Tensor, images: torch.Tensor | None,
                       injected: bool, prompt: str = "", admit: bool = True) -> dict:
        """Embed, admit, analyse one committed keyframe.

        ``latents``/``images`` hold the keyframe first, then (optionally) the pair's
        midpoint; returns a JSON-able record of what happened.
        """
        strategy = self.store.strategy
        embeddings = strategy.embed(images=images, latents=latents)
        ids, bank = self.store.snapshot()
        record: dict = {"keyframe": keyframe, "admitted": []}
        if not bool(torch.isfinite(embeddings).all()):
            # A broken similarity model must not stop the dream: skip this keyframe's analysis.
            record["embedding_error"] = f"strategy {strategy.name!r} produced NaN or infinite embeddings"
            log.warning("dream_window: keyframe %d not analysed: %s", keyframe, record["embedding_error"])
            self.analysis = None
            return record
        if bank.shape[0]:
            sims = strategy.metric_similarities(embeddings, bank)
            sims = {metric: values.detach().cpu().numpy() for metric, values in sims.items()}
        else:
            sims = {metric: np.empty((embeddings.shape[0], 0)) for metric in strategy.metrics}
        if admit:
            self._admit(embeddings, sims, latents, images, prompt, keyframe, record)
        collapse = None
        if not self.policy.in_warmup(keyframe + 1):
            collapse = self.detector.analyze(embeddings[0])
            record["collapse"] = {"status": collapse.status, "action": collapse.action,
                                  "scaled_probability": collapse.scaled_probability}
        if injected:
            self.detector.reset_after_injection()
        self.analysis = Analysis(ids, {m: v[0] for m, v in sims.items()}, collapse, keyframe)
        return record

    def _admit(self, embeddings, sims, latents, images, prompt, keyframe, record) -> None:
        sources = ("keyframe", "midpoint")
        wrote = False
        try:
            with self.store.batch():  # the index is written when the batch ends: that can fail too
                for row in range(embeddings.shape[0]):
                    verdict = self.admission.evaluate({m: v[row] for m, v in sims.items()})
                    if not verdict.accepted:
                        continue
                    result = self.store.add(
                        embeddings[row], latent=latents[row:row + 1],
                        image=images[row:row + 1] if images is not None else None,
                        source=sources[min(row, 1)], prompt=prompt, generation_params={"keyframe": keyframe})
                    wrote = True
                    record["admitted"].append({"id": result.entry.cache_id, "source": result.entry.source,
                                               "reason": verdict.reason})
        except EmbeddingMismatchError:
            raise  # a wrong model, not a disk problem: the user must act
        except (CacheStoreError, OSError) as exc:
            if self.cache_error is None:
                log.error("dream_window: caching disabled until the cache folder is writable: %s", exc)
            self.cache_error = str(exc)
            record["cache_error"] = self.cache_error
            return
        if wrote:
            self.cache_error = None

    # -- reporting --------------------------------------------------------------------
    def stats(self) -> CacheStats:
        policy = self.policy.stats()
        trend = self.detector.trend()
        recent = [t.recent_mean for t in trend.values() if t.recent_mean is not None]
        overall = [t.overall_mean for t in trend.values() if t.overall_mean is not None]
        last = self.analysis.collapse.status if self.analysis and self.analysis.collapse else None
        similarity = mean_pairwise_similarity(self.store.strategy, self.store.snapshot()[1])
        return CacheStats(
            cache_size=len(self.store),
            cache_injections=policy["total_cache_injections"],
            total_seed_injections=policy["total_seed_injections"],
            collapse_recent_similarity=recent[0] if recent else None,
            collapse_overall_similarity=overall[0] if overall else None,
            collapse_frames_analyzed=self.detector.frames_analyzed,
            collapse_frequency=policy["recent_collapse_frequency"],
            collapse_trend=last,
            cache_diversity_score=None if similarity is None else max(0.0, 1.0 - similarity),
            cache_avg_similarity=similarity,
        )

    def trend(self) -> dict:
        return {metric: vars(t) for metric, t in self.detector.trend().items()}

    def policy_state(self) -> dict:
        return {"injection": self.policy.state_dict(), "decisions": self.decisions}

    def load_policy_state(self, state: Mapping[str, Any]) -> None:
        if "injection" in state:
            self.policy.load_state_dict(state["injection"])
        self.decisions = list(state.get("decisions", []))[-RECENT_DECISIONS_KEPT:]


__all__ = ["ACTION_CACHE", "ACTION_NONE", "ACTION_SEED", "AestheticLoop", "Analysis"]
