"""The recovery pieces the end-to-end fault tests rely on, checked in-process (no server)."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from core import atomic_files
from core.cache.similarity import get_strategy
from core.cache.store import CacheStore
from core.loop.session import SessionError, SessionRegistry
from core.loop.supervisor import Supervisor
from helpers.asyncrun import run_isolated


def test_fault_rules_match_patterns_and_count_hits(monkeypatch):
    monkeypatch.setenv(atomic_files.FAULT_ENV, "before_replace:????????-????????.safetensors:enospc@3")
    atomic_files.fault_point("before_replace:latents-00000001.safetensors")  # not a cache tensor name
    atomic_files.fault_point("before_replace:00000001-abcdef12.safetensors")
    atomic_files.fault_point("before_replace:00000002-abcdef12.safetensors")
    for _ in range(2):  # from the third hit on
        with pytest.raises(OSError, match="No space left"):
            atomic_files.fault_point("before_replace:00000003-abcdef12.safetensors")
    monkeypatch.setenv(atomic_files.FAULT_ENV, "after_replace:state.json:enospc")  # a new rule counts afresh
    with pytest.raises(OSError):
        atomic_files.fault_point("after_replace:state.json")


def test_a_fault_scope_names_the_points_reached_inside_it(monkeypatch):
    monkeypatch.setenv(atomic_files.FAULT_ENV, "commit:before_replace:state.json:enospc")
    atomic_files.fault_point("before_replace:state.json")  # another thread's write of the same file
    with atomic_files.fault_scope("commit"):
        with pytest.raises(OSError, match="No space left"):
            atomic_files.fault_point("before_replace:state.json")
    atomic_files.fault_point("before_replace:state.json")


def test_loading_a_session_removes_temp_files_and_refuses_links(tmp_path):
    registry = SessionRegistry(tmp_path)
    session = registry.get("s", create=True)
    session.commit_keyframe(torch.ones(1, 4, 8, 8), 1, 1, {})
    for leftover in (".state.json.ab12.tmp", ".latents-00000002.safetensors.cd34.tmp", ".current_frame.png.99.lnk"):
        (session.folder / leftover).write_bytes(b"partial")
    (session.folder / "frames").mkdir()
    (session.folder / "frames" / ".frame_00000002.png.ef56.tmp").write_bytes(b"partial")
    reloaded = SessionRegistry(tmp_path).get("s")
    assert reloaded.iteration == 1
    assert sorted(p.name for p in session.folder.rglob(".*")) == []
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"iteration": 9, "error": {"message": "secret"}}))
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "state.json").symlink_to(outside)
    with pytest.raises(SessionError, match="is a link; remove it"):
        SessionRegistry(tmp_path).get("linked")
    data = json.loads((session.folder / "state.json").read_text())
    data["latents_file"] = "../outside.json"
    (session.folder / "state.json").write_text(json.dumps(data))
    with pytest.raises(SessionError, match="not a latents file of the session folder"):
        SessionRegistry(tmp_path).get("s")


def test_a_failed_commit_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    session = SessionRegistry(tmp_path).get("s", create=True)
    session.commit_keyframe(torch.ones(1, 4, 8, 8), 1, 1, {})
    before = {p.name: p.read_bytes() for p in session.folder.iterdir()}
    monkeypatch.setenv(atomic_files.FAULT_ENV, "before_replace:state.json:enospc")
    with pytest.raises(OSError):
        session.commit_keyframe(torch.zeros(1, 4, 8, 8), 2, 11, {})
    assert {p.name: p.read_bytes() for p in session.folder.iterdir()} == before
    assert session.iteration == 1


def test_a_cache_loads_without_the_files_a_crash_left(tmp_path):
    strategy = get_strategy("latent_pool")
    store = CacheStore(tmp_path, strategy, capacity=4)
    kept = store.add(strategy.embed(latents=torch.rand(1, 4, 8, 8))[0], latent=torch.rand(1, 4, 8, 8)).entry.cache_id
    orphan = tmp_path / "tensors" / "00000007-0badf00d.safetensors"
    orphan.write_bytes((tmp_path / "tensors" / f"{kept}.safetensors").read_bytes())  # written, never indexed
    (tmp_path / "tensors" / ".00000008-0badf00d.safetensors.x1.tmp").write_bytes(b"partial")
    (tmp_path / "metadata" / ".cache_index.json.x2.tmp").write_bytes(b"{")
    reopened = CacheStore(tmp_path, strategy, capacity=4)
    assert reopened.ids == (kept,)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        ["cache_index.json", f"{kept}.safetensors"])


class FullDiskBackend:
    """A server whose every prompt fails (as a commit on a full disk does)."""

    def __init__(self):
        self.queued: list[str] = []

    def prompt_result(self, prompt_id):
        return ("error", {"node_id": "9", "node_type": "DreamWindowCommit", "message": "no space"})

    def session_queued(self, session):
        return False

    def prompt_queued(self, prompt_id):
        return False

    async def queue_prompt(self, prompt, client_id, prompt_id, extra_pnginfo):
        self.queued.append(prompt_id)

    def delete_history(self, prompt_id):
        pass


def test_the_supervisor_retries_and_pauses_when_state_json_cannot_be_written(tmp_path, monkeypatch, caplog):
    import core.loop.supervisor as supervisor

    monkeypatch.setattr(supervisor, "BACKOFF_BASE", 0.001)
    session = SessionRegistry(tmp_path).get("s", create=True)
    session.prompt = {"4": {"class_type": "DreamWindowSession", "inputs": {"name": "s"}}}
    on_disk = (session.folder / "state.json").read_bytes()
    monkeypatch.setenv(atomic_files.FAULT_ENV, "before_replace:state.json:enospc")
    backend = FullDiskBackend()
    sup = Supervisor(session, backend)

    async def run():
        await sup.start()
        for _ in range(2000):
            if session.state == "paused":
                return
            await asyncio.sleep(0.001)

    run_isolated(run())
    assert session.state == "paused" and len(backend.queued) == 4 and session.error["retries"] == 3
    assert (session.folder / "state.json").read_bytes() == on_disk
    messages = [r.getMessage() for r in caplog.records]
    assert sum("iteration failed (node 9 DreamWindowCommit: no space)" in m for m in messages) == 3
    assert any("cannot save" in m and "free disk space" in m for m in messages)
