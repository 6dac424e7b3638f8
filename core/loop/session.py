"""Per-session loop state and its crash-safe persistence.

A session lives in ``<root>/<name>/`` (``root`` is ComfyUI's ``output/dream_window``):
``state.json`` (counters, control state, last error, the stored API prompt) and
``latents-<iteration>.safetensors`` (previous keyframe and the last five keyframes).
A commit writes the latents file first and then ``state.json``, which names it: the JSON
replace is the commit point, so a crash anywhere leaves the previous keyframe or the new
one, never a mix. The loop stages a keyframe in memory (``stage_keyframe``) and the frame
writer makes it durable after its frames (``KeyframeCommit``): ``state.json`` always holds the
newest durable keyframe and the current control state. Only safetensors and JSON are ever read
(never pickle).
"""

from __future__ import annotations

import copy
import json
import logging
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..atomic_files import atomic_write_bytes, atomic_write_json, fault_point, fault_scope, remove_stale_temps
from .frames import frame_name, frames_on_disk
from .session_settings import SessionSettings

log = logging.getLogger("dream_window")

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")  # \Z: "$" would accept a trailing newline
NAME_RULE = "1-64 characters: letters, digits, '_' or '-', starting with a letter or digit"
LATENTS_PATTERN = re.compile(r"^latents-\d{8,}\.safetensors\Z")
RECENT_KEYFRAMES = 5
STATES = ("idle", "running", "paused", "stopped", "interrupted")
"""Control states; "interrupted" is a session that was running when the server stopped: nothing runs
it until it is started again (``resumable`` in its summary)."""
STATE_VERSION = 1
KEYFRAME_FIELDS = ("iteration", "next_frame", "prev_latent", "recent_latents", "seeds", "stats", "latents_file",
                   "rotation", "policy")
"""What a keyframe commit changes: held in memory as staged, and as last made durable."""


class SessionError(Exception):
    """A session problem the user must fix; the message says how."""


