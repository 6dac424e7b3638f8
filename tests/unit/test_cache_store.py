"""Cache store: round trip, unique ids, atomic writes, eviction order (FIFO and
redundancy), corrupt-entry recovery, embedding mismatch, unwritable folders, and
10,000 entries."""

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from core.cache import similarity
from core.cache import store as cs

INDEX = "metadata/cache_index.json"


@pytest.fixture
def pool():
    return similarity.get_strategy("latent_pool")


def unit(*values):
    v = torch.tensor(values, dtype=torch.float32)
    return v / v.norm()


def image(seed, height=24, width=40):
    return torch.rand(1, height, width, 3, generator=torch.Generator().manual_seed(seed))


def filled(directory, strategy, count, **kw):
    store = cs.CacheStore(directory, strategy, **kw)
    g = torch.Generator().manual_seed(0)
    for i in range(count):
        latent = torch.randn(1, 4, 8, 8, generator=g)
        store.add(
            strategy.embed_latents(latent)[0],
            latent=latent,
            image=image(i),
            prompt=f"prompt {i}",
            generation_params={"denoise": 0.2, "i": i},
        )
    return store


def test_round_trip(tmp_path, pool):
    store = filled(tmp_path, pool, 4)
    reopened = cs.CacheStore(tmp_path, pool)
    assert reopened.ids == store.ids and reopened.skipped == ()
    assert reopened.embeddings.shape[1] == 64 and len(reopened) == 4 and store.ids[0] in reopened
    torch.testing.assert_close(reopened.embeddings, store.embeddings)
    ids, matrix = reopened.snapshot()
    torch.testing.assert_close(matrix, store.embeddings)
    matrix.zero_()  # a copy: the store is unaffected
    assert ids == store.ids and reopened.embeddings.abs().sum() > 0
    assert reopened.entries() == store.entries()
    first = store.entries()[0]
    assert (first.prompt, first.generation_params, first.source) == (
        "prompt 0",
        {"denoise": 0.2, "i": 0},
        "keyframe",
    )
    torch.testing.assert_close(
        reopened.load_latent(first.cache_id),
        torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)),
    )
    expected_pixels = np.clip(255.0 * image(0).numpy(), 0, 255).astype(np.uint8) / 255.0
    np.testing.assert_allclose(
        reopened.load_image(first.cache_id).numpy(), expected_pixels, atol=1e-6
    )
    document = json.loads((tmp_path / INDEX).read_text())
    assert document["entry_count"] == 4 and document["strategy"] == "latent_pool"
    assert document["embedding_dim"] == 64
    assert [e["cache_id"] for e in document["entries"]] == [e.cache_id for e in store.entries()]
    assert document["entries"][0]["image_path"] == f"images/{first.cache_id}.png"
    later = reopened.add(unit(*range(1, 65)))
    assert later.entry.seq == 4  # the sequence continues across restarts


def test_entries_without_image_or_latent(tmp_path, pool):
    store = cs.CacheStore(tmp_path, pool)
    entry = store.add(unit(1, 2, 3), source="midpoint").entry
    assert not entry.has_image and not entry.has_latent
    with pytest.raises(LookupError):
        store.load_latent(entry.cache_id)
    with pytest.raises(LookupError):
        store.load_image(entry.cache_id)
    assert cs.CacheStore(tmp_path, pool).get(entry.cache_id).source == "midpoint"


def test_ids_are_unique_under_fast_adds_at_capacity(tmp_path, pool):
    store = cs.CacheStore(tmp_path, pool, capacity=5)
    ids = [store.add(unit(1, i + 1)).entry.cache_id for i in range(200)]
    assert len(set(ids)) == 200  # ids made within one second stay unique
    assert len(store) == 5 and len(os.listdir(tmp_path / "tensors")) == 5


