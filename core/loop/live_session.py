"""Everything a running session holds in memory, in one object per session, and the registry of them.

A ``LiveSession`` owns the persisted ``Session`` and what runs beside it: its supervisor (the re-queue
watcher), its frame writer, its publisher (playback and ``status.json``), and its ``LoopMemory``: the
cache loop with the settings it was built from and its pending analysis, the cache stats, and the open
iteration record. Reset replaces the ``LoopMemory`` (the next iteration starts as a fresh session's
would; playback and the frame numbering go on); delete drops the ``LiveSession``, stopping its writer
and publisher. What is not in these objects cannot survive either.

``LiveSessions`` maps name to live session; it also holds what sessions share: one ``CacheStore`` per
cache folder and the worker thread for background cache analyses. ComfyUI is reached only through the
``Host`` the node layer gives.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..cache.aesthetic_loop import AestheticLoop
from ..cache.pending_jobs import PendingJobs
from ..cache.store import CacheStore
from .frames import FrameBatch, FrameWriter
from .iteration import Iteration
from ..window.playback import Frame, Player
from ..window.publisher import STATUS_FILE, Publisher, player_from_disk, write_status
from .session import KeyframeCommit, Session, SessionError, SessionRegistry, validate_name
from .session_settings import CacheSettings
from ..cache.similarity import get_strategy
from ..window.status import CacheStats, build_status
from .supervisor import LoopBackend, Supervisor

log = logging.getLogger("dream_window")


@dataclass(frozen=True)
class Host:
    """What the live sessions and the loop service need from the server (the node layer builds it)."""

    sessions_folder: Callable[[], Path]
    cache_root: Callable[[], Path]
    """``output/dream_window_cache``: where the cache folders are."""
    input_folder: Callable[[], Path]
    backend: LoopBackend
    send_event: Callable[[str, dict], None]
    run_on_server_loop: Callable[..., None]
    executing_prompt_id: Callable[[], str | None]
    executing_node_id: Callable[[], str | None]
    intermediate_device: Callable[[], object]
    before_first_writer: Callable[[], None]
    """Called once on the executor thread before a session's frame writer starts (the threads check)."""
    started: float = field(default_factory=time.monotonic)


class LoopMemory:
    """What a session's iterations remember in memory: replaced whole on reset."""

    def __init__(self, analyses: PendingJobs) -> None:
        self.analyses = analyses
        """The worker the cache analyses run on (shared); this memory's job is keyed by the memory itself."""
        self.cache_settings: CacheSettings | None = None
        self.cache_loop: AestheticLoop | None = None
        self.cache_stats: CacheStats | None = None
        self.iteration: Iteration | None = None
        self._lock = threading.Lock()

    def open_iteration(self, keyframe: int) -> Iteration:
        """A new iteration record; a failed iteration's record goes, with the decision it proposed (its
        retry decides again from the committed policy state)."""
        if self.cache_loop is not None:
            self.cache_loop.proposal = None
        self.iteration = Iteration(keyframe)
        return self.iteration

    def cache(self, settings: CacheSettings, build: Callable[[], AestheticLoop]) -> AestheticLoop:
        """The cache loop for ``settings``, built again when they changed (the replaced loop's last
        analysis is dropped first)."""
        with self._lock:
            if self.cache_loop is not None and self.cache_settings == settings:
                return self.cache_loop
            self.analyses.discard(self)
            self.cache_loop, self.cache_settings = build(), settings
            return self.cache_loop

    def analyse(self, job: Callable[[], None]) -> None:
        """Run a keyframe's analysis: on the worker when the strategy only uses the CPU (a model ComfyUI
        manages must stay on the executor) and the tuning allows it, else here."""
        if self.cache_loop is not None and self.cache_loop.analyses_in_background:
            self.analyses.submit(self, job)
        else:
            job()

    def settle(self) -> None:
        """Wait for the last analysis before the cache state is read (its error is raised)."""
        self.analyses.settle(self)

    def close(self) -> None:
        """Drop the pending analysis once it has finished (its failure is logged)."""
        with self._lock:
            self.analyses.discard(self)


