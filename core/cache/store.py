"""Persistent aesthetic cache (Repository pattern) and its in-memory embedding bank.

On-disk layout of one cache directory (a cache *name* maps to one directory)::

    metadata/cache_index.json        the JSON index (entries in insertion order)
    tensors/<cache_id>.safetensors   "embedding" [D] float32 and, optionally, "latent"
    images/<cache_id>.png            the keyframe image (optional per entry)

The folder names and the index keys ``cache_id``, ``prompt``, ``generation_params``,
``timestamp``, ``image_path``, ``version``, ``last_updated`` and ``entry_count``
are those of ``docs/design.md`` §9. Embeddings and latents live in safetensors, ids are
unique (``<seq>-<uuid>``, the sequence number persisted in the index), every file is
written atomically by :mod:`core.atomic_files` (temp file in the same folder, flush,
``os.fsync``, ``os.replace``), and eviction is FIFO by insertion or redundancy-based. Each tensor
file also carries its entry record in the safetensors metadata, so a lost or
unreadable index is rebuilt from the tensor files. Nothing is ever pickled.

Loading skips (and logs once, in one message) index entries that are malformed, whose
tensor file is missing or truncated, or whose image is missing or corrupt; the index
is then rewritten without them. One process owns a cache directory at a time (inside
ComfyUI the node layer keeps one store per directory); a store is thread-safe.

:class:`EmbeddingBank` holds the ``[N,D]`` embedding matrix in memory, so lookups
never re-read files, and picks eviction victims in O(N·D) per change, which keeps
10,000-entry caches usable.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save as save_safetensors

from ..atomic_files import atomic_write_bytes, remove_stale_temps
from ..loop.frames import encode_png
from ..loop.seed_images import load_image
from .similarity import SimilarityStrategy, images_to_uint8

logger = logging.getLogger(__name__)

EVICTION_POLICIES = ("fifo", "redundancy")
INDEX_FORMAT = "dream_window.cache"
INDEX_VERSION = 1
INDEX_FILE = Path("metadata") / "cache_index.json"
TENSOR_DIR = "tensors"
IMAGE_DIR = "images"
DEFAULT_CAPACITY = 50
_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,80}\Z")
_PAIRWISE_CHUNK_ELEMENTS = 1 << 22
FOLDER_FIX = "free disk space, or remove a file or link where the folder should be"
"""The fix named by every cache write error."""
REDUNDANCY_TIE_TOLERANCE = 1e-6
"""Redundancies this close (relative) count as a tie: the two members of a pair get
their similarity from different matrix products, which can differ in the last bit."""


class CacheStoreError(RuntimeError):
    """Base class of cache-store errors."""


class CacheWriteError(CacheStoreError):
    """The cache folder cannot be written; callers may keep running without caching."""


class EmbeddingMismatchError(CacheStoreError):
    """Embeddings do not match the ones the cache was built with."""


class EmbeddingBank:
    """In-memory ``[N,D]`` embedding matrix with row bookkeeping and eviction choice.

    Rows are unordered (removal swaps the last row in); every entry carries its
    insertion sequence number. For the ``redundancy`` policy the bank maintains each
    row's nearest neighbour (max combined similarity to any *other* row), updated in
    O(N·D) per add and per removal, so the victim is found without an N×N matrix.
    """

    def __init__(
        self, strategy: SimilarityStrategy, eviction: str = "fifo", dim: int | None = None
    ) -> None:
        """Args:
        strategy: supplies ``similarity_matrix`` for redundancy.
        eviction: ``"fifo"`` (oldest insertion first) or ``"redundancy"`` (the entry
            most similar to another entry; ties, within
            :data:`REDUNDANCY_TIE_TOLERANCE`, evict the newer).
        dim: the embedding size, when known before the first entry.
        """
        if eviction not in EVICTION_POLICIES:
            raise ValueError(
                f"unknown eviction policy {eviction!r}; valid: {', '.join(EVICTION_POLICIES)}"
            )
        self._strategy = strategy
        self.eviction = eviction
        self._dim = dim
        self._ids: list[str] = []
        self._row_of: dict[str, int] = {}
        self._matrix = torch.empty(0, 0)
        self._seqs = torch.empty(0, dtype=torch.int64)
        self._nn_sim = torch.empty(0)
        self._nn_row = torch.empty(0, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._row_of

    @property
    def dim(self) -> int | None:
        """Embedding size, or None while it is unknown (no entry yet)."""
        return self._dim

    @property
    def ids(self) -> tuple[str, ...]:
        """Entry ids in row order (row ``i`` of :attr:`embeddings` belongs to ``ids[i]``)."""
        return tuple(self._ids)

    @property
    def embeddings(self) -> torch.Tensor:
        """The ``[N,D]`` float32 embedding matrix (a view; do not modify).

        Stored column-major when the strategy's ``column_major_bank`` asks for it.
        """
        return self._matrix[: len(self._ids)]

    def seq_of(self, entry_id: str) -> int:
        """Insertion sequence number of an entry."""
        return int(self._seqs[self._row_of[entry_id]])

    def _reserve(self, rows: int, dim: int) -> None:
        if self._dim is None:
            self._dim = dim
        elif dim != self._dim:
            raise EmbeddingMismatchError(f"embedding has {dim} dims, the bank holds {self._dim}")
        if self._matrix.shape[0] >= rows:
            return
        size = max(rows, 2 * self._matrix.shape[0], 16)
        used = len(self._ids)
        column_major = self._strategy.column_major_bank
        grown = (
            torch.zeros(dim, size).T if column_major else torch.zeros(size, dim),
            torch.zeros(size, dtype=torch.int64),
            torch.full((size,), -torch.inf),
            torch.full((size,), -1, dtype=torch.int64),
        )
        if used:
            for new, old in zip(
                grown, (self._matrix, self._seqs, self._nn_sim, self._nn_row), strict=True
            ):
                new[:used] = old[:used]
        self._matrix, self._seqs, self._nn_sim, self._nn_row = grown

    def add(self, entry_id: str, embedding: torch.Tensor, seq: int) -> None:
        """Add one entry; its embedding is flattened to ``[D]``."""
        self.add_many([entry_id], embedding.reshape(1, -1), [seq])

    def add_many(self, entry_ids: list[str], embeddings: torch.Tensor, seqs: list[int]) -> None:
        """Add entries in bulk (one ``[K,D]`` matrix); neighbours are updated in chunks."""
        if embeddings.dim() != 2 or not embeddings.shape[0] == len(entry_ids) == len(seqs):
            raise ValueError("add_many needs K ids, a [K,D] matrix and K sequence numbers")
        duplicate = next((i for i in entry_ids if i in self._row_of), None)
        if duplicate is not None or len(set(entry_ids)) != len(entry_ids):
            raise ValueError(f"duplicate cache id {duplicate or entry_ids}")
        start = len(self._ids)
        count = len(entry_ids)
        self._reserve(start + count, embeddings.shape[1])
        self._matrix[start : start + count] = embeddings.to(torch.float32)
        self._seqs[start : start + count] = torch.tensor(seqs, dtype=torch.int64)
        for offset, entry_id in enumerate(entry_ids):
            self._row_of[entry_id] = start + offset
        self._ids.extend(entry_ids)
        if self.eviction == "redundancy":
            self._link_new_rows(start)

    def _similarity_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Combined similarity of ``rows`` to every row, self-similarity masked to -inf."""
        sims = self._strategy.similarity_matrix(self._matrix[rows], self.embeddings).clone()
        sims[torch.arange(len(rows)), rows] = -torch.inf
        return sims

    def _chunks(self, rows: torch.Tensor) -> Iterator[torch.Tensor]:
        step = max(1, _PAIRWISE_CHUNK_ELEMENTS // max(1, len(self._ids)))
        return iter(rows.split(step))

    def _link_new_rows(self, start: int) -> None:
        """Nearest-neighbour update after rows ``start..N-1`` were appended."""
        total = len(self._ids)
        for chunk in self._chunks(torch.arange(start, total)):
            sims = self._similarity_rows(chunk)
            self._store_neighbours(chunk, sims)
            old = sims[:, :start].T
            if old.numel():
                new_best, new_idx = old.max(dim=1)
                improved = new_best > self._nn_sim[:start]
                self._nn_sim[:start] = torch.where(improved, new_best, self._nn_sim[:start])
                self._nn_row[:start] = torch.where(improved, chunk[new_idx], self._nn_row[:start])

    def remove(self, entry_id: str) -> None:
        """Remove an entry (the last row moves into its place)."""
        row = self._row_of.pop(entry_id)
        last = len(self._ids) - 1
        orphaned = torch.nonzero(self._nn_row[: last + 1] == row).flatten()
        if row != last:
            moved_id = self._ids[last]
            self._ids[row] = moved_id
            self._row_of[moved_id] = row
            self._matrix[row] = self._matrix[last]
            self._seqs[row] = self._seqs[last]
            self._nn_sim[row] = self._nn_sim[last]
            self._nn_row[row] = self._nn_row[last]
            self._nn_row[: last + 1][self._nn_row[: last + 1] == last] = row
            orphaned = torch.where(orphaned == last, row, orphaned)
        self._ids.pop()
        self._nn_sim[last] = -torch.inf
        self._nn_row[last] = -1
        if self.eviction == "redundancy":
            orphaned = orphaned[orphaned < last]
            self._relink(orphaned)

    def _relink(self, rows: torch.Tensor) -> None:
        if not len(rows):
            return
        for chunk in self._chunks(rows):
            self._store_neighbours(chunk, self._similarity_rows(chunk))

    def _store_neighbours(self, rows: torch.Tensor, sims: torch.Tensor) -> None:
        best, best_row = sims.max(dim=1)
        self._nn_sim[rows] = best
        self._nn_row[rows] = torch.where(torch.isinf(best), -1, best_row)

    def redundancy(self, entry_id: str) -> float:
        """Max combined similarity of an entry to any other entry (-inf when alone)."""
        if self.eviction != "redundancy":
            raise ValueError("redundancy is only tracked with eviction='redundancy'")
        return float(self._nn_sim[self._row_of[entry_id]])

    def victim(self) -> str:
        """The entry the eviction policy removes next."""
        if not self._ids:
            raise LookupError("the bank is empty")
        count = len(self._ids)
        seqs = self._seqs[:count]
        if self.eviction == "fifo":
            return self._ids[int(torch.argmin(seqs))]
        nn_sim = self._nn_sim[:count]
        top = nn_sim.max()
        tied = nn_sim >= top - REDUNDANCY_TIE_TOLERANCE * max(1.0, abs(float(top)))
        newest = torch.where(tied, seqs, torch.iinfo(torch.int64).min)
        return self._ids[int(torch.argmax(newest))]


@dataclass(frozen=True)
class CacheEntry:
    """Metadata of one cached frame (the tensors stay on disk until asked for).

    Attributes:
        cache_id: unique id (``<seq>-<uuid8>``).
        seq: insertion sequence number (FIFO order).
        timestamp: ISO-8601 UTC insertion time.
        source: what the frame was, e.g. ``"keyframe"``, ``"midpoint"``, ``"seed"``.
        prompt: the prompt it was generated with.
        generation_params: free-form JSON-able metadata.
        has_image: whether ``images/<id>.png`` belongs to the entry.
        has_latent: whether the tensor file holds a ``latent``.
    """

    cache_id: str
    seq: int
    timestamp: str
    source: str
    prompt: str
    generation_params: Mapping[str, Any] = field(default_factory=dict)
    has_image: bool = False
    has_latent: bool = False

    def to_record(self) -> dict[str, Any]:
        """The JSON index record."""
        return {
            "cache_id": self.cache_id,
            "seq": self.seq,
            "timestamp": self.timestamp,
            "source": self.source,
            "prompt": self.prompt,
            "generation_params": dict(self.generation_params),
            "image_path": f"{IMAGE_DIR}/{self.cache_id}.png" if self.has_image else None,
            "has_latent": self.has_latent,
        }

    @classmethod
    def from_record(cls, record: Any) -> CacheEntry:
        """Parse and validate an index record; raises ValueError when malformed."""
        if not isinstance(record, dict):
            raise ValueError("index entry is not an object")
        cache_id = record.get("cache_id")
        if not isinstance(cache_id, str) or not _ID_PATTERN.match(cache_id):
            raise ValueError(f"invalid cache_id {cache_id!r}")
        seq = record.get("seq")
        expected = {"timestamp": str, "source": str, "prompt": str, "generation_params": dict}
        bad = [key for key, kind in expected.items() if not isinstance(record.get(key), kind)]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            bad.append("seq")
        if record.get("image_path") not in (None, f"{IMAGE_DIR}/{cache_id}.png"):
            bad.append("image_path")
        if not isinstance(record.get("has_latent"), bool):
            bad.append("has_latent")
        if bad:
            raise ValueError(f"entry {cache_id}: missing or invalid {', '.join(bad)}")
        return cls(
            cache_id=cache_id,
            seq=seq,
            timestamp=record["timestamp"],
            source=record["source"],
            prompt=record["prompt"],
            generation_params=record["generation_params"],
            has_image=record["image_path"] is not None,
            has_latent=record["has_latent"],
        )


@dataclass(frozen=True)
class SkippedEntry:
    """An entry dropped while loading, and why."""

    cache_id: str
    reason: str


@dataclass(frozen=True)
class AddResult:
    """Outcome of :meth:`CacheStore.add`.

    Attributes:
        entry: the new entry.
        evicted: ids removed to respect the capacity (may include the new entry,
            when redundancy eviction finds it the most redundant).
    """

    entry: CacheEntry
    evicted: tuple[str, ...]

    @property
    def kept(self) -> bool:
        """Whether the new entry is still in the cache."""
        return self.entry.cache_id not in self.evicted


class CacheStore:
    """One cache directory: entries, their tensors and images, and the JSON index."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        strategy: SimilarityStrategy,
        *,
        capacity: int = DEFAULT_CAPACITY,
        eviction: str = "fifo",
    ) -> None:
        """Open (creating if needed) and load a cache directory.

        Args:
            directory: the cache folder (one per cache name).
            strategy: the similarity strategy; a cache holds one strategy's embeddings.
            capacity: maximum number of entries (50 by default).
            eviction: ``"fifo"`` or ``"redundancy"``.

        Raises:
            CacheWriteError: the folder cannot be created.
            EmbeddingMismatchError: the cache was built with another strategy.
        """
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"cache capacity must be a positive integer, got {capacity!r}")
        self.directory = Path(directory)
        self.strategy = strategy
        self._capacity = capacity
        self._lock = threading.RLock()
        self._bank = EmbeddingBank(strategy, eviction)
        self._entries: dict[str, CacheEntry] = {}
        self._record_json: dict[str, str] = {}
        self._next_seq = 0
        self._defer_depth = 0
        self._index_dirty = False
        self._pending_deletes: list[str] = []
        self.skipped: tuple[SkippedEntry, ...] = ()
        try:
            for sub in (INDEX_FILE.parent, Path(TENSOR_DIR), Path(IMAGE_DIR)):
                (self.directory / sub).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CacheWriteError(
                f"cannot create cache folder '{self.directory}': {error}; {FOLDER_FIX}"
            ) from error
        self._load()

    @property
    def capacity(self) -> int:
        """Maximum number of entries."""
        return self._capacity

    @property
    def eviction(self) -> str:
        """The eviction policy."""
        return self._bank.eviction

    def __len__(self) -> int:
        return len(self._bank)

    def __contains__(self, cache_id: object) -> bool:
        return cache_id in self._entries

    @property
    def ids(self) -> tuple[str, ...]:
        """Entry ids in the row order of :attr:`embeddings`."""
        with self._lock:
            return self._bank.ids

    @property
    def embeddings(self) -> torch.Tensor:
        """The in-memory ``[N,D]`` embedding matrix (a view; do not modify)."""
        with self._lock:
            return self._bank.embeddings

    def snapshot(self) -> tuple[tuple[str, ...], torch.Tensor]:
        """Ids and a copy of the embedding matrix (same layout), consistent with each other."""
        with self._lock:
            return self._bank.ids, self._bank.embeddings.clone()

    def entries(self) -> list[CacheEntry]:
        """All entries, oldest first."""
        with self._lock:
            return list(self._entries.values())

    def get(self, cache_id: str) -> CacheEntry:
        """The entry with this id (KeyError if absent)."""
        with self._lock:
            return self._entries[cache_id]

    def _tensor_path(self, cache_id: str) -> Path:
        return self.directory / TENSOR_DIR / f"{cache_id}.safetensors"

    def _image_path(self, cache_id: str) -> Path:
        return self.directory / IMAGE_DIR / f"{cache_id}.png"

    def _mismatch_error(self, detail: str) -> EmbeddingMismatchError:
        name = self.directory.name
        return EmbeddingMismatchError(
            f"cache '{name}' {detail}. Choose a new cache name (e.g. "
            f"'{name}_{self.strategy.name}') or the similarity model the cache was built with, or "
            f"delete {self.directory} to rebuild the cache from new keyframes with this one."
        )

    def add(
        self,
        embedding: torch.Tensor,
        *,
        latent: torch.Tensor | None = None,
        image: torch.Tensor | None = None,
        source: str = "keyframe",
        prompt: str = "",
        generation_params: Mapping[str, Any] | None = None,
    ) -> AddResult:
        """Store a frame, then evict down to the capacity.

        Args:
            embedding: ``[D]`` (or ``[1,D]``) embedding from :attr:`strategy`.
            latent: keyframe latent samples, stored as given (moved to the CPU).
            image: IMAGE ``[H,W,3]`` or ``[1,H,W,3]`` in 0..1, or uint8 frames of that shape, stored as PNG.
            source: what the frame is (``"keyframe"``, ``"midpoint"``, ``"seed"``...).
            prompt: its prompt.
            generation_params: JSON-able metadata.

        Raises:
            EmbeddingMismatchError: the embedding size differs from the cache's.
            CacheWriteError: a file could not be written. When the entry's own files
                fail, nothing changes; when only the index fails, the entry stays in
                memory and the index write is retried at the next change.
            TypeError: ``generation_params`` is not JSON-serialisable.
        """
        vector = embedding.detach().to("cpu", torch.float32).reshape(-1)
        if not bool(torch.isfinite(vector).all()):
            raise ValueError("embedding contains NaN or infinite values")
        params = dict(generation_params or {})
        json.dumps(params)
        with self._lock:
            dim = self._bank.dim
            if dim is not None and dim != vector.numel():
                raise self._mismatch_error(
                    f"holds {dim}-dim embeddings but strategy '{self.strategy.name}' produced "
                    f"{vector.numel()}-dim ones"
                )
            seq = self._next_seq
            entry = CacheEntry(
                cache_id=f"{seq:08d}-{uuid.uuid4().hex[:8]}",
                seq=seq,
                timestamp=datetime.now(timezone.utc).isoformat(),
                source=source,
                prompt=prompt,
                generation_params=params,
                has_image=image is not None,
                has_latent=latent is not None,
            )
            self._write_entry_files(entry, vector, latent, image)
            self._next_seq = seq + 1
            self._remember(entry)
            self._bank.add(entry.cache_id, vector, seq)
            evicted = self._evict_to(self._capacity)
            self._index_changed()
            return AddResult(entry, evicted)

    def _write_entry_files(
        self,
        entry: CacheEntry,
        vector: torch.Tensor,
        latent: torch.Tensor | None,
        image: torch.Tensor | None,
    ) -> None:
        tensors = {"embedding": vector.contiguous()}
        if latent is not None:
            tensors["latent"] = latent.detach().to("cpu").contiguous()
        metadata = {
            "format": INDEX_FORMAT,
            "strategy": self.strategy.name,
            "entry": json.dumps(entry.to_record()),
        }
        png = None
        if image is not None:
            pixels = image if image.dim() == 4 else image.unsqueeze(0)
            if pixels.shape[0] != 1:
                raise ValueError(f"expected one image, got a batch of {pixels.shape[0]}")
            png = encode_png(images_to_uint8(pixels)[0])
        written: list[Path] = []
        try:
            for path, data in (
                (self._tensor_path(entry.cache_id), save_safetensors(tensors, metadata)),
                (self._image_path(entry.cache_id), png),
            ):
                if data is not None:
                    atomic_write_bytes(path, data)
                    written.append(path)
        except OSError as error:
            for path in written:
                path.unlink(missing_ok=True)
            raise CacheWriteError(
                f"cannot write to cache folder '{self.directory}': {error}; {FOLDER_FIX}"
            ) from error

    def _remember(self, entry: CacheEntry) -> None:
        """Register an entry (entries are registered in increasing ``seq`` order)."""
        self._entries[entry.cache_id] = entry
        self._record_json[entry.cache_id] = json.dumps(
            entry.to_record(), ensure_ascii=False, separators=(",", ":")
        )

    def _forget(self, cache_id: str) -> None:
        """Unregister an entry; its files are deleted after the next index write."""
        del self._entries[cache_id]
        del self._record_json[cache_id]
        self._pending_deletes.append(cache_id)

    def _evict_to(self, capacity: int) -> tuple[str, ...]:
        evicted = []
        while len(self._bank) > capacity:
            victim = self._bank.victim()
            self._bank.remove(victim)
            self._forget(victim)
            evicted.append(victim)
        return tuple(evicted)

    def remove(self, cache_id: str) -> None:
        """Delete one entry and its files."""
        with self._lock:
            if cache_id not in self._entries:
                raise KeyError(cache_id)
            self._bank.remove(cache_id)
            self._forget(cache_id)
            self._index_changed()

    def set_capacity(self, capacity: int) -> tuple[str, ...]:
        """Change the capacity, evicting as needed; returns the evicted ids."""
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"cache capacity must be a positive integer, got {capacity!r}")
        with self._lock:
            self._capacity = capacity
            evicted = self._evict_to(capacity)
            if evicted:
                self._index_changed()
            return evicted

    def set_eviction(self, eviction: str) -> None:
        """Change the eviction policy; the next eviction (``set_capacity``, ``add``) uses it."""
        with self._lock:
            if eviction != self._bank.eviction:
                bank = self._bank
                self._fill_bank(eviction, bank.dim, list(bank.ids), bank.embeddings,
                                [bank.seq_of(entry_id) for entry_id in bank.ids])

    def _fill_bank(
        self, eviction: str, dim: int | None, ids: list[str], embeddings: torch.Tensor, seqs: list[int]
    ) -> None:
        """A new in-memory bank with this eviction policy, holding these entries."""
        bank = EmbeddingBank(self.strategy, eviction, dim=dim)
        if ids:
            bank.add_many(ids, embeddings, seqs)
        self._bank = bank

    def load_latent(self, cache_id: str) -> torch.Tensor:
        """The stored latent of an entry (LookupError if it has none)."""
        with self._lock:
            entry = self._entries[cache_id]
        if not entry.has_latent:
            raise LookupError(f"cache entry {cache_id} has no latent")
        with safe_open(str(self._tensor_path(cache_id)), framework="pt") as handle:
            return handle.get_tensor("latent")

    def load_image(self, cache_id: str) -> torch.Tensor:
        """The stored image as a ComfyUI IMAGE ``[1,H,W,3]`` float32 in 0..1."""
        with self._lock:
            entry = self._entries[cache_id]
        if not entry.has_image:
            raise LookupError(f"cache entry {cache_id} has no image")
        return load_image(self._image_path(cache_id))

    @contextmanager
    def batch(self) -> Iterator[CacheStore]:
        """Group mutations: the index is written once, when the outermost batch ends."""
        with self._lock:
            self._defer_depth += 1
            failed = False
            try:
                yield self
            except BaseException:
                failed = True
                raise
            finally:
                self._defer_depth -= 1
                if self._defer_depth == 0 and self._index_dirty:
                    try:
                        self._write_index()
                    except CacheWriteError:
                        if not failed:  # else the batch's own error says what happened; the index stays dirty
                            raise

    def _index_changed(self) -> None:
        self._index_dirty = True
        if self._defer_depth == 0:
            self._write_index()

    def _write_index(self) -> None:
        """Write the index; the entry records are serialised once, when registered."""
        header = {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "strategy": self.strategy.name,
            "embedding_dim": self._bank.dim,
            "next_seq": self._next_seq,
            "last_updated": datetime.now(timezone.utc).isoformat(),
            "entry_count": len(self._entries),
        }
        records = ",".join(self._record_json[cache_id] for cache_id in self._entries)
        head = json.dumps(header, ensure_ascii=False, separators=(",", ":"))
        data = f'{head[:-1]},"entries":[{records}]}}'.encode()
        try:
            atomic_write_bytes(self.directory / INDEX_FILE, data)
        except OSError as error:
            raise CacheWriteError(
                f"cannot write the index of cache folder '{self.directory}': {error}; {FOLDER_FIX}"
            ) from error
        self._index_dirty = False
        for cache_id in self._pending_deletes:
            self._tensor_path(cache_id).unlink(missing_ok=True)
            self._image_path(cache_id).unlink(missing_ok=True)
        self._pending_deletes.clear()

    def _read_index(self) -> tuple[list[Any], dict[str, Any]] | None:
        """Records and header of the index; None when it is missing or unreadable."""
        path = self.directory / INDEX_FILE
        if not path.exists():
            return None
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(document, dict) or document.get("format") != INDEX_FORMAT:
                raise ValueError("not a Dream Window cache index")
            if not isinstance(document.get("entries"), list):
                raise ValueError("index has no entry list")
            return document["entries"], document
        except (OSError, ValueError) as error:
            aside = path.with_name(f"{path.name}.corrupt-{uuid.uuid4().hex[:8]}")
            logger.error(
                "cache index '%s' is unreadable (%s); moved it to '%s' and rebuilding "
                "the index from the tensor files",
                path,
                error,
                aside.name,
            )
            try:
                path.replace(aside)
            except OSError:
                logger.error("could not move the unreadable index aside", exc_info=True)
            return None

    def _records_from_tensor_files(self) -> tuple[list[Any], list[SkippedEntry]]:
        """Entry records embedded in the tensor files (used when the index is lost)."""
        records: list[Any] = []
        skipped: list[SkippedEntry] = []
        for path in sorted((self.directory / TENSOR_DIR).glob("*.safetensors")):
            try:
                with safe_open(str(path), framework="pt") as handle:
                    metadata = handle.metadata() or {}
                if metadata.get("strategy") != self.strategy.name:
                    raise ValueError(f"built with strategy {metadata.get('strategy')!r}")
                records.append(json.loads(metadata["entry"]))
            except Exception as error:  # noqa: BLE001 - any unreadable file is skipped
                skipped.append(SkippedEntry(path.stem, f"cannot rebuild its record ({error})"))
        return records, skipped

    def _load(self) -> None:
        index = self._read_index()
        if index is None:
            records, skipped = self._records_from_tensor_files()
            header: Mapping[str, Any] = {}
            rebuilt = bool(records or skipped)
        else:
            records, header = index
            skipped = []
            rebuilt = False
        stored_strategy = header.get("strategy")
        stored_dim = header.get("embedding_dim")
        stored_dim = stored_dim if isinstance(stored_dim, int) and stored_dim > 0 else None
        if stored_strategy not in (None, self.strategy.name):
            raise self._mismatch_error(
                f"was built with strategy '{stored_strategy}' ({stored_dim}-dim embeddings) "
                f"but this workflow uses '{self.strategy.name}'"
            )
        loaded: list[tuple[CacheEntry, torch.Tensor]] = []
        seen: set[str] = set()
        for record in records:
            try:
                entry = CacheEntry.from_record(record)
                if entry.cache_id in seen:
                    raise ValueError("duplicate cache_id")
                vector = self._read_embedding(entry)
                if stored_dim is None:
                    stored_dim = vector.numel()
                if vector.numel() != stored_dim:
                    raise ValueError(f"embedding has {vector.numel()} dims, cache has {stored_dim}")
            except (ValueError, OSError) as error:
                cache_id = record.get("cache_id") if isinstance(record, dict) else None
                skipped.append(SkippedEntry(str(cache_id), str(error)))
                continue
            seen.add(entry.cache_id)
            loaded.append((entry, vector))
        loaded.sort(key=lambda item: item[0].seq)
        for entry, _ in loaded:
            self._remember(entry)
        self._fill_bank(
            self._bank.eviction,
            stored_dim,
            [entry.cache_id for entry, _ in loaded],
            torch.stack([vector for _, vector in loaded]) if loaded else torch.empty(0, 0),
            [entry.seq for entry, _ in loaded],
        )
        stored_next = header.get("next_seq")
        highest = max((entry.seq for entry, _ in loaded), default=-1)
        self._next_seq = max(highest + 1, stored_next if isinstance(stored_next, int) else 0)
        self.skipped = tuple(skipped)
        if rebuilt:
            logger.warning(
                "cache '%s': no readable index; rebuilt it from %d tensor files",
                self.directory,
                len(records),
            )
        if skipped:
            logger.warning(
                "cache '%s': skipped %d corrupt or incomplete entries (%s); %d entries loaded",
                self.directory,
                len(skipped),
                "; ".join(f"{item.cache_id}: {item.reason}" for item in skipped[:5])
                + (" ..." if len(skipped) > 5 else ""),
                len(loaded),
            )
        self._remove_strays()
        evicted = self._evict_to(self._capacity)
        if skipped or rebuilt or evicted:
            try:
                self._write_index()
            except CacheWriteError:
                logger.error(
                    "cache '%s': could not rewrite the index", self.directory, exc_info=True
                )

    def _remove_strays(self) -> None:
        """Delete what a crash left behind: entry files the index does not list (written just
        before a kill, never committed by an index write) and unfinished temp files."""
        stray = [path for sub, suffix in ((TENSOR_DIR, ".safetensors"), (IMAGE_DIR, ".png"))
                 for path in (self.directory / sub).iterdir()
                 if path.suffix == suffix and _ID_PATTERN.match(path.stem) and path.stem not in self._entries]
        for path in stray:
            path.unlink(missing_ok=True)
        skipped = {item.cache_id for item in self.skipped}  # already reported, in one message
        unreported = sum(path.stem not in skipped for path in stray) + sum(
            remove_stale_temps(self.directory / sub) for sub in (TENSOR_DIR, IMAGE_DIR, INDEX_FILE.parent))
        if unreported:
            logger.warning("cache '%s': removed %d files no index entry owns (left by an interrupted write)",
                           self.directory, unreported)

    def _read_embedding(self, entry: CacheEntry) -> torch.Tensor:
        """Read and check an entry's files; raises ValueError/OSError when unusable."""
        path = self._tensor_path(entry.cache_id)
        if not path.is_file():
            raise ValueError("tensor file is missing")
        try:
            with safe_open(str(path), framework="pt") as handle:
                keys = set(handle.keys())
                if "embedding" not in keys or (entry.has_latent and "latent" not in keys):
                    raise ValueError("tensor file lacks the embedding or the latent")
                vector = handle.get_tensor("embedding").to(torch.float32).reshape(-1)
        except ValueError:
            raise
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error type
            raise ValueError(f"tensor file is unreadable ({error})") from error
        if vector.numel() == 0 or not bool(torch.isfinite(vector).all()):
            raise ValueError("embedding is empty or not finite")
        if entry.has_image:
            image_path = self._image_path(entry.cache_id)
            if not image_path.is_file():
                raise ValueError("image file is missing")
            try:
                with Image.open(image_path) as image:
                    image.verify()
            except Exception as error:  # noqa: BLE001 - PIL raises many error types
                raise ValueError(f"image file is corrupt ({error})") from error
        return vector


__all__ = [
    "DEFAULT_CAPACITY",
    "EVICTION_POLICIES",
    "REDUNDANCY_TIE_TOLERANCE",
    "AddResult",
    "CacheEntry",
    "CacheStore",
    "CacheStoreError",
    "CacheWriteError",
    "EmbeddingBank",
    "EmbeddingMismatchError",
    "SkippedEntry",
]
