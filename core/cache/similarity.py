"""Similarity strategies: how keyframes are embedded and compared.

One interface, :class:`SimilarityStrategy`, with four implementations chosen per
workflow by name through :func:`get_strategy`:

``dual_metric``
    The default metric (``docs/design.md`` §8): a 96-bin HSV
    colour histogram compared by histogram intersection (0..3) and an 8x8 DCT
    perceptual hash compared by ``1 - Hamming/64`` (0..1). The embedding row is the
    96 histogram floats followed by the 64 hash bits (as 0.0/1.0).
``latent_pool``
    Cosine similarity of keyframe latents average-pooled to a 4x4 grid per channel.
``clip_vision`` / ``open_clip``
    Cosine similarity of image embeddings produced by an injected encoder callable
    (ComfyUI's ``CLIP_VISION`` model, or an open_clip model from
    :func:`load_open_clip`).

A strategy exposes one similarity *per metric* (``metric_similarities``), because
admission, the collapse detector and the injection candidate window all apply a
threshold per metric, plus one combined scalar (``similarity_matrix``) used where a
single ranking is needed (redundancy eviction). Per-metric defaults for those
thresholds live on the strategy (:class:`StrategyDefaults`).

Nothing here imports ComfyUI; ``open_clip`` is imported lazily inside
:func:`load_open_clip` only.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar

import numpy as np
import scipy.fftpack
import torch
import torch.nn.functional as F
from PIL import Image

from ..loop.frames import to_image

ImageEncoder = Callable[[torch.Tensor], torch.Tensor]
"""Maps an IMAGE batch ``[B,H,W,3]`` (0..1) to raw embeddings ``[B,D]``."""

COLOR_BINS_PER_CHANNEL = 32
COLOR_DIMS = 3 * COLOR_BINS_PER_CHANNEL
PHASH_SIZE = 8
PHASH_HIGHFREQ_FACTOR = 4
PHASH_BITS = PHASH_SIZE * PHASH_SIZE
DUAL_METRIC_DIMS = COLOR_DIMS + PHASH_BITS
COLOR_REDUNDANCY_SCALE = 2.5
"""Colour divisor in the combined dual-metric score ``(color/2.5 + struct)/2``
(the redundancy score; ``docs/design.md`` §8)."""
LATENT_POOL_GRID = (4, 4)
_NORM_EPS = 1e-8


class StrategyUnavailableError(RuntimeError):
    """A strategy cannot be used in this environment (e.g. a package is missing)."""


@dataclass(frozen=True)
class StrategyDefaults:
    """Per-metric default thresholds a strategy is calibrated with.

    Attributes:
        admission_mean: admit while the mean similarity to the cache is below this.
        admission_max: admit while the max similarity to the cache is below this.
        candidate_window: open interval ``(lo, hi)`` of "related but different".
        collapse: ``(convergence, force)`` similarity-delta thresholds.
    """

    admission_mean: Mapping[str, float]
    admission_max: Mapping[str, float]
    candidate_window: Mapping[str, tuple[float, float]]
    collapse: Mapping[str, tuple[float, float]]


DUAL_METRIC_DEFAULTS = StrategyDefaults(
    admission_mean=MappingProxyType({"color": 1.92, "struct": 0.80}),
    admission_max=MappingProxyType({"color": 2.70, "struct": 0.92}),
    candidate_window=MappingProxyType({"color": (1.18, 2.05), "struct": (0.68, 0.92)}),
    collapse=MappingProxyType({"color": (0.15, 0.30), "struct": (0.08, 0.15)}),
)
"""The dual metric's thresholds (``docs/design.md`` §8). The ``admission_max`` values are
uncalibrated starting points."""

COSINE_DEFAULTS = StrategyDefaults(
    admission_mean=MappingProxyType({"cosine": 0.80}),
    admission_max=MappingProxyType({"cosine": 0.95}),
    candidate_window=MappingProxyType({"cosine": (0.68, 0.92)}),
    collapse=MappingProxyType({"cosine": (0.08, 0.15)}),
)
"""Cosine similarity shares pHash's 0..1 "1 = identical" scale, so the cosine
strategies start from the pHash constants. They are not calibrated for CLIP or
pooled latents; every value is overridable where it is used."""


class SimilarityStrategy(ABC):
    """How keyframes are embedded and compared.

    Class attributes:
        name: registry name, also stored with a cache so mismatches are detected.
        needs_image: ``embed`` requires the decoded frames (an IMAGE batch, or uint8 frames).
        embeds_uint8: ``embed_images`` takes uint8 frames ``[B,H,W,3]`` as they are (it works on
            bytes anyway); for the others ``embed`` makes such frames an IMAGE first.
        needs_latent: ``embed`` requires the LATENT samples batch.
        metrics: metric names, in the order ``metric_similarities`` returns them.
        defaults: calibrated per-metric thresholds.
        column_major_bank: a bank of these embeddings should be stored ``[D,N]``
            contiguous (and passed as its ``[N,D]`` transposed view): the query-bank
            product then runs as a straight matrix-vector product over the bank.
        cpu_only: ``embed`` is plain CPU work on the keyframe pair and touches no
            model (nor the GPU): a keyframe's analysis may run on a worker thread.
    """

    column_major_bank: ClassVar[bool] = False
    cpu_only: ClassVar[bool] = True
    embeds_uint8: ClassVar[bool] = False
    name: ClassVar[str]
    needs_image: ClassVar[bool]
    needs_latent: ClassVar[bool]
    metrics: ClassVar[tuple[str, ...]]
    defaults: ClassVar[StrategyDefaults]

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Embed an IMAGE batch ``[B,H,W,3]`` in 0..1 into float32 ``[B,D]`` on the CPU."""
        raise NotImplementedError(f"strategy '{self.name}' does not embed images")

    def embed_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Embed latent samples ``[B,C,h,w]`` into float32 ``[B,D]`` on the CPU."""
        raise NotImplementedError(f"strategy '{self.name}' does not embed latents")

    def embed(
        self, images: torch.Tensor | None = None, latents: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Embed whichever input this strategy needs; raise if it was not given."""
        if self.needs_image:
            if images is None:
                raise ValueError(f"similarity strategy '{self.name}' needs the keyframe image")
            return self.embed_images(images if self.embeds_uint8 else to_image(images))
        if latents is None:
            raise ValueError(f"similarity strategy '{self.name}' needs the keyframe latent")
        return self.embed_latents(latents)

    @abstractmethod
    def metric_similarities(
        self, query: torch.Tensor, bank: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Per-metric similarity of every query row to every bank row.

        Args:
            query: ``[Q,D]`` embeddings.
            bank: ``[M,D]`` embeddings.

        Returns:
            ``{metric: [Q,M] float32}`` for each name in :attr:`metrics`; higher means
            more similar.
        """

    @abstractmethod
    def similarity_matrix(self, query: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        """One combined similarity ``[Q,M]`` (higher = more similar) for ranking."""


def _check_pair(query: torch.Tensor, bank: torch.Tensor) -> None:
    if query.dim() != 2 or bank.dim() != 2:
        raise ValueError(
            "similarity expects 2-D [N,D] embeddings, got "
            f"{tuple(query.shape)} and {tuple(bank.shape)}"
        )
    if query.shape[1] != bank.shape[1]:
        raise ValueError(
            f"embedding sizes differ: query has {query.shape[1]} dims, bank has {bank.shape[1]}"
        )


def _check_images(images: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected an IMAGE batch [B,H,W,3], got shape {tuple(images.shape)}")


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """Convert an IMAGE batch to ``uint8 [B,H,W,3]`` exactly as ComfyUI's SaveImage does.

    ``clip(255 * x, 0, 255)`` then truncation, so an embedding of the in-memory image
    equals the embedding of the saved PNG (``core.loop.frames``
    rounds instead, which is fine for display but would shift histogram bins). uint8 frames
    (what the loop's writer saves) are those bytes already: they come back as they are.
    """
    _check_images(images)
    if images.dtype == torch.uint8:
        return images.detach().cpu().numpy()
    scaled = np.multiply(images.detach().to("cpu", torch.float32).numpy(), np.float32(255.0))
    np.maximum(scaled, 0, out=scaled)  # np.clip's bytes, 3-4x faster; numpy stays on this thread
    np.minimum(scaled, 255, out=scaled)
    return scaled.astype(np.uint8)


def color_histogram(rgb: np.ndarray) -> np.ndarray:
    """96-bin HSV colour histogram of one ``uint8 [H,W,3]`` RGB image (``docs/design.md`` §8).

    PIL converts RGB to HSV (each channel 0..255); each channel gets 32 bins over
    [0, 256) and is normalised to sum 1; the result is [H | S | V] as float32.
    """
    hsv = np.asarray(Image.fromarray(rgb, "RGB").convert("HSV")).reshape(-1, 3)
    bins = hsv // (256 // COLOR_BINS_PER_CHANNEL)
    counts = np.stack([np.bincount(bins[:, c], minlength=COLOR_BINS_PER_CHANNEL) for c in range(3)])
    return (counts / counts.sum(axis=1, keepdims=True)).astype(np.float32).ravel()


def phash_bits(rgbs: np.ndarray) -> np.ndarray:
    """8x8 perceptual-hash bits of ``uint8 [B,H,W,3]`` images, as ``imagehash.phash``.

    Grayscale (PIL "L"), 32x32 LANCZOS resize, unnormalised 2-D DCT-II via
    ``scipy.fftpack`` (rows then columns), top-left 8x8, bit = coefficient > median.

    Returns:
        ``bool [B,64]`` in row-major order (the order of ``str(imagehash)``).
    """
    side = PHASH_SIZE * PHASH_HIGHFREQ_FACTOR
    small = np.stack(
        [
            np.asarray(
                Image.fromarray(rgb, "RGB")
                .convert("L")
                .resize((side, side), Image.Resampling.LANCZOS)
            )
            for rgb in rgbs
        ]
    ).astype(np.float64)
    dct = scipy.fftpack.dct(scipy.fftpack.dct(small, axis=1), axis=2)
    low = dct[:, :PHASH_SIZE, :PHASH_SIZE].reshape(len(rgbs), PHASH_BITS)
    return low > np.median(low, axis=1, keepdims=True)


def histogram_intersection(query: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """``sum(min(q, b))`` for every pair, vectorised as ``(sum q + sum b - L1(q, b)) / 2``."""
    _check_pair(query, bank)
    q = query.to(torch.float32)
    b = bank.to(torch.float32)
    l1 = torch.cdist(q, b, p=1.0)
    return (q.sum(dim=1, keepdim=True) + b.sum(dim=1).unsqueeze(0) - l1) / 2.0


def hamming_similarity(query: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """``1 - Hamming/bits`` for every pair of 0/1 bit rows, via one matrix product."""
    _check_pair(query, bank)
    q = query.to(torch.float32)
    b = bank.to(torch.float32)
    differing = q.sum(dim=1, keepdim=True) + b.sum(dim=1).unsqueeze(0) - 2.0 * (q @ b.T)
    return 1.0 - differing / q.shape[1]


def _l2_normalise(vectors: torch.Tensor) -> torch.Tensor:
    return vectors / vectors.norm(dim=1, keepdim=True).clamp_min(_NORM_EPS)


class DualMetricStrategy(SimilarityStrategy):
    """HSV colour histogram + pHash-8, the dual metric (``docs/design.md`` §8)."""

    name = "dual_metric"
    embeds_uint8 = True
    needs_image = True
    needs_latent = False
    metrics = ("color", "struct")
    defaults = DUAL_METRIC_DEFAULTS

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        rgbs = images_to_uint8(images)
        colors = np.stack([color_histogram(rgb) for rgb in rgbs])
        bits = phash_bits(rgbs).astype(np.float32)
        return torch.from_numpy(np.concatenate([colors, bits], axis=1))

    def metric_similarities(
        self, query: torch.Tensor, bank: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        _check_pair(query, bank)
        if query.shape[1] != DUAL_METRIC_DIMS:
            raise ValueError(
                f"dual_metric embeddings have {DUAL_METRIC_DIMS} dims, got {query.shape[1]}"
            )
        return {
            "color": histogram_intersection(query[:, :COLOR_DIMS], bank[:, :COLOR_DIMS]),
            "struct": hamming_similarity(query[:, COLOR_DIMS:], bank[:, COLOR_DIMS:]),
        }

    def similarity_matrix(self, query: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        sims = self.metric_similarities(query, bank)
        return (sims["color"] / COLOR_REDUNDANCY_SCALE + sims["struct"]) / 2.0


class CosineStrategy(SimilarityStrategy):
    """Base for strategies whose embeddings are unit vectors compared by cosine.

    ``embed_*`` L2-normalise every embedding, so the similarity is a plain matrix
    product: it reads the bank once and allocates nothing of the bank's size. Rows not
    made by ``embed_*`` must be unit vectors too. Banks are best stored column-major:
    measured on a 10,000 x 768 bank (CPU, MKL), the product is about twice as fast.
    """

    column_major_bank = True

    metrics = ("cosine",)
    defaults = COSINE_DEFAULTS

    def metric_similarities(
        self, query: torch.Tensor, bank: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return {"cosine": self.similarity_matrix(query, bank)}

    def similarity_matrix(self, query: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        _check_pair(query, bank)
        return query.to(torch.float32) @ bank.to(torch.float32).T


class LatentPoolStrategy(CosineStrategy):
    """Cosine over latents average-pooled to 4x4 per channel (``4*4*C`` dims)."""

    name = "latent_pool"
    needs_image = False
    needs_latent = True

    def embed_latents(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.dim() != 4:
            raise ValueError(
                f"latent_pool expects latents [B,C,h,w], got shape {tuple(latents.shape)}"
            )
        pooled = F.adaptive_avg_pool2d(latents.detach().to("cpu", torch.float32), LATENT_POOL_GRID)
        return _l2_normalise(pooled.flatten(start_dim=1))


class EncoderStrategy(CosineStrategy):
    """Cosine over embeddings from an injected image encoder (batched, one call)."""

    needs_image = True
    needs_latent = False
    cpu_only = False

    def __init__(self, encoder: ImageEncoder) -> None:
        """Args:
        encoder: maps an IMAGE batch ``[B,H,W,3]`` to embeddings ``[B,D]``.
        """
        if not callable(encoder):
            raise TypeError(f"strategy '{self.name}' needs a callable image encoder")
        self._encoder = encoder

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images)
        with torch.inference_mode():
            raw = self._encoder(images)
        if raw.dim() != 2 or raw.shape[0] != images.shape[0]:
            raise ValueError(
                f"the '{self.name}' encoder returned shape {tuple(raw.shape)} for "
                f"{images.shape[0]} images; expected [B,D]"
            )
        return _l2_normalise(raw.detach().to("cpu", torch.float32))


class ClipVisionStrategy(EncoderStrategy):
    """Cosine over ComfyUI ``CLIP_VISION`` image embeddings (encoder injected by the node)."""

    name = "clip_vision"


class OpenClipStrategy(EncoderStrategy):
    """Cosine over open_clip image embeddings; build the encoder with :func:`load_open_clip`."""

    name = "open_clip"


def clip_preprocess(
    images: torch.Tensor,
    size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> torch.Tensor:
    """CLIP preprocessing of an IMAGE batch: shortest side to ``size`` (bicubic),
    centre crop to ``size``x``size``, normalise; returns ``[B,3,size,size]``."""
    _check_images(images)
    pixels = images.permute(0, 3, 1, 2).to(torch.float32)
    height, width = pixels.shape[-2:]
    scale = size / min(height, width)
    resized = F.interpolate(
        pixels,
        size=(max(size, round(height * scale)), max(size, round(width * scale))),
        mode="bicubic",
        antialias=True,
        align_corners=False,
    )
    top = (resized.shape[-2] - size) // 2
    left = (resized.shape[-1] - size) // 2
    cropped = resized[..., top : top + size, left : left + size].clamp(0.0, 1.0)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    return (cropped - mean_t) / std_t


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"'{path}' does not contain a state dict")
    return {key.removeprefix("module."): value for key, value in state.items()}


def load_open_clip(
    config_name: str, weights_path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> ImageEncoder:
    """Build an open_clip image encoder from a config name and a LOCAL weights file.

    The model is created with ``pretrained=None`` and the weights are read from
    ``weights_path`` (``.safetensors``, or a ``.pt``/``.bin`` checkpoint read with
    ``torch.load(weights_only=True)``). Nothing is ever downloaded.

    Args:
        config_name: an open_clip model config, e.g. ``"ViT-B-32"``.
        weights_path: path of the weights file (normally under ComfyUI's
            ``models/clip_vision`` folder).
        device: torch device the model runs on (ComfyUI's torch device).

    Returns:
        An :data:`ImageEncoder` returning raw (unnormalised) image features on the CPU.

    Raises:
        FileNotFoundError: the weights file does not exist (the message names the folder).
        StrategyUnavailableError: the ``open_clip`` package is not installed.
    """
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"open_clip weights file '{path.name}' not found in folder '{path.parent}'. "
            "Put the model's .safetensors (or .pt) file in that folder; Dream Window never "
            "downloads models."
        )
    try:
        import open_clip
    except ImportError as error:
        raise StrategyUnavailableError(
            "the 'open_clip' similarity strategy is unavailable: the open_clip package is not "
            "installed (pip install open_clip_torch), or use 'clip_vision', 'dual_metric' or "
            "'latent_pool'"
        ) from error
    model = open_clip.create_model(config_name, pretrained=None)
    model.load_state_dict(_load_state_dict(path))
    model = model.eval().to(device)
    visual = model.visual
    image_size = visual.image_size
    size = image_size[0] if isinstance(image_size, (tuple, list)) else int(image_size)
    mean = tuple(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)

    def encode(images: torch.Tensor) -> torch.Tensor:
        pixels = clip_preprocess(images.to(device), size, mean, std)
        with torch.inference_mode():
            features = model.encode_image(pixels)
        return features.to("cpu", torch.float32)

    return encode


def open_clip_available() -> bool:
    """Whether the optional ``open_clip`` package can be imported."""
    import importlib.util

    return importlib.util.find_spec("open_clip") is not None


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


def open_clip_configs() -> list[str]:
    """The model configs open_clip ships (what ``open_clip.list_models()`` lists, in its order), or
    none when open_clip is not installed.

    Read from the package's ``model_configs/*.json`` without importing it: importing open_clip takes
    seconds (it imports timm and torchvision), and ComfyUI asks for the node's inputs at every start."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return []
    names = {path.stem for folder in spec.submodule_search_locations
             for path in Path(folder, "model_configs").glob("*.json")}
    return sorted(names, key=_natural_key)


_REGISTRY: Mapping[str, type[SimilarityStrategy]] = MappingProxyType(
    {
        cls.name: cls
        for cls in (DualMetricStrategy, LatentPoolStrategy, ClipVisionStrategy, OpenClipStrategy)
    }
)
STRATEGY_NAMES: tuple[str, ...] = tuple(sorted(_REGISTRY))


def strategy_class(name: str) -> type[SimilarityStrategy]:
    """The strategy registered as ``name``: its metrics and defaults, without a model.

    Raises:
        ValueError: ``name`` is not a known strategy (the message lists the valid ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown similarity strategy {name!r}; valid names: {', '.join(STRATEGY_NAMES)}"
        ) from None


def get_strategy(name: str, **kwargs: object) -> SimilarityStrategy:
    """Instantiate a strategy by name (see :func:`strategy_class`); ``kwargs`` go to its
    constructor. ``clip_vision`` and ``open_clip`` need ``encoder=`` (an :data:`ImageEncoder`)."""
    return strategy_class(name)(**kwargs)


DIVERSITY_SAMPLE = 512
"""Most cache entries ``mean_pairwise_similarity`` compares (evenly spaced ones beyond it), so the
status costs at most 512 x 512 comparisons per keyframe at any cache capacity."""


def mean_pairwise_similarity(
    strategy: SimilarityStrategy, bank: torch.Tensor, sample: int = DIVERSITY_SAMPLE
) -> float | None:
    """Mean combined similarity (``similarity_matrix``) over all pairs of distinct rows of ``bank``.

    None below two rows. A bank of more than ``sample`` rows is measured on ``sample`` evenly
    spaced rows (the first and the last included).
    """
    count = bank.shape[0]
    if count < 2:
        return None
    if count > sample:
        bank = bank[torch.linspace(0, count - 1, sample).round().long()]
        count = sample
    sims = strategy.similarity_matrix(bank, bank).to(torch.float64)
    return float((sims.sum() - sims.diagonal().sum()) / (count * (count - 1)))


__all__ = [
    "COLOR_DIMS",
    "COSINE_DEFAULTS",
    "DIVERSITY_SAMPLE",
    "DUAL_METRIC_DEFAULTS",
    "DUAL_METRIC_DIMS",
    "PHASH_BITS",
    "STRATEGY_NAMES",
    "ClipVisionStrategy",
    "CosineStrategy",
    "DualMetricStrategy",
    "EncoderStrategy",
    "ImageEncoder",
    "LatentPoolStrategy",
    "OpenClipStrategy",
    "SimilarityStrategy",
    "StrategyDefaults",
    "StrategyUnavailableError",
    "clip_preprocess",
    "color_histogram",
    "get_strategy",
    "hamming_similarity",
    "histogram_intersection",
    "images_to_uint8",
    "load_open_clip",
    "mean_pairwise_similarity",
    "open_clip_available",
    "open_clip_configs",
    "phash_bits",
    "strategy_class",
]