class LiveSession:
    """One session's persisted state and everything running beside it (see the module docstring)."""

    def __init__(self, session: Session, host: Host, analyses: PendingJobs) -> None:
        self.session = session
        self.host = host
        self.memory = LoopMemory(analyses)
        self.paused_by_monitor = False
        """The GPU monitor paused the session while yielding the GPU; it starts it again when clear."""
        self.resumed_at: float | None = None
        """When the GPU monitor started the session again: its next commit logs how long the reload took."""
        self._supervisor: Supervisor | None = None
        self._writer: FrameWriter | None = None
        self._publisher: Publisher | None = None

    @property
    def name(self) -> str:
        return self.session.name

    @property
    def supervisor(self) -> Supervisor:
        """The session's supervisor; use on the server loop only."""
        if self._supervisor is None:
            self._supervisor = Supervisor(self.session, self.host.backend,
                                          hold=self.publisher.player.should_hold_next_iteration,
                                          notify=self.state_changed)
        return self._supervisor

    @property
    def publisher(self) -> Publisher:
        """The session's playback and status writer (started on first use)."""
        if self._publisher is None:
            session = self.session
            fps, target, minimum = session.settings.playback()
            self._publisher = Publisher(session.folder, self.status, on_frame=self.frame_shown,
                                        on_status=lambda status: self.host.send_event(
                                            "dream_window.status", {"session": self.name, **status}),
                                        fps=fps, target_seconds=target, min_buffer_seconds=minimum,
                                        frames_dir=session.frames_dir, next_frame=session.next_frame)
            self.follow_generation(session.state)
        return self._publisher

    def writer(self) -> FrameWriter:
        """The session's frame writer (started on first use), keeping the settings' retention."""
        if self._writer is None:
            self.host.before_first_writer()
            self._writer = FrameWriter(self.session.frames_dir, self.session.settings.retention,
                                       on_written=self.publisher.frames_written,
                                       first_unplayed=self.publisher.first_unplayed)
        self._writer.retention = self.session.settings.retention
        return self._writer

    def submit(self, commit: KeyframeCommit, frames: FrameBatch, text: bytes) -> None:
        """Hand a staged keyframe's frames to the writer with its durable commit behind them. When the
        commit fails, what the iterations remember goes with it (the cache loop took its policy state)."""
        def durable(frames_written: bool) -> bool:
            if commit(frames_written):
                return True
            if commit.error is not None or not frames_written:
                self.forget_iterations()
            return False

        self.writer().submit(commit.first, frames, text, durable)

    def settle_commits(self, timeout: float = 30) -> None:
        """Wait until the keyframes made so far are durable (a stop returns once they are)."""
        if self._writer is not None:
            self._writer.flush(timeout)

    def viewers(self) -> int:
        """Open streams of the session now (none while its publisher has not started)."""
        return self._publisher.viewers() if self._publisher is not None else 0

    def clear_write_error(self) -> None:
        """A frame write error was reported; starting again is the fix it names."""
        if self._writer is not None:
            self._writer.error = None

    def change_settings(self, **values) -> None:
        """Set settings (persisted with the next save) and apply them to playback."""
        with self.session.lock:
            self.session.settings = self.session.settings.with_values(**values)
            playback = self.session.settings.playback()
        self.publisher.configure(*playback)

    def attach(self, prompt_id: str, prompt: dict, client_id: str | None, autoqueue: dict,
               extra_pnginfo: dict | None) -> None:
        """A prompt of this session started (on the server loop): the supervisor watches it."""
        self.supervisor.attach(prompt_id, prompt, client_id, autoqueue, extra_pnginfo)
        self.publisher.configure(*self.session.settings.playback())

    def frame_shown(self, frame: Frame) -> None:
        """Playback showed ``frame``: the frontend is told, the played frames beyond the retention go."""
        self.host.send_event("dream_window.frame", frame_event(self.name, frame))
        if self._writer is not None:
            self._writer.played()

    def state_changed(self, summary: dict) -> None:
        """The supervisor changed the session's state: playback follows, the frontend is told."""
        self.follow_generation(summary["state"])
        self.host.send_event("dream_window.session", summary)

    def follow_generation(self, state: str) -> None:
        """While the session runs, playback waits for its minimum buffer; once generation stops (stopped,
        paused, an error, max_iterations, an interrupted or single-shot session) what is buffered plays
        to the end."""
        playback_follows(self.publisher.player, state)

    def status(self, player: Player) -> dict:
        """The session's status document (``status.json`` and ``GET /dream_window/status``)."""
        session = self.session
        with session.lock:
            state, error, stats, reason = session.state, session.error, dict(session.stats), session.paused_reason
            iteration, frames = session.committed()
        message = (error or {}).get("message") if state == "paused" else None
        shown = {"idle": "stopped", "paused": "error" if message else "paused"}.get(state, state)
        return build_status(state=shown, buffer=player.metrics(), uptime_seconds=time.monotonic() - self.host.started,
                            current_prompt=stats.get("prompt", ""), mode=stats.get("mode"),
                            generation_time=stats.get("mean_keyframe_time", 0.0),
                            keyframe_time=stats.get("keyframe_time"), batch_decode_time=stats.get("batch_decode_time"),
                            keyframes_generated=iteration, interpolations_generated=max(0, frames - iteration),
                            cache=self.memory.cache_stats, error_message=message, paused_reason=reason)

    def write_stored_status(self) -> None:
        """Write ``status.json`` once from the session as stored, while its publisher has not started:
        what the last server wrote there (``running``, its buffer) is stale after a restart. Starts no
        playback."""
        if self._publisher is None:
            session = self.session
            player = player_from_disk(session.folder, session.frames_dir, session.next_frame,
                                      *session.settings.playback())
            playback_follows(player, session.state)
            write_status(session.folder / STATUS_FILE, self.status(player))

    def last_status(self) -> dict:
        publisher = self.publisher
        return publisher.last_status or self.status(publisher.player)

    def committed(self) -> None:
        """A keyframe was committed: the first one after the GPU monitor resumed the session says how long
        it took."""
        resumed, self.resumed_at = self.resumed_at, None
        if resumed is not None:
            log.info("dream_window[%s]: first keyframe after yielding the GPU took %.1f s from the resume "
                     "(models reloaded)", self.name, time.monotonic() - resumed)

    def forget_iterations(self) -> None:
        """Replace what the iterations remember (the cache loop with its policy, detector and pending
        analysis, the cache stats, the open iteration) with a fresh memory."""
        old, self.memory = self.memory, LoopMemory(self.memory.analyses)
        old.close()

    def close(self) -> None:
        """Stop what runs beside the session: its analysis, pending commits, frame writer and publisher."""
        self.memory.close()
        self.session.drop_pending()
        if self._writer is not None:
            self._writer.flush(timeout=10)
        if self._publisher is not None:
            self._publisher.stop()