def test_writes_are_atomic_and_fsynced(tmp_path, pool, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    store = cs.CacheStore(tmp_path, pool)
    store.add(unit(1, 2), image=image(1))
    assert len(synced) == 3  # tensor file, image, index
    before = (tmp_path / INDEX).read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(cs.CacheWriteError, match="cannot write to cache folder"):
        store.add(unit(2, 1), image=image(2))
    assert (tmp_path / INDEX).read_bytes() == before
    assert len(store) == 1
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_a_failed_write_in_a_batch_is_the_error_reported(tmp_path, pool, monkeypatch):
    """When an entry's write fails inside a batch whose index was already changed, the index write at
    the batch's end fails too: the error raised is still the entry's, the one that says what happened."""
    store = cs.CacheStore(tmp_path, pool, capacity=1)
    store.add(unit(1, 2))

    def failing_replace(src, dst):
        raise OSError("disk full")

    with pytest.raises(cs.CacheWriteError, match="cannot write to cache folder"):
        with store.batch():
            store.add(unit(2, 1))  # evicts the first entry: the index is dirty
            monkeypatch.setattr(os, "replace", failing_replace)
            store.add(unit(3, 1))


def test_fifo_evicts_oldest_insertion_first(tmp_path, pool):
    store = cs.CacheStore(tmp_path, pool, capacity=3)
    added = [store.add(unit(1, i + 1, 0)).entry.cache_id for i in range(3)]
    results = [store.add(unit(0, 1, i + 1)) for i in range(2)]
    assert [r.evicted for r in results] == [(added[0],), (added[1],)]
    assert set(store.ids) == {added[2], results[0].entry.cache_id, results[1].entry.cache_id}
    assert not (tmp_path / "tensors" / f"{added[0]}.safetensors").exists()
    assert set(cs.CacheStore(tmp_path, pool, capacity=3).ids) == set(store.ids)
    assert store.set_capacity(1) == (added[2], results[0].entry.cache_id)


def test_redundancy_evicts_the_entry_most_similar_to_another(tmp_path, pool):
    store = cs.CacheStore(tmp_path, pool, capacity=3, eviction="redundancy")
    a = store.add(unit(1, 0, 0)).entry.cache_id
    b = store.add(unit(0.98, 0.2, 0)).entry.cache_id  # close to a
    c = store.add(unit(0, 0, 1)).entry.cache_id
    result = store.add(unit(0, 1, 0))
    assert result.evicted == (b,)  # a and b tie as most redundant: the newer goes
    assert set(store.ids) == {a, c, result.entry.cache_id}
    duplicate = store.add(unit(0, 0, 1))  # an exact duplicate of c: it is the newer of the pair
    assert duplicate.evicted == (duplicate.entry.cache_id,) and not duplicate.kept


def brute_force_victim(embeddings, seqs, strategy):
    sims = strategy.similarity_matrix(embeddings, embeddings).numpy().astype(np.float64)
    np.fill_diagonal(sims, -np.inf)
    redundancy = sims.max(axis=1)
    top = redundancy.max()
    tied = np.flatnonzero(redundancy >= top - cs.REDUNDANCY_TIE_TOLERANCE * max(1.0, abs(top)))
    return tied[np.argmax(np.asarray(seqs)[tied])]


@pytest.mark.parametrize("strategy_name", ["latent_pool", "dual_metric"])
def test_redundancy_matches_brute_force_over_many_evictions(strategy_name):
    strategy = similarity.get_strategy(strategy_name)
    rng = np.random.default_rng(4)
    if strategy_name == "dual_metric":
        colors = rng.random((120, 96))
        colors /= colors.reshape(120, 3, 32).sum(-1).repeat(32, axis=1)
        data = torch.tensor(np.hstack([colors, rng.random((120, 64)) > 0.5]), dtype=torch.float32)
    else:
        data = torch.nn.functional.normalize(torch.tensor(rng.normal(size=(120, 6))), dim=1)
        data = data.to(torch.float32)
    bank = cs.EmbeddingBank(strategy, "redundancy")
    for i in range(120):
        bank.add(f"e{i}", data[i], i)
        if len(bank) > 25:
            seqs = [bank.seq_of(entry_id) for entry_id in bank.ids]
            expected = bank.ids[brute_force_victim(bank.embeddings, seqs, strategy)]
            victim = bank.victim()
            assert victim == expected
            bank.remove(victim)
        if i % 17 == 0 and len(bank) > 3:
            bank.remove(bank.ids[1])  # arbitrary removals keep the bookkeeping honest


def test_corrupt_entries_are_skipped_and_logged_once(tmp_path, pool, caplog):
    store = filled(tmp_path, pool, 6)
    ids = [e.cache_id for e in store.entries()]
    truncated = tmp_path / "tensors" / f"{ids[0]}.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:-40])
    (tmp_path / "images" / f"{ids[1]}.png").unlink()
    corrupt_png = tmp_path / "images" / f"{ids[2]}.png"
    corrupt_png.write_bytes(corrupt_png.read_bytes()[:60])
    document = json.loads((tmp_path / INDEX).read_text())
    del document["entries"][3]["prompt"]
    document["entries"].append("not an entry")
    (tmp_path / INDEX).write_text(json.dumps(document))
    with caplog.at_level(logging.WARNING, logger="core.cache.store"):
        reopened = cs.CacheStore(tmp_path, pool)
    assert set(reopened.ids) == set(ids[4:])
    reasons = {s.cache_id: s.reason for s in reopened.skipped}
    assert set(reasons) == {ids[0], ids[1], ids[2], ids[3], "None"}
    assert "unreadable" in reasons[ids[0]] and "missing" in reasons[ids[1]]
    assert "corrupt" in reasons[ids[2]] and "prompt" in reasons[ids[3]]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 5" in warnings[0].getMessage()
    torch.testing.assert_close(reopened.embeddings, store.embeddings[4:])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="core.cache.store"):
        again = cs.CacheStore(tmp_path, pool)  # the index was rewritten without them
    assert again.skipped == () and caplog.records == [] and set(again.ids) == set(ids[4:])


