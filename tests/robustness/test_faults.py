"""SIGKILL in the middle of the loop, a full disk: nothing committed is lost, nothing is half written.

One server on its own base folder is killed over and over: at the fault points chosen with
``DREAM_WINDOW_FAULT`` (just before and just after the ``os.replace`` of ``state.json``, the
``latents-*.safetensors`` file, the cache index, a cache tensor file and ``status.json``, and inside
the asynchronous commit on the frame writer: after a keyframe's frames, after its ``state.json``) and
at random moments of a running iteration. After each kill every file is checked (the old or
the new complete version), the server is started again and ``POST /dream_window/start``
resumes the loop: its first sampler input (captured with core SaveLatent) must equal the
keyframe committed before the kill, or the one before it when the last committed keyframe's frames
never reached the disk (the session then redoes that pair under the same frame numbers).

A restart costs 7-15 s here (ComfyUI start and model load), so the number of kills is a
parameter: ``DW_FAULT_KILLS`` (default 20: about 150 s on two idle cores). The first kill hits
the loop the fixture started, wherever it is; the others are taken in ``SCHEDULE`` order: 15
kills cover every fault point once, 20 add five more random kills (seven random in all).
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from helpers.dream_loop import TEST_PACKS, dream_workflow, resume_point
from tools.harness.comfy_process import ComfyServer

pytestmark = pytest.mark.e2e

FAULT_ENV = "DREAM_WINDOW_FAULT"
KILLS = int(os.environ.get("DW_FAULT_KILLS", "20"))
SESSION = "crashy"
CAPTURE = "cap_crashy"
CACHE_TENSOR = "????????-????????.safetensors"
"""``fnmatch`` pattern of a cache tensor file name (``<seq>-<uuid8>``); never matches ``latents-*``."""
FRAMES_PER_ITERATION = 11


def frames_formula(k: int) -> int:
    return 1 + (k - 1) * FRAMES_PER_ITERATION


@dataclass(frozen=True)
class Folders:
    base: Path

    @property
    def session(self) -> Path:
        return self.base / "output" / "dream_window" / SESSION

    @property
    def cache(self) -> Path:
        return self.base / "output" / "dream_window_cache" / SESSION

    @property
    def index(self) -> Path:
        return self.cache / "metadata" / "cache_index.json"

    def state(self) -> dict:
        return json.loads((self.session / "state.json").read_text())

    def captures(self) -> list[Path]:
        return sorted((self.base / "output" / CAPTURE).glob("src_*.latent"))


def temps(folder: Path, stem: str) -> list[Path]:
    """Temp files ``atomic_write`` left for a target matching ``stem`` (a glob)."""
    return sorted(folder.glob(f".{stem}.*.tmp"))


# -- what the files must look like after any kill --

def check_files(f: Folders) -> None:
    """Every state and cache file is a complete version: JSON parses, safetensors load, images decode,
    and every index entry's files exist."""
    state = f.state()
    recent = load_file(str(f.session / state["latents_file"]))
    assert any(key.startswith("recent_") for key in recent)
    for path in f.session.glob("latents-*.safetensors"):
        load_file(str(path))
    if (f.session / "status.json").exists():
        json.loads((f.session / "status.json").read_text())
    if not f.index.exists():
        return
    index = json.loads(f.index.read_text())
    for entry in index["entries"]:
        tensors = load_file(str(f.cache / "tensors" / f"{entry['cache_id']}.safetensors"))
        assert "embedding" in tensors and ("latent" in tensors) == entry["has_latent"], entry["cache_id"]
        if entry["image_path"]:
            with Image.open(f.cache / entry["image_path"]) as image:
                image.load()
    for path in (f.cache / "tensors").glob("*.safetensors"):
        load_file(str(path))  # a file not (yet) in the index is the complete new version


def index_ids(f: Folders) -> set[str]:
    return {entry["cache_id"] for entry in json.loads(f.index.read_text())["entries"]}


# -- evidence that a fault-point kill came where it was asked for (k: the keyframe committed before) --

def state_before(f: Folders, k: int, started: float) -> None:
    assert f.state()["iteration"] == k + 1
    pending = temps(f.session, "state.json")
    assert pending and json.loads(pending[-1].read_text())["iteration"] == k + 2, "killed before the commit's replace"


