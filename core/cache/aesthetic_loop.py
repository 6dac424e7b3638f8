"""One session's aesthetic loop: what keeps the dream from collapsing into one look.

Ties the cache store, the similarity strategy, the admission rule, the collapse detector
and the injection policy together per keyframe, in this order:

* ``decide(k)`` — before keyframe ``k`` is made: warm-up, rate update from the last
  verdict, seed or cache injection (``core.cache.injection``), drawn from a generator seeded by
  ``(rng_seed, k)`` so a run replays exactly. The decision moves a proposed copy of the
  policy state; ``commit(k)`` (when keyframe ``k`` is committed) makes it the loop's, so a
  keyframe that failed and is made again decides again from the same state, the same way.
* ``after_keyframe(...)`` — once keyframe ``k`` is committed: embed it and the pair's
  midpoint in one batch, admit each into the cache by the diversity rule, feed the
  detector (after warm-up), and keep the keyframe's similarities to the cache for the next
  decision. An injected keyframe resets the detector before it is analysed, so a forced
  injection's hold-off covers its verdict.

Cache failures (a folder that cannot be written) are reported in the record and the loop
goes on without caching; the detector and analysis live in memory (they warm up again
after a restart), the injection counters round-trip through ``policy_state``.
"""

from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

import numpy as np
import torch

from ..window.status import CacheStats
from .admission import AdmissionPolicy
from .collapse import CollapseDetector, CollapseResult
from .injection import (ACTION_CACHE, ACTION_NONE, ACTION_SEED, InjectionConfig, InjectionDecision,
                        InjectionPolicy, blend_latents, choose_walk_target)
from .similarity import SimilarityStrategy, mean_pairwise_similarity
from .store import CacheStore, CacheStoreError, EmbeddingMismatchError
from .tuning_values import flag, per_metric

log = logging.getLogger("dream_window")

RECENT_DECISIONS_KEPT = 20


DETECTOR_KEYS = ("collapse_thresholds", "reset_policy", "keep_recent")
TUNING_KEYS = tuple(sorted({f.name for f in fields(InjectionConfig)} | set(DETECTOR_KEYS)
                           | {"admission_mean", "admission_max", "background_analysis"}))
"""Every key the cache's ``tuning`` JSON may hold."""


@dataclass(frozen=True)
class Tuned:
    """The policy objects one ``tuning`` gives for a strategy (admission at the default rule and logic)."""

    admission: AdmissionPolicy
    injection: InjectionConfig
    detector: CollapseDetector
    background_analysis: bool


