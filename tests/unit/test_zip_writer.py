"""The session zip written to a non-seekable sink: contents, links and deleted frames, chunk sizes."""

from __future__ import annotations

import io
import json
import threading
import zipfile

import pytest

from core.window.export import ZIP_CHUNK, write_session_zip


def make_session(tmp_path, frames: int = 4):
    folder = tmp_path / "s"
    (folder / "frames").mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({"latents_file": "latents-00000002.safetensors", "iteration": 2}))
    (folder / "latents-00000002.safetensors").write_bytes(b"L" * 1000)
    (folder / "latents-00000001.safetensors").write_bytes(b"old")  # stale: not named by state.json
    paths = []
    for index in range(1, frames + 1):
        path = folder / "frames" / f"frame_{index:08d}.png"
        path.write_bytes(bytes([index]) * (ZIP_CHUNK + 17 * index))
        paths.append(path)
    return folder, paths


def test_the_zip_holds_state_latents_and_frames_in_order(tmp_path):
    folder, paths = make_session(tmp_path)
    chunks = []
    written = write_session_zip(folder, paths, chunks.append, threading.RLock())
    assert written == len(paths)
    assert max(len(c) for c in chunks) < 2 * ZIP_CHUNK, "handed over in bounded chunks"
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == ["state.json", "latents-00000002.safetensors",
                                      *(f"frames/{p.name}" for p in paths)]
        assert all(archive.read(f"frames/{p.name}") == p.read_bytes() for p in paths)
        assert all(i.compress_type == zipfile.ZIP_STORED for i in archive.infolist())


def test_deleted_frames_and_links_are_left_out(tmp_path):
    folder, paths = make_session(tmp_path)
    paths[1].unlink()
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"secret")
    paths[2].unlink()
    paths[2].symlink_to(outside)
    chunks = []
    assert write_session_zip(folder, paths, chunks.append) == 2
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as archive:
        assert [n for n in archive.namelist() if n.startswith("frames/")] == [f"frames/{paths[0].name}",
                                                                               f"frames/{paths[3].name}"]
        assert b"secret" not in b"".join(archive.read(n) for n in archive.namelist())


def test_a_latents_name_outside_the_pattern_is_not_read(tmp_path):
    folder, paths = make_session(tmp_path, frames=1)
    (folder / "state.json").write_text(json.dumps({"latents_file": "../secret"}))
    chunks = []
    write_session_zip(folder, paths, chunks.append)
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as archive:
        assert archive.namelist() == ["state.json", f"frames/{paths[0].name}"]


def test_a_state_json_link_is_not_followed(tmp_path):
    folder, paths = make_session(tmp_path, frames=1)
    outside = tmp_path / "secret.json"
    outside.write_text('{"secret": 1}')
    (folder / "state.json").unlink()
    (folder / "state.json").symlink_to(outside)
    chunks = []
    with pytest.raises(OSError):
        write_session_zip(folder, paths, chunks.append)
    assert b"secret" not in b"".join(chunks)