def playback_follows(player: Player, state: str) -> None:
    """``player`` waits for its minimum buffer while the session runs, else plays what it holds."""
    if state == "running":
        player.wait_for_buffer()
    else:
        player.force_start()


def frame_event(name: str, frame: Frame) -> dict:
    """The ``dream_window.frame`` websocket event for a frame being shown."""
    return {"session": name, "index": frame.index, "url": f"/dream_window/frame/{name}?index={frame.index}"}


class LiveSessions:
    """The registry: session name -> ``LiveSession`` (loaded from disk on first use). Thread-safe."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.analyses = PendingJobs("dream_window_cache")
        self._stored: SessionRegistry | None = None
        self._live: dict[str, LiveSession] = {}
        self._deleting: set[str] = set()
        """Sessions whose folder a delete is removing: unknown meanwhile, so no lookup loads them again."""
        self._stores: dict[Path, CacheStore] = {}
        """One store per cache folder, shared by the sessions that name it."""
        self._lock = threading.Lock()
        self._stores_lock = threading.Lock()

    @property
    def stored(self) -> SessionRegistry:
        """Where the sessions are kept (the sessions folder is read on first use)."""
        if self._stored is None:
            self._stored = SessionRegistry(self.host.sessions_folder())
        return self._stored

    @property
    def root(self) -> Path:
        return self.stored.root

    def get(self, name: str, create: bool = False) -> LiveSession:
        """The named live session; ``create`` makes a new session when none is stored (``KeyError`` when
        none is and ``create`` is off, ``SessionError`` for a bad name or folder, or one being deleted)."""
        self.stored.folder(name)  # every time: a link planted after the session was loaded is refused
        with self._lock:
            if name in self._deleting:
                raise SessionError(f"session {name!r} is being deleted; queue the workflow again once the delete "
                                   f"has answered")
            live = self._live.get(name)
            if live is None:
                live = LiveSession(self.stored.get(name, create), self.host, self.analyses)
                self._live[name] = live
            return live

    def session(self, name: str, create: bool = False) -> Session:
        return self.get(name, create).session

    def exists(self, name: str) -> bool:
        return name not in self._deleting and (name in self._live or self.stored.exists(name))

    def loaded(self) -> list[LiveSession]:
        """The sessions in memory now (a deleted one is gone from here with all it held)."""
        with self._lock:
            return list(self._live.values())

    def names(self) -> list[str]:
        """Every stored or live session name (none being deleted)."""
        return sorted((set(self._live) | set(self.stored.names())) - self._deleting)

    def reset(self, name: str) -> None:
        """Forget the session's keyframes (on disk and in memory); frame numbering and playback go on."""
        live = self.get(name)
        live.session.reset()
        live.forget_iterations()

    def delete(self, name: str) -> None:
        """Stop and drop a session's live objects, then delete its folder; the session is unknown from the
        start (a failed removal leaves what is left of the folder to be found again)."""
        with self._lock:
            live = self._live.pop(name, None)
            self._deleting.add(name)
        try:
            if live is not None:
                live.close()
            self.stored.delete(name)
        finally:
            with self._lock:
                self._deleting.discard(name)

    def cache_loop(self, live: LiveSession, settings: CacheSettings, encoder=None) -> AestheticLoop:
        """The session's cache loop for ``settings`` (rebuilt when they change: a new admission, capacity
        or eviction applies from here; a store built with another strategy refuses to load, naming the
        way to rebuild it). Raises ``SessionError`` for a cache name that leaves the cache folder."""
        def build() -> AestheticLoop:
            strategy = get_strategy(settings.strategy, **({"encoder": encoder} if encoder is not None else {}))
            folder = self.cache_folder(settings.name)
            with self._stores_lock:
                store = self._stores.get(folder)
                if store is None or store.strategy.name != settings.strategy:
                    store = CacheStore(folder, strategy, capacity=settings.capacity, eviction=settings.eviction)
                    self._stores[folder] = store
                else:  # evict down to a smaller capacity with the eviction policy chosen now
                    store.strategy = strategy
                    store.set_eviction(settings.eviction)
                    store.set_capacity(settings.capacity)
            loop = AestheticLoop.create(store, admission_rule=settings.admission, admission_logic=settings.logic,
                                        tuning=settings.tuning, rng_seed=settings.rng_seed)
            with live.session.lock:
                loop.load_policy_state(live.session.policy)
            return loop

        return live.memory.cache(settings, build)

    def cache_folder(self, name: str) -> Path:
        """The cache's folder, refusing names and planted links that leave ``output/dream_window_cache``."""
        root = self.host.cache_root()
        folder = root / validate_name(name, "cache name")
        if folder.is_symlink() or (folder.exists() and folder.resolve().parent != root.resolve()):
            raise SessionError(f"cache folder {folder} is a link or leaves {root}; remove it")
        return folder

    async def resume_interrupted(self, attempts: int = 240, delay: float = 0.5) -> None:
        """Re-queue every session that was running when the server stopped, now "interrupted" (opt-in at
        start-up).

        Runs on the server loop as soon as ComfyUI imports the pack; the first POST may come
        before the server listens, so connection errors are retried for up to two minutes.
        """
        for name in [n for n in self.names() if self._resumable(n)]:
            for _ in range(attempts):
                try:
                    await self.get(name).supervisor.start()
                    log.info("dream_window[%s]: resumed at server start", name)
                    break
                except OSError:
                    await asyncio.sleep(delay)
                except Exception as exc:
                    log.error("dream_window[%s]: could not resume at server start: %s", name, exc)
                    break

    def publish_interrupted_status(self) -> None:
        """At server start: the ``status.json`` of every session the last server left running (now
        "interrupted") says so at once, not when the session is next used (widgets read the file)."""
        for name in self.names():
            try:
                live = self.get(name)
                if live.session.state == "interrupted":
                    live.write_stored_status()
            except Exception as exc:  # one broken session folder must not stop the pack from loading
                log.error("dream_window[%s]: status.json not brought up to date at server start: %s", name, exc)

    def _resumable(self, name: str) -> bool:
        try:
            session = self.session(name)
        except Exception as exc:
            log.error("dream_window[%s]: not resumed: %s", name, exc)
            return False
        return session.state == "interrupted" and session.prompt is not None
