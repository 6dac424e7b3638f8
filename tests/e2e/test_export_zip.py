"""The session export as a zip (frames + state), streamed from disk: a session larger than the
memory it may use downloads whole while the server's peak memory stays bounded."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import urllib.request
import zipfile

import pytest

from helpers.dream_loop import dream_workflow

pytestmark = pytest.mark.e2e

SESSION = "export_zip"
PADDING_FRAMES = 96
FRAME_BYTES = 2 * 1024 * 1024
MEMORY_LIMIT = 48 * 1024 * 1024
"""Peak RSS growth the server may show while it serves a session of PADDING_FRAMES x FRAME_BYTES (192 MiB)."""


def vm_kib(pid: int, key: str) -> int:
    status = open(f"/proc/{pid}/status").read()
    return int(re.search(rf"^{key}:\s+(\d+) kB", status, re.M).group(1))


@pytest.fixture(scope="module")
def big_session(comfy):
    """A real two-keyframe session, then made larger than MEMORY_LIMIT with frames written after its own."""
    wf = dream_workflow(SESSION)
    wf["10"]["inputs"]["max_iterations"] = 2
    comfy.queue(wf)
    comfy.wait_for(lambda: (s := comfy.session(SESSION)) and s["iteration"] >= 2 and s["state"] != "running"
                   and not comfy.get("/queue")["queue_running"], timeout=120, what=f"{SESSION} to finish 2 iterations")
    folder = comfy.base / "output" / "dream_window" / SESSION
    frames = folder / "frames"
    comfy.wait_for(lambda: (frames / f"frame_{comfy.session(SESSION)['frames']:08d}.png").exists(), timeout=30,
                   what="the loop's frames on disk")
    made = sorted(p.name for p in frames.glob("frame_*.png"))
    first_padding = int(made[-1][6:14]) + 1
    for index in range(first_padding, first_padding + PADDING_FRAMES):
        (frames / f"frame_{index:08d}.png").write_bytes(os.urandom(FRAME_BYTES))
    yield folder
    comfy.post_json("/dream_window/delete", {"session": SESSION})


def test_zip_export_streams_a_session_larger_than_the_memory_limit(comfy, big_session):
    frames = sorted(big_session.glob("frames/frame_*.png"))
    state = json.loads((big_session / "state.json").read_text())
    assert state["latents_file"] and sum(p.stat().st_size for p in frames) > 3 * MEMORY_LIMIT
    pid = comfy.proc.pid
    with open(f"/proc/{pid}/clear_refs", "w") as refs:
        refs.write("5")  # the peak RSS (VmHWM) starts again from the current RSS
    before = vm_kib(pid, "VmHWM")
    target = io.BytesIO()  # the bound is on the server's memory; the download stays off the disk
    request = urllib.request.Request(f"{comfy.url}/dream_window/export", method="POST",
                                     data=json.dumps({"session": SESSION, "format": "zip"}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200 and response.headers["Content-Type"] == "application/zip"
        assert response.headers["Content-Disposition"] == f'attachment; filename="{SESSION}.zip"'
        assert response.headers.get("Content-Length") is None, "streamed, not built in memory first"
        assert int(response.headers["X-Dream-Window-Frames"]) == len(frames)
        shutil.copyfileobj(response, target, 1024 * 1024)
    growth = (vm_kib(pid, "VmHWM") - before) * 1024
    assert growth < MEMORY_LIMIT, f"the server's peak RSS grew by {growth / 2**20:.0f} MiB during the export"
    with zipfile.ZipFile(target) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        assert names == ["state.json", state["latents_file"], *(f"frames/{p.name}" for p in frames)]
        assert json.loads(archive.read("state.json")) == state
        assert archive.read(state["latents_file"]) == (big_session / state["latents_file"]).read_bytes()
        for path in frames[:3] + frames[-3:]:
            assert archive.read(f"frames/{path.name}") == path.read_bytes()
        assert all(archive.getinfo(f"frames/{p.name}").file_size == p.stat().st_size for p in frames)


def test_zip_export_of_a_range_holds_those_frames(comfy, big_session):
    frames = sorted(big_session.glob("frames/frame_*.png"))
    first, last = (int(p.name[6:14]) for p in (frames[1], frames[3]))
    status, body, headers = comfy.request("POST", "/dream_window/export",
                                          json.dumps({"session": SESSION, "format": "zip", "first": first,
                                                      "last": last}).encode(), {"Content-Type": "application/json"})
    assert status == 200 and headers["X-Dream-Window-Frames"] == "3"
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert [n for n in archive.namelist() if n.startswith("frames/")] == [f"frames/{p.name}" for p in frames[1:4]]


def test_a_download_left_halfway_frees_the_export(comfy, big_session):
    """A client that closes the connection mid-zip ends that export; the server goes on serving."""
    log_start = comfy.log_path.stat().st_size
    request = urllib.request.Request(f"{comfy.url}/dream_window/export", method="POST",
                                     data=json.dumps({"session": SESSION, "format": "zip"}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert len(response.read(4 * 1024 * 1024)) == 4 * 1024 * 1024
    status, body, _ = comfy.request("POST", "/dream_window/export",
                                    json.dumps({"session": SESSION, "format": "zip", "last": 1}).encode(),
                                    {"Content-Type": "application/json"})
    assert status == 200 and zipfile.ZipFile(io.BytesIO(body)).testzip() is None
    log = comfy.log_path.read_bytes()[log_start:].decode(errors="replace")
    assert "Traceback" not in log and f"dream_window[{SESSION}]" not in log, log
