"""CPU benchmark: aesthetic-cache work per keyframe against cache size, per strategy.

Measures, with synthetic embeddings:

* **admission + candidate selection** per keyframe: the new keyframe's per-metric
  similarity to every cached entry (held in the cache store's in-memory
  ``EmbeddingBank``), the admission rule (the original's mean rule), and the weighted
  "related but different" draw - at cache sizes 50, 1,000 and 10,000 by default. The
  bank is built around the query so that a realistic share of entries falls inside the
  candidate window (the draw then has real work to do);
* **embedding** per keyframe: ``dual_metric`` on a 512x256 image, ``latent_pool`` on a
  ``[1,4,32,64]`` latent, ``open_clip`` when the package and a local weights file are
  given; ``clip_vision`` needs ComfyUI's CLIP_VISION model and is skipped here.

The sizes are measured interleaved, one keyframe per size in turn, so the caches are
cold for each lookup as in the live loop, where sampling and decoding run between two
keyframes' lookups (and a change in machine load affects every size alike).

Prints a table (median ms per keyframe, and the growth from the second-largest to the
largest size divided by the size ratio: <= 1.0 means no worse than linear) and writes
``bench/results/cache_scaling.json``. Target: < 1 ms per keyframe at 1,000 entries.

Run: ``python bench/cache_scaling.py`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core import admission, injection, similarity  # noqa: E402
from core.cache_store import EmbeddingBank  # noqa: E402

TARGET_MS_AT_1000 = 1.0
MAX_SIZE = 1_000_000
SYNTHETIC_DIMS = {"latent_pool": 64, "clip_vision": 768, "open_clip": 512}
"""Embedding sizes used for the cosine strategies: 4 latent channels x 4x4, CLIP
ViT-L/14 (ComfyUI's usual clip_vision model) and open_clip ViT-B-32."""


def positive_int(text: str) -> int:
    """Parse an integer in 1..MAX_SIZE (an argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= MAX_SIZE:
        raise argparse.ArgumentTypeError(f"{value} is outside 1..{MAX_SIZE:,}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=positive_int,
        nargs="+",
        default=[50, 1_000, 10_000],
        help="cache sizes to measure (default: 50 1000 10000)",
    )
    parser.add_argument(
        "--strategies",
        nargs="+",
        default=list(similarity.STRATEGY_NAMES),
        help=f"strategies to measure (default: all of {', '.join(similarity.STRATEGY_NAMES)})",
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=300, help="timed keyframes per size (300)"
    )
    parser.add_argument(
        "--embed-repeats", type=positive_int, default=20, help="timed embeddings per strategy (20)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the per-keyframe work is too small to gain from "
        "intra-op threads; 0 keeps torch's default)",
    )
    parser.add_argument("--seed", type=int, default=0, help="RNG seed (0)")
    parser.add_argument("--open-clip-config", default="ViT-B-32", help="open_clip model config")
    parser.add_argument(
        "--open-clip-weights", type=Path, help="local open_clip weights file (else skipped)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO / "bench" / "results" / "cache_scaling.json",
        help="JSON results file",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when the 1,000-entry target or linear growth is missed",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.strategies) - set(similarity.STRATEGY_NAMES))
    if unknown:
        parser.error(f"unknown strategies {unknown}; valid: {', '.join(similarity.STRATEGY_NAMES)}")
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    if len(set(args.sizes)) < 2:
        parser.error("--sizes needs at least two different sizes to measure growth")
    if args.open_clip_weights is not None and not args.open_clip_weights.is_file():
        parser.error(f"--open-clip-weights: no file '{args.open_clip_weights}'")
    args.sizes = sorted(set(args.sizes))
    return args


def dual_bank(query_rng: np.random.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A dual-metric query and a bank of its variations (mixed histograms, flipped bits)."""

    def histograms(count: int) -> np.ndarray:
        raw = query_rng.random((count, 3, 32)) ** 3
        return (raw / raw.sum(axis=2, keepdims=True)).reshape(count, 96)

    q_color = histograms(1)
    q_bits = query_rng.random((1, 64)) > 0.5
    mix = query_rng.random((size, 1))
    colors = mix * q_color + (1 - mix) * histograms(size)
    flips = query_rng.random((size, 64)) < query_rng.random((size, 1)) * 0.5
    bits = q_bits ^ flips
    query = np.hstack([q_color, q_bits]).astype(np.float32)
    bank = np.hstack([colors, bits]).astype(np.float32)
    return torch.from_numpy(query), torch.from_numpy(bank)


def cosine_bank(
    query_rng: np.random.Generator, size: int, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A unit query and unit variations of it whose cosines spread over about 0.3..1."""
    query = query_rng.normal(size=(1, dim))
    noise = query_rng.normal(size=(size, dim)) / np.sqrt(dim)
    scale = query_rng.uniform(0.1, 1.0, size=(size, 1)) * np.linalg.norm(query)
    bank = query + scale * noise * 3
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    query /= np.linalg.norm(query)
    return torch.from_numpy(query.astype(np.float32)), torch.from_numpy(bank.astype(np.float32))


def strategy_for(name: str) -> similarity.SimilarityStrategy:
    """A strategy instance for similarity work (encoder strategies get a dummy encoder)."""
    if name in ("clip_vision", "open_clip"):
        return similarity.get_strategy(name, encoder=lambda images: images.mean(dim=(1, 2)))
    return similarity.get_strategy(name)


def time_ms(work: Callable[[], object], repeats: int, warmup: int = 5) -> list[float]:
    """Run ``work`` ``warmup`` times untimed, then return ``repeats`` timings in ms."""
    for _ in range(warmup):
        work()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        work()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return samples


def selection_workload(
    name: str, size: int, args: argparse.Namespace
) -> tuple[Callable[[], None], list[int]]:
    """One keyframe's admission + candidate selection at one cache size, and the list
    that collects its candidate counts."""
    strategy = strategy_for(name)
    data_rng = np.random.default_rng(args.seed)
    if name == "dual_metric":
        query, bank = dual_bank(data_rng, size)
    else:
        query, bank = cosine_bank(data_rng, size, SYNTHETIC_DIMS[name])
    ids = [f"{i:08d}-bench" for i in range(size)]
    store_bank = EmbeddingBank(strategy)
    store_bank.add_many(ids, bank, list(range(size)))
    bank = store_bank.embeddings  # the cache store's in-memory layout
    recent = ids[:5]
    rule = admission.AdmissionPolicy.for_strategy(strategy)
    windows = injection.InjectionConfig.for_strategy(strategy).windows
    rng = np.random.default_rng(args.seed)
    counts: list[int] = []

    def keyframe() -> None:
        sims = strategy.metric_similarities(query, bank)
        row = {metric: values[0].numpy() for metric, values in sims.items()}
        rule.evaluate(row)
        choice = injection.select_candidate(ids, row, windows, rng, recent_ids=recent)
        counts.append(0 if choice is None else choice.candidates)

    return keyframe, counts


def measure_selection(name: str, args: argparse.Namespace) -> dict[int, dict[str, float]]:
    """Per-keyframe timings at every size, interleaved (one keyframe per size in turn)
    so that a change in machine load affects every size alike."""
    workloads = {size: selection_workload(name, size, args) for size in args.sizes}
    samples: dict[int, list[float]] = {size: [] for size in args.sizes}
    for keyframe, _ in workloads.values():
        time_ms(keyframe, repeats=0)
    for _ in range(args.repeats):
        for size, (keyframe, _) in workloads.items():
            samples[size].extend(time_ms(keyframe, repeats=1, warmup=0))
    return {
        size: {
            "median_ms": statistics.median(samples[size]),
            "p90_ms": float(np.percentile(samples[size], 90)),
            "candidate_share": statistics.median(counts) / size,
        }
        for size, (_, counts) in workloads.items()
    }


def measure_embedding(name: str, args: argparse.Namespace) -> dict[str, object]:
    """Embedding time per keyframe, or the reason it is skipped."""
    gen = torch.Generator().manual_seed(args.seed)
    if name == "dual_metric":
        strategy = similarity.get_strategy(name)
        image = torch.rand(1, 256, 512, 3, generator=gen)
        return summarise(time_ms(lambda: strategy.embed_images(image), args.embed_repeats, 2))
    if name == "latent_pool":
        strategy = similarity.get_strategy(name)
        latent = torch.randn(1, 4, 32, 64, generator=gen)
        return summarise(time_ms(lambda: strategy.embed_latents(latent), args.embed_repeats, 2))
    if name == "clip_vision":
        return {"skipped": "needs ComfyUI's CLIP_VISION model (measure it inside ComfyUI)"}
    if not similarity.open_clip_available():
        return {"skipped": "open_clip is not installed"}
    if args.open_clip_weights is None:
        return {"skipped": "no local weights given (--open-clip-weights FILE)"}
    encoder = similarity.load_open_clip(args.open_clip_config, args.open_clip_weights)
    strategy = similarity.get_strategy("open_clip", encoder=encoder)
    image = torch.rand(1, 256, 512, 3, generator=gen)
    return summarise(time_ms(lambda: strategy.embed_images(image), args.embed_repeats, 2))


def summarise(samples: list[float]) -> dict[str, object]:
    return {"median_ms": statistics.median(samples), "p90_ms": float(np.percentile(samples, 90))}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    small, large = args.sizes[-2], args.sizes[-1]
    results: dict[str, object] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "sizes": args.sizes,
        "repeats": args.repeats,
        "target_ms_at_1000": TARGET_MS_AT_1000,
        "selection": {},
        "growth": {},
        "embedding": {},
    }
    failures = []
    print(f"admission + candidate selection per keyframe (median ms, {args.repeats} keyframes)")
    header = f"{'strategy':<12}" + "".join(f"{size:>10,}" for size in args.sizes)
    print(f"{header}{f'growth {large:,}/{small:,}':>22}{'in window':>11}")
    for name in args.strategies:
        per_size = measure_selection(name, args)
        growth = (per_size[large]["median_ms"] / per_size[small]["median_ms"]) / (large / small)
        results["selection"][name] = {str(size): value for size, value in per_size.items()}
        results["growth"][name] = growth
        cells = "".join(f"{per_size[size]['median_ms']:>10.3f}" for size in args.sizes)
        share = per_size[large]["candidate_share"]
        print(f"{name:<12}{cells}{growth:>22.2f}{share:>10.0%}")
        if growth > 1.0:
            failures.append(f"{name}: growth {growth:.2f} is worse than linear")
        if 1_000 in per_size and per_size[1_000]["median_ms"] >= TARGET_MS_AT_1000:
            failures.append(f"{name}: {per_size[1_000]['median_ms']:.3f} ms at 1,000 entries")
    print("\nembedding per keyframe (median ms)")
    for name in args.strategies:
        measured = measure_embedding(name, args)
        results["embedding"][name] = measured
        value = measured.get("skipped") or f"{measured['median_ms']:.3f}"
        print(f"{name:<12}{value}")
    results["failures"] = failures
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print(f"\nthreads: {torch.get_num_threads()}; results: {args.output}")
    print("targets met" if not failures else "targets missed:\n  " + "\n  ".join(failures))
    return 1 if failures and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