def state_after(f: Folders, k: int, started: float) -> None:
    assert f.state()["iteration"] == k + 2
    assert (f.session / f"latents-{k + 1:08d}.safetensors").exists(), "killed before the stale latents were removed"


def latents_before(f: Folders, k: int, started: float) -> None:
    assert f.state()["iteration"] == k + 1
    pending = temps(f.session, f"latents-{k + 2:08d}.safetensors")
    assert pending, "a complete temp file waits for its replace"
    load_file(str(pending[-1]))


def latents_after(f: Folders, k: int, started: float) -> None:
    assert f.state()["iteration"] == k + 1
    load_file(str(f.session / f"latents-{k + 2:08d}.safetensors"))


def cache_written_at(k: int) -> tuple[int, int]:
    """The committed iteration while keyframe k+2's cache files are written: its analysis runs on
    the cache worker beside its commit, so before or after it."""
    return k + 1, k + 2


def tensor_before(f: Folders, k: int, started: float) -> None:
    assert f.state()["iteration"] in cache_written_at(k)
    pending = temps(f.cache / "tensors", CACHE_TENSOR)
    assert pending, "a complete cache tensor temp file waits for its replace"
    load_file(str(pending[-1]))


def tensor_after(f: Folders, k: int, started: float) -> None:
    assert f.state()["iteration"] in cache_written_at(k)
    on_disk = {p.stem for p in (f.cache / "tensors").glob("*.safetensors")}
    assert on_disk - index_ids(f), "a tensor file written just before the kill is not in the index yet"


def index_before(f: Folders, k: int, started: float) -> None:
    assert f.state()["iteration"] in cache_written_at(k)
    pending = temps(f.cache / "metadata", "cache_index.json")
    assert pending and json.loads(pending[-1].read_text())["entries"]


def index_after(f: Folders, k: int, started: float) -> None:
    assert f.state()["iteration"] in cache_written_at(k)
    keyframes = {entry["generation_params"]["keyframe"] for entry in json.loads(f.index.read_text())["entries"]}
    assert k + 2 in keyframes, "the index of keyframe k+2 was replaced before the kill"


def newest_frame_written(f: Folders) -> bool:
    state = f.state()
    return (f.session / "frames" / f"frame_{state['next_frame'] - 1:08d}.png").exists()


def frames_before_commit(f: Folders, k: int, started: float) -> None:
    assert f.state()["iteration"] == k + 1 and newest_frame_written(f)
    last = f.state()["next_frame"] + FRAMES_PER_ITERATION - 1
    assert (f.session / "frames" / f"frame_{last:08d}.png").exists(), "keyframe k+2's frames were written"
    assert not (f.session / f"latents-{k + 2:08d}.safetensors").exists(), "killed before its latents"


def commit_durable(f: Folders, k: int, started: float) -> None:
    assert f.state()["iteration"] == k + 2 and newest_frame_written(f), "its frames were written before its state"


def status_before(f: Folders, k: int, started: float) -> None:
    assert f.state()["iteration"] == k
    pending = temps(f.session, "status.json")
    assert pending
    json.loads(pending[-1].read_text())


def status_after(f: Folders, k: int, started: float) -> None:
    assert f.state()["iteration"] == k
    assert (f.session / "status.json").stat().st_mtime >= started, "status.json was replaced after the restart"


@dataclass(frozen=True)
class Kill:
    label: str
    rule: Callable[[int], str] | None = None
    """``DREAM_WINDOW_FAULT`` for a restart that resumes from keyframe k; None: a random kill."""
    evidence: Callable[[Folders, int, float], None] | None = None