def parse_tuning(tuning: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """``tuning`` (JSON text, blank for none, or a mapping) as a dict of known keys.

    Raises:
        ValueError: not a JSON object, or a key that is not in :data:`TUNING_KEYS` (the
            message lists them).
    """
    if tuning is None:
        return {}
    if isinstance(tuning, str):
        try:
            tuning = json.loads(tuning) if tuning.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"tuning is not valid JSON ({exc}); write a JSON object such as "
                             f'{{"injection_probability": 0.3}}') from None
    if not isinstance(tuning, Mapping):
        kinds = {type(None): "null", bool: "true or false", list: "a list", str: "a string", int: "a number",
                 float: "a number"}
        raise ValueError(f"tuning must be a JSON object such as {{\"injection_probability\": 0.3}}, got "
                         f"{kinds.get(type(tuning), type(tuning).__name__)}")
    for key in tuning:
        if key not in TUNING_KEYS:
            close = difflib.get_close_matches(str(key), TUNING_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown tuning key {key!r}{hint}; allowed keys: {', '.join(TUNING_KEYS)}")
    return dict(tuning)


def apply_tuning(strategy: SimilarityStrategy | type[SimilarityStrategy],
                 tuning: str | Mapping[str, Any] | None) -> Tuned:
    """The strategy's defaults with ``tuning`` applied: any :class:`InjectionConfig` field
    (``windows`` per metric), the admission thresholds (``admission_mean``/``admission_max``,
    per metric), the collapse detector (``collapse_thresholds`` per metric as
    ``[convergence, force]``, ``reset_policy``, ``keep_recent``) and ``background_analysis``
    (default false: the analysis runs in the Commit node; true: on the cache worker where the strategy
    allows it, see :attr:`AestheticLoop.analyses_in_background`).

    ``strategy`` may be the class (queue-time validation, no model loaded).

    Raises:
        ValueError: naming the key and what it allows.
    """
    values = parse_tuning(tuning)
    background = flag("background_analysis", values.pop("background_analysis", False))
    admission = AdmissionPolicy.for_strategy(strategy, mean_thresholds=values.pop("admission_mean", None),
                                             max_thresholds=values.pop("admission_max", None))
    detector = {key: values.pop(key) for key in DETECTOR_KEYS if key in values}
    thresholds = per_metric("collapse_thresholds", detector.pop("collapse_thresholds", {}), strategy,
                            "[convergence, force]")
    detector = CollapseDetector(strategy, {**strategy.defaults.collapse, **thresholds}, **detector)
    return Tuned(admission, InjectionConfig.for_strategy(strategy, **values), detector, background)


@dataclass
class Analysis:
    """The last committed keyframe's similarity to the cache, for the next decision."""

    ids: tuple[str, ...]
    similarities: Mapping[str, np.ndarray]
    collapse: CollapseResult | None
    keyframe: int


@dataclass
class Proposal:
    """The policy state as keyframe ``keyframe``'s decision left it, until that keyframe is committed."""

    keyframe: int
    policy: InjectionPolicy
    decisions: list[dict]


@dataclass
class AestheticLoop:
    """Per-session cache/detector/policy state around one shared ``CacheStore``."""

    store: CacheStore
    admission: AdmissionPolicy
    policy: InjectionPolicy
    detector: CollapseDetector
    rng_seed: int = 0
    background_analysis: bool = False
    analysis: Analysis | None = None
    cache_error: str | None = None
    decisions: list[dict] = field(default_factory=list)
    proposal: Proposal | None = None

    @classmethod
    def create(cls, store: CacheStore, *, admission_rule: str = "mean", admission_logic: str = "all",
               tuning: str | Mapping[str, Any] | None = None, rng_seed: int = 0) -> "AestheticLoop":
        """Build the loop with the strategy's defaults and ``tuning`` (see :func:`apply_tuning`)."""
        tuned = apply_tuning(store.strategy, tuning)
        admission = replace(tuned.admission, rule=admission_rule, logic=admission_logic)
        return cls(store, admission, InjectionPolicy(tuned.injection), tuned.detector, rng_seed,
                   tuned.background_analysis)

    @property
    def analyses_in_background(self) -> bool:
        """Whether ``after_keyframe`` may run on a worker thread beside the next iteration: the
        strategy only uses the CPU and the tuning turned it on (off by default: on an H200 the loop
        was 2% slower with the worker, 16% with torch on every core, tools/bench/recorded/h200-2026-12-04-worker-threads)."""
        return self.background_analysis and self.store.strategy.cpu_only

    def rng(self, keyframe: int) -> np.random.Generator:
        return np.random.default_rng([self.rng_seed, keyframe])

    # -- before a keyframe ------------------------------------------------------------
    def _propose(self, keyframe: int) -> Proposal:
        """A copy of the committed policy state for keyframe ``keyframe``'s decision to move."""
        policy = InjectionPolicy(self.policy.config)
        policy.load_state_dict(self.policy.state_dict())
        self.proposal = Proposal(keyframe, policy, list(self.decisions))
        return self.proposal

    def decide(self, keyframe: int, seed_count: int) -> InjectionDecision:
        """The injection decision for keyframe ``keyframe``, from the committed policy state (the
        state it leads to waits in :attr:`proposal` for :meth:`commit`)."""
        analysis = self.analysis
        if analysis is None or not analysis.ids:
            ids, sims = (), {metric: np.empty(0) for metric in self.store.strategy.metrics}
        else:
            live = [i for i, entry_id in enumerate(analysis.ids) if entry_id in self.store]
            ids = tuple(analysis.ids[i] for i in live)
            sims = {metric: np.asarray(values)[live] for metric, values in analysis.similarities.items()}
        collapse = analysis.collapse if analysis is not None else None
        proposal = self._propose(keyframe)
        decision = proposal.policy.decide(keyframe, self.rng(keyframe), cache_ids=ids, similarities=sims,
                                          seed_count=seed_count, collapse=collapse)
        proposal.decisions = (proposal.decisions + [decision.to_dict()])[-RECENT_DECISIONS_KEPT:]
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
        """Interpolate mode: the next cached keyframe to slerp towards, and its latent (the
        recent ids it moves wait for :meth:`commit`, like a decision's)."""
        ids, bank = self.store.snapshot()
        with_latent = [i for i, entry_id in enumerate(ids) if self.store.get(entry_id).has_latent]
        if not with_latent:
            return None
        ids = tuple(ids[i] for i in with_latent)
        bank = bank[with_latent]
        anchor = bank[ids.index(current_id)] if current_id in ids else bank[-1]
        sims = self.store.strategy.metric_similarities(anchor.reshape(1, -1), bank)
        config = self.policy.config
        proposal = self._propose(keyframe)
        choice = choose_walk_target(ids, {m: v[0] for m, v in sims.items()}, config.windows,
                                    self.rng(keyframe), current_id=current_id,
                                    recent_ids=proposal.policy.state.recent_ids, penalty=config.recent_penalty,
                                    sharpness=config.weight_sharpness)
        if choice is None:
            return None
        proposal.policy.state.recent_ids.append(choice.entry_id)
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
        sims = self._similarities(embeddings, bank)
        if admit:
            self._admit(embeddings, sims, latents, images, prompt, keyframe, record)
        if injected:  # before the injected keyframe is analysed, so a forced injection's hold-off covers it
            self.detector.reset_after_injection()
        collapse = None
        if not self.policy.in_warmup(keyframe + 1):
            collapse = self.detector.analyze(embeddings[0])
            record["collapse"] = {"status": collapse.status, "action": collapse.action,
                                  "scaled_probability": collapse.scaled_probability}
        self.analysis = Analysis(ids, {m: v[0] for m, v in sims.items()}, collapse, keyframe)
        return record

    def _similarities(self, embeddings: torch.Tensor, bank: torch.Tensor) -> dict[str, np.ndarray]:
        """``{metric: [K, M]}`` similarities of the K embeddings to the M cached ones."""
        if not bank.shape[0]:
            return {metric: np.empty((embeddings.shape[0], 0)) for metric in self.store.strategy.metrics}
        sims = self.store.strategy.metric_similarities(embeddings, bank)
        return {metric: values.detach().cpu().numpy() for metric, values in sims.items()}

    def _admit(self, embeddings, sims, latents, images, prompt, keyframe, record) -> None:
        """Admit the keyframe, then the midpoint, each against the cache as it is then: the
        midpoint is compared with the keyframe admitted (and whatever that evicted) before it."""
        sources = ("keyframe", "midpoint")
        wrote = False
        try:
            with self.store.batch():  # the index is written when the batch ends: that can fail too
                for row in range(embeddings.shape[0]):
                    if wrote:
                        sims = self._similarities(embeddings, self.store.snapshot()[1])
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

    def policy_state(self, keyframe: int | None = None) -> dict:
        """The policy state to persist with keyframe ``keyframe``: with its proposed decision."""
        policy, decisions = self.policy, self.decisions
        if self.proposal is not None and self.proposal.keyframe == keyframe:
            policy, decisions = self.proposal.policy, self.proposal.decisions
        return {"injection": policy.state_dict(), "decisions": decisions}

    def commit(self, keyframe: int) -> None:
        """Keyframe ``keyframe`` is committed: the policy state its decision proposed becomes the loop's."""
        if self.proposal is not None and self.proposal.keyframe == keyframe:
            self.policy, self.decisions = self.proposal.policy, self.proposal.decisions
        self.proposal = None

    def load_policy_state(self, state: Mapping[str, Any]) -> None:
        if "injection" in state:
            self.policy.load_state_dict(state["injection"])
        self.decisions = list(state.get("decisions", []))[-RECENT_DECISIONS_KEPT:]


__all__ = ["ACTION_CACHE", "ACTION_NONE", "ACTION_SEED", "TUNING_KEYS", "AestheticLoop", "Analysis", "Tuned",
           "apply_tuning", "parse_tuning"]