def test_unreadable_index_is_rebuilt_from_the_tensor_files(tmp_path, pool, caplog):
    store = filled(tmp_path, pool, 3)
    (tmp_path / INDEX).write_text('{"format": "dream_window.cache", "entries": [')
    with caplog.at_level(logging.WARNING, logger="core.cache.store"):
        reopened = cs.CacheStore(tmp_path, pool)
    assert reopened.entries() == store.entries()
    assert any("rebuilt" in r.getMessage() for r in caplog.records)
    assert list((tmp_path / "metadata").glob("cache_index.json.corrupt-*"))
    assert json.loads((tmp_path / INDEX).read_text())["entry_count"] == 3


def test_embedding_mismatch_offers_a_new_cache_name(tmp_path, pool):
    store = cs.CacheStore(tmp_path / "dreams", pool)
    store.add(unit(*range(1, 65)))
    with pytest.raises(cs.EmbeddingMismatchError, match="new cache name") as error:
        store.add(unit(1, 2, 3))
    assert "64-dim" in str(error.value) and "dreams_latent_pool" in str(error.value)
    dual = similarity.get_strategy("dual_metric")
    with pytest.raises(cs.EmbeddingMismatchError, match="dreams_dual_metric") as error:
        cs.CacheStore(tmp_path / "dreams", dual)
    assert f"delete {tmp_path / 'dreams'} to rebuild" in str(error.value)


def test_a_new_eviction_policy_applies_to_the_next_eviction(tmp_path, pool):
    store = filled(tmp_path / "fifo", pool, 8, capacity=8)
    built = filled(tmp_path / "redundancy", pool, 8, capacity=8, eviction="redundancy")  # the same embeddings
    store.set_eviction("redundancy")
    assert store.eviction == "redundancy"
    store.set_capacity(3)
    built.set_capacity(3)
    kept = sorted(entry.seq for entry in store.entries())
    assert kept == sorted(entry.seq for entry in built.entries()) and kept != [5, 6, 7], "not FIFO's choice"
    assert cs.CacheStore(tmp_path / "fifo", pool).ids == store.ids
    store.set_eviction("fifo")
    store.add(unit(*range(1, 65)))
    assert sorted(entry.seq for entry in store.entries()) == kept[1:] + [8], "FIFO evicts the oldest again"
    with pytest.raises(ValueError, match="unknown eviction policy"):
        store.set_eviction("lru")


