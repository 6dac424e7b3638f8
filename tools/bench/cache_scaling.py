"""CPU benchmark: aesthetic-cache work per keyframe against cache size, per strategy.

Measures, with synthetic embeddings:

* **admission + candidate selection** per keyframe: the new keyframe's per-metric
  similarity to every cached entry (held in the cache store's in-memory
  ``EmbeddingBank``), the admission rule (the default mean rule), and the weighted
  "related but different" draw - at cache sizes 50, 1,000 and 10,000 by default. The
  bank is built around the query so that a realistic share of entries falls inside the
  candidate window (the draw then has real work to do);
* **embedding** per keyframe: the keyframe and the pair's midpoint in one batch of 2, as
  the loop embeds them (2 images of 512x256, or 2 ``[4,32,64]`` latents for
  ``latent_pool``), for every strategy:

  - ``clip_vision``: ComfyUI's own CLIP vision model, imported in-process from a ComfyUI
    tree (``--comfy``) and loaded from a model file (``--clip-vision``; by default the
    harness's random-weight ViT-L/14, made by ``tools/harness/make_tiny_models.py ...
    clip_vision``), in the dtype ComfyUI picks;
  - ``open_clip``: a tiny stand-in model (``DW-Tiny``: 2 layers, 64 wide, 32 px) made and
    saved at run time and loaded through the pack's ``load_open_clip``. Its figure is a
    floor, not the real cost of ViT-B-32; the real model is measured as well when its
    weights are given (``--open-clip-weights``, ``--open-clip-config``).

  A part that cannot run prints the reason it was skipped, never zeros.

The sizes are measured interleaved, one keyframe per size in turn, so the caches are
cold for each lookup as in the live loop, where sampling and decoding run between two
keyframes' lookups (and a change in machine load affects every size alike).

Prints a table (median ms per keyframe, and the growth from the second-largest to the
largest size divided by the size ratio: <= 1.0 means no worse than linear) and writes
``tools/bench/results/cache_scaling.json``. Target: < 1 ms per keyframe at 1,000 entries.

Run: ``python tools/bench/cache_scaling.py`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from core.cache import admission, injection, similarity  # noqa: E402
from core.cache.store import EmbeddingBank  # noqa: E402
from tools.harness.comfy_process import COMFYUI_DIR, HARNESS, TINY_CLIP_VISION  # noqa: E402

TARGET_MS_AT_1000 = 1.0
MAX_SIZE = 1_000_000
SYNTHETIC_DIMS = {"latent_pool": 64, "clip_vision": 768, "open_clip": 512}
"""Embedding sizes used for the cosine strategies: 4 latent channels x 4x4, CLIP
ViT-L/14 (ComfyUI's usual clip_vision model) and open_clip ViT-B-32."""
KEYFRAME_HEIGHT, KEYFRAME_WIDTH = 256, 512
KEYFRAME_BATCH = 2
"""The keyframe and the pair's midpoint, embedded together as the loop does."""
DEFAULT_CLIP_VISION = HARNESS / "models" / "clip_vision" / TINY_CLIP_VISION
TINY_OPEN_CLIP = "DW-Tiny"
TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
"""The open_clip stand-in: the pack's whole open_clip path (preprocessing, encoder,
normalisation) with a model small enough to make at run time; a floor on the real cost."""


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
        "--embed-repeats",
        type=positive_int,
        default=20,
        help="timed embeddings for dual_metric, latent_pool and the open_clip stand-in (20)",
    )
    parser.add_argument(
        "--model-repeats",
        type=positive_int,
        default=3,
        help="timed embeddings through a model file (clip_vision, --open-clip-weights): a "
        "ViT-L/14 batch takes seconds on a CPU (3)",
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
        "--open-clip-weights",
        type=Path,
        help="local open_clip weights file (else only the tiny stand-in is measured)",
    )
    parser.add_argument(
        "--comfy",
        type=Path,
        help=f"ComfyUI tree to import clip_vision from (default: $COMFYUI_DIR or {COMFYUI_DIR}; "
        "clip_vision is skipped when there is none)",
    )
    parser.add_argument(
        "--clip-vision",
        type=Path,
        help=f"CLIP vision model file (default: {DEFAULT_CLIP_VISION}; clip_vision is skipped "
        "when there is none)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO / "tools" / "bench" / "results" / "cache_scaling.json",
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
    if args.comfy is not None and not is_comfy_tree(args.comfy):
        parser.error(f"--comfy: no ComfyUI tree at '{args.comfy}'")
    if args.clip_vision is not None and not args.clip_vision.is_file():
        parser.error(f"--clip-vision: no file '{args.clip_vision}'")
    args.sizes = sorted(set(args.sizes))
    args.comfy = args.comfy or COMFYUI_DIR
    args.clip_vision = args.clip_vision or DEFAULT_CLIP_VISION
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


def is_comfy_tree(folder: Path) -> bool:
    """Whether ``folder`` holds a ComfyUI tree with its CLIP vision module."""
    return (folder / "comfy" / "clip_vision.py").is_file()


def keyframe_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A keyframe and the pair's midpoint as the loop embeds them: an IMAGE batch
    ``[2,256,512,3]`` and the matching latents ``[2,4,32,64]``."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(KEYFRAME_BATCH, KEYFRAME_HEIGHT, KEYFRAME_WIDTH, 3, generator=gen)
    latents = torch.randn(
        KEYFRAME_BATCH, 4, KEYFRAME_HEIGHT // 8, KEYFRAME_WIDTH // 8, generator=gen
    )
    return images, latents


def summarise(samples: list[float]) -> dict[str, object]:
    """Median and 90th percentile of timings in ms."""
    return {"median_ms": statistics.median(samples), "p90_ms": float(np.percentile(samples, 90))}


def timed_row(
    strategy: str, model: str, work: Callable[[], object], repeats: int, warmup: int, note: str = ""
) -> dict[str, object]:
    """One measured row of the embedding table."""
    samples = time_ms(work, repeats, warmup)
    row = {"strategy": strategy, "model": model, **summarise(samples), "runs": repeats}
    if note:
        row["note"] = note
    return row


def skipped_row(strategy: str, model: str, reason: str) -> dict[str, object]:
    """One row of the embedding table that could not be measured, and why."""
    return {"strategy": strategy, "model": model, "skipped": reason}


def encoder_row(
    strategy: similarity.EncoderStrategy,
    model: str,
    images: torch.Tensor,
    repeats: int,
    warmup: int,
    note: str = "",
) -> dict[str, object]:
    """Time an encoder strategy's ``embed_images`` on the keyframe batch."""
    return timed_row(
        strategy.name, model, lambda: strategy.embed_images(images), repeats, warmup, note
    )


@contextmanager
def quiet_open_clip() -> Iterator[None]:
    """Silence open_clip's "no pretrained weights loaded" warning: ``load_open_clip``
    creates the model with ``pretrained=None`` and loads a local file afterwards, and the
    stand-in is random on purpose."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def tiny_open_clip_weights(folder: Path, seed: int) -> Path:
    """Register the stand-in's config with open_clip and save a seeded random model of it
    in ``folder``; returns the weights file."""
    import open_clip
    from safetensors.torch import save_file

    (folder / f"{TINY_OPEN_CLIP}.json").write_text(json.dumps(TINY_OPEN_CLIP_CONFIG))
    open_clip.add_model_config(folder)
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_OPEN_CLIP, pretrained=None)
    path = folder / f"{TINY_OPEN_CLIP}.safetensors"
    save_file(model.state_dict(), str(path))
    return path


def open_clip_rows(args: argparse.Namespace, images: torch.Tensor) -> list[dict[str, object]]:
    """The open_clip stand-in, and the real model when its weights are given."""
    stand_in = f"{TINY_OPEN_CLIP} stand-in"
    real = args.open_clip_config
    if args.open_clip_weights is not None:
        real += f" ({args.open_clip_weights.name})"
    if not similarity.open_clip_available():
        reason = "open_clip is not installed (pip install open_clip_torch)"
        return [skipped_row("open_clip", stand_in, reason), skipped_row("open_clip", real, reason)]
    with tempfile.TemporaryDirectory(prefix="dw-bench-") as folder, quiet_open_clip():
        weights = tiny_open_clip_weights(Path(folder), args.seed)
        encoder = similarity.load_open_clip(TINY_OPEN_CLIP, weights, "cpu")
    rows = [
        encoder_row(
            similarity.OpenClipStrategy(encoder),
            stand_in,
            images,
            args.embed_repeats,
            warmup=2,
            note=f"a floor, not the real cost of {args.open_clip_config}",
        )
    ]
    if args.open_clip_weights is None:
        reason = "no local weights given (--open-clip-weights FILE)"
        return [*rows, skipped_row("open_clip", real, reason)]
    with quiet_open_clip():
        encoder = similarity.load_open_clip(args.open_clip_config, args.open_clip_weights, "cpu")
    rows.append(
        encoder_row(
            similarity.OpenClipStrategy(encoder), real, images, args.model_repeats, warmup=1
        )
    )
    return rows


def load_clip_vision(comfy_dir: Path, path: Path) -> object:
    """Import ComfyUI in-process from ``comfy_dir`` (on the CPU when torch sees no CUDA
    device) and load its CLIP vision model from ``path``."""
    folder = str(comfy_dir.resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = not torch.cuda.is_available()
    import comfy.clip_vision

    return comfy.clip_vision.load(str(path))


def clip_vision_row(args: argparse.Namespace, images: torch.Tensor) -> dict[str, object]:
    """ComfyUI's CLIP vision model on the keyframe batch, or why it cannot run here."""
    model_name = args.clip_vision.name
    if not is_comfy_tree(args.comfy):
        return skipped_row(
            "clip_vision", model_name, f"no ComfyUI tree at {args.comfy} (--comfy DIR)"
        )
    if not args.clip_vision.is_file():
        return skipped_row(
            "clip_vision",
            model_name,
            f"no CLIP vision file at {args.clip_vision} (--clip-vision FILE; "
            "tools/harness/make_tiny_models.py --comfy DIR --models DIR clip_vision makes one)",
        )
    model = load_clip_vision(args.comfy, args.clip_vision)
    strategy = similarity.ClipVisionStrategy(lambda batch: model.encode_image(batch).image_embeds)
    return encoder_row(
        strategy,
        model_name,
        images,
        args.model_repeats,
        warmup=1,
        note=f"ComfyUI: {model.dtype} on {model.load_device}",
    )


def measure_embedding(
    name: str, args: argparse.Namespace, images: torch.Tensor, latents: torch.Tensor
) -> list[dict[str, object]]:
    """The embedding rows of one strategy (two for open_clip), measured or skipped."""
    if name == "dual_metric":
        strategy = similarity.get_strategy(name)
        return [
            timed_row(
                name,
                "colour histograms + pHash",
                lambda: strategy.embed_images(images),
                args.embed_repeats,
                warmup=2,
            )
        ]
    if name == "latent_pool":
        strategy = similarity.get_strategy(name)
        return [
            timed_row(
                name,
                "pooled latent",
                lambda: strategy.embed_latents(latents),
                args.embed_repeats,
                warmup=2,
            )
        ]
    if name == "clip_vision":
        return [clip_vision_row(args, images)]
    return open_clip_rows(args, images)


def embedding_line(row: dict[str, object]) -> str:
    """A row of the embedding table: median / p90 ms and runs, or the reason it was skipped."""
    prefix = f"{row['strategy']:<12}{row['model']:<36}"
    if "skipped" in row:
        return f"{prefix}skipped: {row['skipped']}"
    line = f"{prefix}{row['median_ms']:>11.3f}{row['p90_ms']:>11.3f}{row['runs']:>6}"
    return f"{line}  {row['note']}" if "note" in row else line


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
        "embedding_input": {
            "images": [KEYFRAME_BATCH, KEYFRAME_HEIGHT, KEYFRAME_WIDTH, 3],
            "latents": [KEYFRAME_BATCH, 4, KEYFRAME_HEIGHT // 8, KEYFRAME_WIDTH // 8],
        },
        "embedding": [],
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
    print(
        f"\nembedding per keyframe: keyframe + midpoint in one batch ({KEYFRAME_BATCH} images "
        f"{KEYFRAME_WIDTH}x{KEYFRAME_HEIGHT}; latent_pool: their latents), ms"
    )
    print(f"{'strategy':<12}{'model':<36}{'median':>11}{'p90':>11}{'runs':>6}")
    images, latents = keyframe_inputs(args.seed)
    for name in args.strategies:
        for row in measure_embedding(name, args, images, latents):
            results["embedding"].append(row)
            print(embedding_line(row), flush=True)
    results["failures"] = failures
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print(f"\nthreads: {torch.get_num_threads()}; results: {args.output}")
    print("targets met" if not failures else "targets missed:\n  " + "\n  ".join(failures))
    return 1 if failures and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