# After a restart at keyframe k, the resumed loop commits k+1 (its sampler input is checked), and
# the fault points aim at keyframe k+2: its commit on the frame writer is the second one of the
# process (``commit:`` points; state.json is also replaced on other threads: POST /start, each
# iteration's start, playback), the cache index once per keyframe, cache tensors twice (the
# keyframe and the midpoint of the pair).
FAULT_KILLS = [
    Kill("state.json before replace", lambda k: "commit:before_replace:state.json:kill@2", state_before),
    Kill("state.json after replace", lambda k: "commit:after_replace:state.json:kill@2", state_after),
    Kill("latents after replace", lambda k: f"after_replace:latents-{k + 2:08d}.safetensors:kill",
         latents_after),
    Kill("cache tensor after replace", lambda k: f"after_replace:{CACHE_TENSOR}:kill@3", tensor_after),
    Kill("cache index before replace", lambda k: "before_replace:cache_index.json:kill@2", index_before),
    Kill("random"),
    # @2: the server's start writes the interrupted session's status first; the second write is the resumed loop's.
    Kill("status.json before replace", lambda k: "before_replace:status.json:kill@2", status_before),
    Kill("status.json after replace", lambda k: "after_replace:status.json:kill@2", status_after),
    Kill("latents before replace", lambda k: f"before_replace:latents-{k + 2:08d}.safetensors:kill",
         latents_before),
    Kill("cache tensor before replace", lambda k: f"before_replace:{CACHE_TENSOR}:kill@3", tensor_before),
    Kill("cache index after replace", lambda k: "after_replace:cache_index.json:kill@2", index_after),
    Kill("commit after the frames", lambda k: "commit:frames_written:kill@2", frames_before_commit),
    Kill("commit once durable", lambda k: "commit:durable:kill@2", commit_durable),
]
SCHEDULE = (FAULT_KILLS + [Kill("random")] * max(0, KILLS - 1 - len(FAULT_KILLS)))[:KILLS - 1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, artifacts):
    """A server of its own, looping the test session with captures and an always-admitting cache."""
    base = tmp_path_factory.mktemp("faults")
    srv = ComfyServer(base, extra_packs=TEST_PACKS).start()
    wf = dream_workflow(SESSION, capture=CAPTURE)
    wf["3"]["inputs"]["admission"] = "always"
    srv.queue(wf)
    srv.wait_for(lambda: (srv.session(SESSION) or {}).get("iteration", 0) >= 2, timeout=120, what="2 iterations")
    yield srv
    srv.kill()
    (artifacts / "comfy-faults.log").write_bytes(srv.log_path.read_bytes())


def post_start(srv: ComfyServer) -> None:
    """``POST /dream_window/start``; the server may die of its fault point before it answers."""
    try:
        status, body, _ = srv.request("POST", "/dream_window/start", json.dumps({"session": SESSION}).encode(),
                                      {"Content-Type": "application/json"}, timeout=60)
    except OSError:  # the connection went down with the process
        assert srv.proc.wait(timeout=30) == -signal.SIGKILL, "no answer, yet the server did not die of a SIGKILL"
        return
    assert status == 200, body


def restart_and_resume(srv: ComfyServer, f: Folders, kill: Kill | None) -> tuple[int, torch.Tensor, int, float]:
    """Start the killed server again (with ``kill``'s fault point) and resume the loop: (k, the
    latent it resumes from, captures before, start time)."""
    k, committed, went_back = resume_point(f.session)
    captures = len(f.captures())
    srv.env = {FAULT_ENV: kill.rule(k)} if kill and kill.rule else {}
    started = time.time()
    srv.start()
    assert srv.session(SESSION)["iteration"] == k
    if went_back:
        assert f.state()["iteration"] == k, "going back one keyframe is saved at once"
    post_start(srv)
    return k, committed, captures, started


def check_resumed_from(f: Folders, committed: torch.Tensor, captures: int) -> bool:
    """Whether the resumed loop sampled at all; if so, its first sampler input is ``committed``."""
    new = f.captures()[captures:]
    if not new:
        return False
    src = load_file(str(new[0]))["latent_tensor"]
    assert torch.equal(src, committed), "the first resumed iteration did not start from the last committed keyframe"
    return True