def validate_name(name: Any, what: str = "session name") -> str:
    """Return ``name`` if it is a safe folder name, else raise ``SessionError``."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
        raise SessionError(f"invalid {what} {shown}: use {NAME_RULE}")
    return name


def strip_is_changed(prompt: dict) -> dict:
    """Deep copy of an API prompt without the ``is_changed`` keys ComfyUI inserts.

    Re-posting a prompt that still carries them makes ComfyUI skip ``fingerprint_inputs``
    and serve stale cached outputs.
    """
    clean = copy.deepcopy(prompt)
    for node in clean.values():
        if isinstance(node, dict):
            node.pop("is_changed", None)
    return clean


@dataclass
class Session:
    """The loop state of one session. Guard every access with ``lock``."""

    name: str
    folder: Path
    iteration: int = 0
    next_frame: int = 1
    prev_latent: torch.Tensor | None = None
    recent_latents: list[torch.Tensor] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    state: str = "idle"
    error: dict | None = None
    paused_reason: str | None = None
    """Why the GPU monitor paused the session ("yielding to eldenring.exe"); None when it did not."""
    prompt: dict | None = None
    client_id: str | None = None
    extra_pnginfo: dict | None = None
    """What the prompt was queued with besides the graph (the editor's workflow); re-queued with it."""
    settings: SessionSettings = field(default_factory=SessionSettings)
    stats: dict = field(default_factory=dict)
    rotation: dict = field(default_factory=dict)
    policy: dict = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    latents_file: str | None = None
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    _durable: tuple = field(default=(), repr=False, compare=False)
    """The ``KEYFRAME_FIELDS`` as ``state.json`` holds them (behind memory while a commit is pending)."""
    _epoch: int = field(default=0, repr=False, compare=False)
    """Bumped when the pending commits are dropped (a failed commit, a reset, a delete)."""
    commit_error: Exception | None = field(default=None, repr=False, compare=False)
    """Why the last pending commit failed, until the loop reports it."""
    commits_failing: bool = field(default=False, repr=False, compare=False)
    """The last commit failed: the next ones are waited for, until one is durable."""

    def __post_init__(self) -> None:
        self._durable = self._keyframe()

    def _keyframe(self) -> tuple:
        return tuple(getattr(self, key) for key in KEYFRAME_FIELDS)

    def _set_keyframe(self, values: tuple) -> None:
        for key, value in zip(KEYFRAME_FIELDS, values):
            setattr(self, key, value)

    def _durable_fields(self) -> dict:
        return dict(zip(KEYFRAME_FIELDS, self._durable))

    @property
    def frames_dir(self) -> Path:
        return self.folder / "frames"

    def frames_produced(self) -> int:
        return self.next_frame - 1

    def committed(self) -> tuple[int, int]:
        """(keyframes, frames) whose commit is durable: what the session reports (the loop may be up to
        two keyframes further in memory)."""
        with self.lock:
            durable = self._durable_fields()
            return durable["iteration"], durable["next_frame"] - 1

    def run_ends(self) -> bool:
        """Whether no iteration follows the newest keyframe by itself: the session is not running, its
        autoqueue is off, or it reached ``max_iterations``."""
        with self.lock:
            limit = self.settings.max_iterations
            return self.state != "running" or not self.settings.enabled or bool(limit and self.iteration >= limit)

    def summary(self) -> dict:
        """What ``GET /dream_window/sessions`` lists for this session."""
        with self.lock:
            iteration, frames = self.committed()
            return {
                "session": self.name,
                "state": self.state,
                "iteration": iteration,
                "frames": frames,
                "last_error": self.error,
                "paused_reason": self.paused_reason,
                "max_iterations": self.settings.max_iterations,
                "has_prompt": self.prompt is not None,
                "resumable": self.state == "interrupted" and self.prompt is not None,
            }

    def _json(self) -> dict:
        durable = self._durable_fields()
        return {
            "version": STATE_VERSION,
            "name": self.name,
            "iteration": durable["iteration"],
            "next_frame": durable["next_frame"],
            "seeds": durable["seeds"],
            "state": self.state,
            "error": self.error,
            "paused_reason": self.paused_reason,
            "prompt": self.prompt,
            "client_id": self.client_id,
            "extra_pnginfo": self.extra_pnginfo,
            "settings": self.settings.to_dict(),
            "stats": durable["stats"],
            "rotation": durable["rotation"],
            "policy": durable["policy"],
            "created": self.created,
            "latents_file": durable["latents_file"],
        }

    def save_control(self) -> None:
        """Persist everything but the latents (state changes, errors, the stored prompt)."""
        with self.lock:
            atomic_write_json(self.folder / "state.json", self._json())

    def commit_keyframe(self, latent: torch.Tensor, seed: int | None, frames: int,
                        stats: dict, updates: dict | None = None) -> tuple[int, int]:
        """Record a new keyframe and make it durable before returning; the (first, last) frame index
        given to its frames. On failure nothing changes, in memory or on disk."""
        commit = self.stage_keyframe(latent, seed, frames, stats, updates)
        if not commit(True):
            raise commit.error
        return commit.first, commit.first + frames - 1

    def stage_keyframe(self, latent: torch.Tensor, seed: int | None, frames: int,
                       stats: dict, updates: dict | None = None) -> "KeyframeCommit":
        """Record a new keyframe in memory (the next iteration starts from it) and return its commit, which
        makes it durable once called (on the frame writer, after its frames).

        ``updates`` sets other persisted fields (``rotation``, ``policy``) in the same commit. A
        ``ValueError`` (JSON refuses NaN in the stored workflow) is raised here, with nothing changed.
        """
        with self.lock:
            latent = latent.detach().to("cpu", torch.float32).contiguous()
            if set(updates or {}) - {"rotation", "policy"}:
                raise ValueError(f"commit cannot update {sorted(set(updates) - {'rotation', 'policy'})}")
            json.dumps(self._json(), allow_nan=False)  # what the commit will write, refused now
            iteration, first = self.iteration + 1, self.next_frame
            recent = (self.recent_latents + [latent])[-RECENT_KEYFRAMES:]
            self.iteration, self.next_frame = iteration, first + frames
            self.prev_latent, self.recent_latents = latent, recent
            self.seeds = (self.seeds + ([seed] if seed is not None else []))[-RECENT_KEYFRAMES:]
            self.stats = stats
            self.latents_file = f"latents-{iteration:08d}.safetensors"
            for key, value in (updates or {}).items():
                setattr(self, key, value)
            return KeyframeCommit(self, self._epoch, first, self._keyframe())

    def drop_pending(self) -> None:
        """Forget the staged keyframes not yet durable: memory goes back to what ``state.json`` holds and
        their commits do nothing (their frames are deleted before anyone sees them)."""
        with self.lock:
            self._epoch += 1
            self._set_keyframe(self._durable)

    def _make_durable(self, commit: "KeyframeCommit", frames_written: bool) -> bool:
        """Write a staged keyframe (on the frame writer, after its frames): its latents file, then
        ``state.json``. False when it was dropped or failed (``commit.error``): then memory goes back
        to the durable keyframe, every later pending commit is dropped, and nothing new stays on disk."""
        with self.lock:
            if commit.epoch != self._epoch:
                return False
            if not frames_written:
                self.drop_pending()
                return False
        fault_point("commit:frames_written")
        values = dict(zip(KEYFRAME_FIELDS, commit.keyframe))
        iteration, recent, latents_file = values["iteration"], values["recent_latents"], values["latents_file"]
        try:
            with fault_scope("commit"):
                self._write_latents(iteration, recent)
        except Exception as exc:  # on the writer's thread: every failure is the commit's, reported by the loop
            (self.folder / latents_file).unlink(missing_ok=True)
            with self.lock:
                self._failed(commit, exc)
            return False
        with self.lock:
            if commit.epoch != self._epoch:  # dropped while its latents were written
                (self.folder / latents_file).unlink(missing_ok=True)
                return False
            old, self._durable = self._durable, commit.keyframe
            try:
                with fault_scope("commit"):
                    self.save_control()
            except (OSError, ValueError) as exc:
                self._durable = old
                (self.folder / latents_file).unlink(missing_ok=True)
                self._failed(commit, exc)
                return False
            self.commits_failing = False
            self._remove_stale_latents()
        fault_point("commit:durable")
        return True

    def _failed(self, commit: "KeyframeCommit", error: Exception) -> None:
        commit.error = self.commit_error = error
        self.commits_failing = True
        self.drop_pending()

    def _write_latents(self, iteration: int, recent: list[torch.Tensor]) -> str | None:
        """Write the kept keyframes (the newest is the previous keyframe) as the latents file of
        ``iteration``; None when none is kept."""
        if not recent:
            return None
        latents_file = f"latents-{iteration:08d}.safetensors"
        tensors = {f"recent_{i}": t for i, t in enumerate(recent)}
        atomic_write_bytes(self.folder / latents_file,
                           save(tensors, metadata={"iteration": str(iteration), "session": self.name}))
        return latents_file

    def _remove_stale_latents(self) -> None:
        """Every latents file but the one ``state.json`` names goes once it is durable (a pending commit
        writes its own after this, on the same thread)."""
        durable = self._durable_fields()["latents_file"]
        for stale in self.folder.glob("latents-*.safetensors"):
            if stale.name != durable:
                stale.unlink(missing_ok=True)

    def _save_keyframe_state(self, old: tuple) -> None:
        """The commit point: ``state.json`` names the latents file written before it; older latents
        files go once it is durable. On failure the fields in ``old`` come back and the new latents
        file goes, so nothing changes, in memory or on disk."""
        self._durable = self._keyframe()
        try:
            self.save_control()
        except BaseException:
            new_file = self.latents_file
            self._set_keyframe(old)
            self._durable = old
            if new_file and new_file != self.latents_file:
                (self.folder / new_file).unlink(missing_ok=True)
            raise
        self._remove_stale_latents()

    def _redo_keyframe_without_frames(self) -> None:
        """Go back one keyframe when the newest one's frames never reached the disk.

        The frame writer writes a keyframe's frames after its commit, the keyframe's own frame
        last; a server killed in between would leave a hole in the frame sequence. Resuming from
        the keyframe before instead redoes the pair under the same frame numbers. Persisted at
        once (a new latents file, then ``state.json``); when that cannot be written, the session
        resumes from the newest keyframe and the hole stays.
        """
        frames = self.stats.get("frames_last_iteration")
        if self.iteration < 1 or not isinstance(frames, int) or not 1 <= frames < self.next_frame:
            return
        if (self.frames_dir / frame_name(self.next_frame - 1)).exists():
            return
        recent = self.recent_latents[:-1]
        if self.iteration > 1 and not recent:
            return  # the keyframe before it is not kept
        old = self._keyframe()
        try:
            latents_file = self._write_latents(self.iteration - 1, recent)
            self.iteration, self.next_frame = self.iteration - 1, self.next_frame - frames
            self.prev_latent, self.recent_latents = (recent[-1] if recent else None), recent
            self.seeds = self.seeds[:-1]
            self.stats = {key: value for key, value in self.stats.items() if key != "frames_last_iteration"}
            self.latents_file = latents_file
            self._save_keyframe_state(old)
        except (OSError, ValueError) as exc:  # nothing changed: _save_keyframe_state put it back
            log.error("dream_window[%s]: keyframe %d's frames are missing but the session cannot go back to "
                      "keyframe %d (%s); resuming from keyframe %d", self.name, old[0], old[0] - 1, exc, old[0])
            return
        log.warning("dream_window[%s]: keyframe %d's frames were not all written before the server stopped; "
                    "resuming from keyframe %d, which makes them again", self.name, old[0], self.iteration)

    def reset(self) -> None:
        """Forget the keyframes (e.g. after a resolution change); frame numbering goes on."""
        with self.lock:
            self.drop_pending()  # the frame numbering goes on from the durable keyframe
            self.iteration = 0
            self.prev_latent, self.recent_latents, self.seeds = None, [], []
            self.error, self.stats, self.latents_file = None, {}, None
            self.rotation, self.policy = {}, {}
            self.state = "idle"
            self._durable = self._keyframe()
            self.save_control()
            for stale in self.folder.glob("latents-*.safetensors"):
                stale.unlink(missing_ok=True)

    @classmethod
    def load(cls, name: str, folder: Path) -> "Session":
        """Load a persisted session; raises ``SessionError`` naming the broken file.

        Temp files of writes a crash interrupted are deleted (nothing writes to the folder yet).
        """
        for where in (folder, folder / "frames"):
            removed = remove_stale_temps(where)
            if removed:
                log.warning("dream_window[%s]: removed %d unfinished temp files from %s (left by an "
                            "interrupted write)", name, removed, where)
        state_path = folder / "state.json"
        if state_path.is_symlink():
            raise SessionError(f"session {name!r}: {state_path} is a link; remove it (a session's files are "
                               f"read from its own folder only)")
        try:
            data = json.loads(state_path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SessionError(f"session {name!r}: cannot read {state_path} ({exc}); "
                               f"delete or reset the session to start it afresh") from exc
        session = cls(name=name, folder=folder)
        for key in ("iteration", "next_frame", "seeds", "state", "error", "paused_reason", "prompt", "client_id",
                    "extra_pnginfo", "stats", "rotation", "policy", "created", "latents_file"):
            if key in data:
                setattr(session, key, data[key])
        session.settings = SessionSettings.from_dict(data.get("settings") or {})
        session.paused_reason = None  # no monitor of this process paused it: it stays paused until started
        if session.state not in STATES:
            session.state = "idle"
        elif session.state == "running":  # no prompt of it is queued in a server that just started
            session.state = "interrupted"
        if session.latents_file:
            path = folder / str(session.latents_file)
            if not LATENTS_PATTERN.match(str(session.latents_file)) or path.is_symlink():
                raise SessionError(f"session {name!r}: keyframe file {path} is not a latents file of the session "
                                   f"folder; reset the session to start from a new keyframe")
            try:
                tensors = load_file(str(path))
            except (OSError, SafetensorError) as exc:
                raise SessionError(f"session {name!r}: keyframe file {path} is unreadable ({exc}); "
                                   f"reset the session to start from a new keyframe") from exc
            keys = sorted((k for k in tensors if k.startswith("recent_")), key=lambda k: int(k.split("_")[1]))
            if not keys:
                raise SessionError(f"session {name!r}: keyframe file {path} holds no keyframe; reset the session")
            session.recent_latents = [tensors[k] for k in keys]
            session.prev_latent = session.recent_latents[-1]
        session._durable = session._keyframe()
        session._redo_keyframe_without_frames()
        session._roll_back_frames()
        return session

    def _roll_back_frames(self) -> None:
        """Delete the frames of keyframes whose commit never became durable (from ``next_frame`` on): the
        session makes them again under the same numbers."""
        for index, path in frames_on_disk(self.frames_dir).items():
            if index >= self.next_frame:
                path.unlink(missing_ok=True)


@dataclass
class KeyframeCommit:
    """A keyframe staged in memory by ``Session.stage_keyframe``; calling it (on the frame writer, with
    whether the keyframe's frames were written) makes it durable, or says why not in ``error``."""

    session: Session
    epoch: int
    first: int
    """The first frame index given to its frames."""
    keyframe: tuple
    """The session's ``KEYFRAME_FIELDS`` with this keyframe."""
    error: Exception | None = None
    waited: bool = False
    """Made durable before Commit returns: the commit before it failed, or no iteration follows."""
    done: threading.Event = field(default_factory=threading.Event)

    def __call__(self, frames_written: bool) -> bool:
        try:
            return self.session._make_durable(self, frames_written)
        finally:
            self.done.set()


class SessionRegistry:
    """The sessions folder: finds, loads, creates and deletes the sessions stored under ``root``. It keeps
    no session in memory: the live ones are kept by ``core.loop.live_session.LiveSessions``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def folder(self, name: str) -> Path:
        """The session's folder, refusing names and planted links that leave ``root``."""
        validate_name(name)
        folder = self.root / name
        if folder.is_symlink() or (folder.exists() and folder.resolve().parent != self.root.resolve()):
            raise SessionError(f"session folder {folder} is a link or leaves {self.root}; remove it")
        if folder.exists() and not folder.is_dir():
            raise SessionError(f"{folder} exists but is not a folder; remove or rename that file "
                               f"so the session can be stored there")
        return folder

    def exists(self, name: str) -> bool:
        return (self.folder(name) / "state.json").is_file()

    def get(self, name: str, create: bool = False) -> Session:
        """The named session as stored; ``create`` makes a new one when none is stored, else ``KeyError``."""
        folder = self.folder(name)
        if (folder / "state.json").is_file():
            return Session.load(name, folder)
        if not create:
            raise KeyError(name)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SessionError(f"cannot create the session folder {folder} ({exc}); "
                               f"make sure ComfyUI's output folder is writable") from exc
        session = Session(name=name, folder=folder)
        session.save_control()
        return session

    def names(self) -> list[str]:
        """Every stored session name."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if NAME_PATTERN.match(p.name) and (p / "state.json").is_file())

    def delete(self, name: str) -> None:
        """Remove a session's folder."""
        folder = self.folder(name)
        if folder.is_dir():
            shutil.rmtree(folder)