def test_unwritable_folder_is_a_clear_error(tmp_path, pool):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(cs.CacheWriteError, match="cannot create cache folder"):
        cs.CacheStore(blocker / "cache", pool)
    store = cs.CacheStore(tmp_path / "cache", pool)
    (tmp_path / "cache" / "tensors").rmdir()
    (tmp_path / "cache" / "tensors").write_text("not a folder")
    with pytest.raises(cs.CacheWriteError, match="cannot write"):
        store.add(unit(1, 2))
    assert len(store) == 0


def test_bad_arguments_are_refused(tmp_path, pool):
    with pytest.raises(ValueError, match="capacity"):
        cs.CacheStore(tmp_path, pool, capacity=0)
    with pytest.raises(ValueError, match="eviction"):
        cs.CacheStore(tmp_path, pool, eviction="lru")
    store = cs.CacheStore(tmp_path, pool)
    with pytest.raises(ValueError, match="NaN"):
        store.add(torch.tensor([float("nan"), 1.0]))
    with pytest.raises(TypeError):
        store.add(unit(1, 2), generation_params={"x": object()})


def test_bank_of_10000_entries_evicts_in_order():
    strategy = similarity.get_strategy("latent_pool")
    rng = np.random.default_rng(0)
    data = torch.nn.functional.normalize(torch.tensor(rng.normal(size=(10_000, 8))), dim=1)
    data = data.to(torch.float32)
    data[7_777] = data[1_234]  # one exact duplicate pair
    ids = [f"e{i}" for i in range(10_000)]
    fifo = cs.EmbeddingBank(strategy, "fifo")
    fifo.add_many(ids, data, list(range(10_000)))
    for expected in ("e0", "e1", "e2"):
        assert fifo.victim() == expected
        fifo.remove(expected)
    redundancy = cs.EmbeddingBank(strategy, "redundancy")
    redundancy.add_many(ids, data, list(range(10_000)))
    assert redundancy.victim() == "e7777"  # the newer of the duplicate pair
    redundancy.remove("e7777")
    assert redundancy.redundancy("e1234") < 1.0 - 1e-6
    seqs = [redundancy.seq_of(i) for i in redundancy.ids]
    stored = redundancy.embeddings
    best = torch.full((len(seqs),), -2.0)
    for chunk in torch.arange(len(seqs)).split(2_000):
        sims = stored[chunk] @ stored.T
        sims[torch.arange(len(chunk)), chunk] = -2.0
        best[chunk] = sims.max(dim=1).values
    top = best.max().item()
    tied = torch.nonzero(best >= top - cs.REDUNDANCY_TIE_TOLERANCE * max(1.0, abs(top))).flatten()
    expected = redundancy.ids[int(tied[torch.argmax(torch.tensor(seqs)[tied])])]
    assert redundancy.victim() == expected


@pytest.fixture
def fast_dir(tmp_path):
    """A folder in RAM (/dev/shm) where there is one: this test is about 10,000 entries,
    not about a busy disk; falls back to tmp_path."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="dw-cache-test-", dir=shm))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_store_with_10000_entries(fast_dir, pool, monkeypatch):
    tmp_path = fast_dir
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # 10,000 files: skip the disk flushes
    vectors = torch.nn.functional.normalize(
        torch.randn(10_050, 8, generator=torch.Generator().manual_seed(1)), dim=1
    )
    store = cs.CacheStore(tmp_path, pool, capacity=10_000)
    with store.batch():
        added = [store.add(vector).entry.cache_id for vector in vectors]
    assert len(store) == 10_000 and set(store.ids) == set(added[50:])
    reopened = cs.CacheStore(tmp_path, pool, capacity=10_000, eviction="redundancy")
    assert len(reopened) == 10_000 and reopened.skipped == ()
    result = reopened.add(vectors[60])  # a duplicate of a stored entry: the most redundant, newest
    assert result.evicted == (result.entry.cache_id,)
    assert json.loads((tmp_path / INDEX).read_text())["entry_count"] == 10_000