def test_sigkill_at_fault_points_and_random_moments_loses_nothing(server, artifacts):
    f = Folders(server.base)
    rng = random.Random(os.environ.get("DW_FAULT_SEED", "6"))
    log = [{"kill": "random (the loop the fixture started)"}]
    started_all = time.monotonic()
    server.kill()
    for kill in SCHEDULE:
        check_files(f)
        t0 = time.monotonic()
        k, committed, captures, started = restart_and_resume(server, f, kill)
        if kill.rule:
            assert server.proc.wait(timeout=180) == -signal.SIGKILL, f"{kill.label}: the fault point was not reached"
        else:  # a random moment of the third resumed iteration, whatever an iteration takes on this machine
            server.wait_for(lambda: server.session(SESSION)["iteration"] >= k + 1, timeout=120,
                            what="the resumed loop to commit")
            t1 = time.monotonic()
            server.wait_for(lambda: server.session(SESSION)["iteration"] >= k + 2, timeout=120,
                            what="a second resumed iteration")
            time.sleep(rng.uniform(0.0, time.monotonic() - t1))
            server.kill()
            assert server.proc.returncode == -signal.SIGKILL
        check_files(f)
        if kill.evidence:
            kill.evidence(f, k, started)
        resumed = check_resumed_from(f, committed, captures)
        assert resumed or kill.label.startswith("status.json"), f"{kill.label}: the loop did not resume"
        log.append({"kill": kill.label, "rule": server.env.get(FAULT_ENV), "committed_before": k,
                    "committed_after": f.state()["iteration"], "resume_checked": resumed,
                    "seconds": round(time.monotonic() - t0, 1)})
    (artifacts / "fault-kills.json").write_text(json.dumps(log, indent=1))
    print(f"{len(log)} SIGKILLs in {time.monotonic() - started_all:.0f} s:", *log, sep="\n  ")
    assert len(log) == KILLS

    # The last restart: the loop goes on, and what the crashes left behind is cleaned up.
    k, committed, captures, _ = restart_and_resume(server, f, None)
    server.wait_for(lambda: server.session(SESSION)["iteration"] >= k + 2, timeout=120, what="the loop to go on")
    assert check_resumed_from(f, committed, captures)
    server.control("stop", SESSION)
    server.wait_for(lambda: not any(server.get("/queue").values()), timeout=60, what="the loop to stop")
    check_files(f)
    summary = server.session(SESSION)
    assert summary["frames"] == frames_formula(summary["iteration"]), "frame numbering counts committed keyframes only"
    state = f.state()
    assert [p.name for p in f.session.glob("latents-*")] == [state["latents_file"]]
    folders = (f.session, f.session / "frames", f.cache / "tensors", f.cache / "images", f.cache / "metadata")
    server.wait_for(lambda: not [p for folder in folders for p in folder.glob(".*") if p.suffix in (".tmp", ".lnk")],
                    timeout=30, what="no temp files: those of interrupted writes are removed when the session "
                                     "and the cache load")
    ids = index_ids(f)
    assert {p.stem for p in (f.cache / "tensors").glob("*.safetensors")} == ids, "the cache index matches its files"
    assert {p.stem for p in (f.cache / "images").glob("*.png")} == ids
    assert server.get(f"/dream_window/cache/{SESSION}")["size"] == len(ids)


def committed_files(f: Folders) -> dict[str, bytes]:
    """``state.json`` and the keyframe files, by name."""
    return {p.name: p.read_bytes() for p in f.session.iterdir() if p.name == "state.json" or p.suffix == ".safetensors"}


def test_full_disk_pauses_the_loop_with_a_clear_error_and_keeps_the_state(server):
    """ENOSPC on every state.json write: the commit fails, is retried 3 times, the session pauses."""
    f = Folders(server.base)
    server.kill()
    before = committed_files(f)
    k = f.state()["iteration"]
    log_start = server.log_path.stat().st_size
    server.env = {FAULT_ENV: "before_replace:state.json:enospc"}
    server.start()
    server.control("start", SESSION)
    paused = server.wait_for(lambda: (s := server.session(SESSION))["state"] == "paused" and s, timeout=120,
                             what="the session to pause after the retries")
    message = paused["last_error"]["message"]
    for words in ("DreamWindowCommit", "No space left on device", "free disk space", "start the session again"):
        assert words in message, message
    assert paused["last_error"]["retries"] == 3 and paused["iteration"] == k
    status = server.wait_for(lambda: (s := server.get(f"/dream_window/status/{SESSION}"))["state"] == "error" and s,
                             timeout=10, what="the status (written once a second) to show the error")
    assert "No space left on device" in status["error_message"] and "DreamWindowCommit" in status["error_message"]
    assert committed_files(f) == before, "a full disk leaves the committed state as it was"
    log = server.log_path.read_bytes()[log_start:].decode(errors="replace")
    assert log.count(f"dream_window[{SESSION}]: iteration failed (node 9 DreamWindowCommit: ") == 3
    assert f"dream_window[{SESSION}]: iteration failed 4 times; session paused: node 9 DreamWindowCommit" in log
    assert f"dream_window[{SESSION}]: cannot save " in log, "the state it could not persist is logged"
    server.kill()
    server.env = {}
