"""HTTP routes under ``/dream_window/`` (ComfyUI also serves each one under ``/api/``).

Control routes take POST with ``Content-Type: application/json`` only, so neither a
cross-site GET nor a ``text/plain`` form post (which skips the browser's CORS preflight)
can drive a session. Every error is JSON: ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from pathlib import Path

from aiohttp import web

from ..core.window.export import FORMATS, export_frames, write_session_zip
from ..core.loop.frames import FRAME_RE, frame_name
from ..core.loop.session import SessionError, validate_name
from ..core.loop.supervisor import ControlRefused
from . import comfy_adapter as adapter
from .monitor import MONITOR
from .registry import SESSIONS

log = logging.getLogger("dream_window")

CONTROL_ACTIONS = ("start", "pause", "resume", "stop", "reset", "delete", "export")
MAX_BODY = 64 * 1024
MAX_INDEX = 10**12
VIEWER = Path(__file__).resolve().parents[1] / "web" / "viewer"
VIEWER_ASSETS = {"viewer.mjs": "text/javascript", "viewer.css": "text/css"}
BOUNDARY = "dwframe"
WIND_DOWN_WAIT = 60.0
"""Seconds a delete or reset waits for the session's running iteration to end."""
STREAM_IDLE_CHECK = 0.5
"""Seconds between checks, while no frame plays, that a stream's viewer is still connected and that
the session still has frames to show."""


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _session_from_body(request: web.Request):
    """(session name, body) from a JSON control request, or an error response."""
    if request.content_type != "application/json":
        return None, _error(415, f"{request.path}: send a JSON body with Content-Type: application/json")
    too_large = _error(413, f"{request.path}: body too large; send at most {MAX_BODY} bytes of JSON")
    if request.content_length is not None and request.content_length > MAX_BODY:
        return None, too_large
    raw = bytearray()
    async for chunk in request.content.iter_chunked(16384):  # a chunked body has no length up front
        raw += chunk
        if len(raw) > MAX_BODY:
            return None, too_large
    try:
        body = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, _error(400, f'{request.path}: the body is not valid JSON; send {{"session": "<name>"}}')
    if not isinstance(body, dict) or "session" not in body:
        return None, _error(400, f'{request.path}: send {{"session": "<name>"}}')
    try:
        name = validate_name(body["session"])
    except SessionError as exc:
        return None, _error(400, f"{request.path}: {exc}")
    try:
        known = SESSIONS.exists(name)
    except SessionError as exc:  # a planted link or a file where the session folder should be
        return None, _error(409, f"{request.path}: {exc}")
    if not known:
        return None, _error(404, f"{request.path}: unknown session {name!r}; queue a workflow with a "
                                 f"DreamWindowSession named {name!r} first (GET /dream_window/sessions lists them)")
    return name, body


async def control(request: web.Request) -> web.Response:
    action = request.match_info["action"]
    if action not in CONTROL_ACTIONS:
        return _error(404, f"unknown action {action!r}; use one of {', '.join(CONTROL_ACTIONS)}")
    name, body = await _session_from_body(request)
    if name is None:
        return body
    try:
        live = SESSIONS.get(name)
    except SessionError as exc:
        return _error(409, f"{request.path}: {exc}")
    sup = live.supervisor
    result: dict = {"session": name}
    if action == "export":
        return await _export(request, name, body)
    if action == "delete":
        return await _delete(request, name, live)
    if action in ("start", "resume"):
        client_id = body.get("client_id")
        if client_id is not None and not isinstance(client_id, str):
            return _error(400, f"{request.path}: client_id must be a string")
        live.clear_write_error()
        try:
            result["prompt_id"] = await sup.start(client_id)
        except ControlRefused as exc:
            return _error(409, f"{request.path}: {exc}")
    elif action == "pause":
        if not sup.set_state("paused"):
            return _error(409, f"{request.path}: session {name!r} is {live.session.state}; nothing to "
                               f"pause (POST /dream_window/start runs it)")
    elif action == "stop":
        sup.set_state("stopped")
        await asyncio.get_running_loop().run_in_executor(None, live.settle_commits)
    else:
        sup.set_state("idle")  # nothing is queued after the iteration in flight
        if not await sup.wind_down(WIND_DOWN_WAIT):
            return _still_running(request, name, "reset")
        if live.session.state != "idle":  # started again while it waited: the reset still leaves it idle
            sup.set_state("idle")
        SESSIONS.reset(name)
    result.update(live.session.summary())
    log.info("dream_window[%s]: %s", name, action)
    return web.json_response(result)


def _still_running(request: web.Request, name: str, action: str) -> web.Response:
    """A delete or reset whose wait for the session's running iteration ran out."""
    return _error(409, f"{request.path}: session {name!r} still has an iteration running after {WIND_DOWN_WAIT:.0f} "
                       f"s; {action} again when it ends, or cancel it in ComfyUI's queue")


async def _delete(request: web.Request, name: str, live) -> web.Response:
    """Delete a session that is not running: its queued prompts leave the queue, the iteration still
    running ends first (``WIND_DOWN_WAIT`` s at most), then its live objects and its folder go."""
    running = f"{request.path}: session {name!r} is running; stop it first"
    if live.session.state == "running":
        return _error(409, running)
    if not await live.supervisor.wind_down(WIND_DOWN_WAIT):
        return _still_running(request, name, "delete")
    if live.session.state == "running":  # started again while its last iteration ran
        return _error(409, running)
    try:
        await asyncio.get_running_loop().run_in_executor(None, SESSIONS.delete, name)
    except OSError as exc:
        return _error(500, f"{request.path}: could not delete the folder of session {name!r} ({exc}); make "
                           f"{live.session.folder} writable, or remove it by hand, and delete again")
    log.info("dream_window[%s]: delete", name)
    return web.json_response({"session": name, "deleted": True})


async def control_get(request: web.Request) -> web.Response:
    """A GET (e.g. a cross-site link or image tag) never drives a session."""
    return web.json_response({"error": f"{request.path}: use POST with a JSON body"}, status=405,
                             headers={"Allow": "POST"})


def _disk_bytes(folder: Path) -> int:
    """Bytes under a session folder; files pruned by the frame writer meanwhile count as gone."""
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except FileNotFoundError:
            continue
    return total


async def sessions(request: web.Request) -> web.Response:
    listed = []
    for name in SESSIONS.names():
        try:
            live = SESSIONS.get(name)
        except (SessionError, KeyError) as exc:
            live, entry = None, {"session": name, "state": "broken", "last_error": {"message": str(exc)}}
        else:
            entry = live.session.summary()
        folder = SESSIONS.root / name
        entry["disk_bytes"] = 0 if folder.is_symlink() else _disk_bytes(folder)
        entry["stream_viewers"] = live.viewers() if live is not None else 0
        listed.append(entry)
    return web.json_response({"sessions": listed})


def _session_from_path(request: web.Request) -> tuple[str | None, web.Response | None]:
    raw = request.match_info["session"]
    try:
        name = validate_name(raw)
    except SessionError as exc:
        return None, _error(400, f"{request.path}: {exc}")
    try:
        known = SESSIONS.exists(name)
        if known:
            SESSIONS.get(name)  # loaded here, so a broken or linked state.json is refused, not a 500
    except SessionError as exc:  # a planted link, a file where the session folder should be, a broken state
        return None, _error(409, f"{request.path}: {exc}")
    if not known:
        return None, _error(404, f"{request.path}: unknown session {name!r}; GET /dream_window/sessions lists "
                                 f"the sessions")
    return name, None


def _int_param(request: web.Request, key: str, low: int, high: int) -> int | None:
    """An optional integer query value in [low, high]; ``ValueError`` with the rule otherwise."""
    raw = request.query.get(key)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 13 or not low <= int(raw) <= high:
        raise ValueError(f"{key} must be a whole number from {low} to {high}")
    return int(raw)


async def status(request: web.Request) -> web.Response:
    name, error = _session_from_path(request)
    if error:
        return error
    return web.json_response(SESSIONS.get(name).last_status())


async def frame(request: web.Request) -> web.Response:
    """The latest played frame, or ``?index=N`` while it is still on disk (the file as written)."""
    name, error = _session_from_path(request)
    if error:
        return error
    try:
        index = _int_param(request, "index", 1, MAX_INDEX)
    except ValueError as exc:
        return _error(400, f"{request.path}: {exc}")
    if index is None:
        latest = SESSIONS.get(name).publisher.latest()
        if latest is None:
            return _error(404, f"{request.path}: no frame has been played yet (buffering)")
        index = latest.index
    folder = SESSIONS.session(name).frames_dir
    if folder.is_symlink():
        return _error(409, f"{request.path}: {folder} is a link; remove it (frames are served from the session "
                           f"folder only)")
    path = folder / frame_name(index)
    try:
        data = await asyncio.get_running_loop().run_in_executor(None, path.read_bytes)
    except FileNotFoundError:
        return _error(404, f"{request.path}: frame {index} is not on disk (not made yet, or past the retention limit)")
    return web.Response(body=data, content_type="image/png",
                        headers={"X-Dream-Window-Frame": str(index), "Cache-Control": "no-cache"})


def _more_to_stream(name: str, publisher, sent: int) -> bool:
    """Whether a stream that sent frame ``sent`` (0: none) gets another one: the session generates, a frame
    it made is not shown yet, or the frame shown last is still on its way to the stream (none once the
    session was deleted)."""
    try:
        session = SESSIONS.session(name)
    except (KeyError, SessionError):
        return False
    if session.state == "running":
        return True
    next_index = publisher.player.metrics().next_index
    latest = publisher.latest()
    return (next_index is not None and next_index <= session.frames_produced()) or (
        latest is not None and latest.index > sent)


def _offer(queue: asyncio.Queue, item) -> None:
    """Queue for a viewer, dropping the oldest frame when it falls behind (bounded memory)."""
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(item)


async def stream(request: web.Request) -> web.StreamResponse:
    """MJPEG at the playback rate (``?format=png`` sends the frame files themselves).

    The stream ends once the session stops generating and its last frame was sent; a session that
    does not generate and has no frame to show is refused at once."""
    name, error = _session_from_path(request)
    if error:
        return error
    fmt = request.query.get("format", "jpeg")
    try:
        limit = _int_param(request, "limit", 1, 1_000_000)
    except ValueError as exc:
        return _error(400, f"{request.path}: {exc}")
    if fmt not in ("jpeg", "png"):
        return _error(400, f"{request.path}: format must be jpeg or png")
    publisher = SESSIONS.get(name).publisher
    if not _more_to_stream(name, publisher, 0):
        state = SESSIONS.session(name).state
        return _error(409, f"{request.path}: session {name!r} is {state} and has no frame to play; start it "
                           f"(POST /dream_window/start) and open the stream again")
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue(maxsize=2)
    key = publisher.subscribe(lambda shown: loop.call_soon_threadsafe(_offer, queue, shown))
    response = web.StreamResponse(headers={"Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                                           "Cache-Control": "no-cache"})
    sent, last = 0, 0
    try:
        await response.prepare(request)
        latest = publisher.latest()
        if latest is not None:
            _offer(queue, latest)
        while limit is None or sent < limit:
            try:
                shown = await asyncio.wait_for(queue.get(), STREAM_IDLE_CHECK)
            except asyncio.TimeoutError:
                if request.transport is None or request.transport.is_closing():
                    break  # the viewer left while nothing played (aiohttp does not cancel us)
                if not _more_to_stream(name, publisher, last):
                    break  # the session stopped and its last frame was sent
                continue
            if shown.index <= last:
                continue  # strictly increasing, even if a frame raced the first "latest" offer
            last = shown.index
            read = (lambda: Path(shown.path).read_bytes()) if fmt == "png" else (lambda: publisher.jpeg(shown))
            try:
                data = await loop.run_in_executor(None, read)
            except FileNotFoundError:
                continue
            head = (f"--{BOUNDARY}\r\nContent-Type: image/{fmt}\r\nContent-Length: {len(data)}\r\n"
                    f"X-Dream-Window-Frame: {shown.index}\r\n\r\n").encode()
            await response.write(head + data + b"\r\n")
            sent += 1
    except ConnectionResetError:
        pass  # the viewer went away; the loop is not disturbed
    finally:
        publisher.unsubscribe(key)
    return response


async def cache(request: web.Request) -> web.Response:
    """Inspect a session's cache: entries, recent injection decisions, the similarity trend."""
    name, error = _session_from_path(request)
    if error:
        return error
    loop = SESSIONS.get(name).memory.cache_loop
    if loop is None:
        return _error(404, f"{request.path}: session {name!r} has no cache loaded yet; run an iteration with a "
                           f"Dream Window Cache node wired in")
    entries = [{"id": e.cache_id, "source": e.source, "timestamp": e.timestamp, "has_latent": e.has_latent,
                "keyframe": e.generation_params.get("keyframe")} for e in loop.store.entries()]
    return web.json_response({"session": name, "cache": loop.store.directory.name,
                              "strategy": loop.store.strategy.name, "size": len(entries),
                              "capacity": loop.store.capacity, "eviction": loop.store.eviction,
                              "entries": entries, "decisions": loop.decisions, "trend": loop.trend(),
                              "stats": dataclasses.asdict(loop.stats()), "cache_error": loop.cache_error})


async def monitor(request: web.Request) -> web.Response:
    """The GPU monitor's state: on or off, whether it yields and why, its settings, ComfyUI's loaded models."""
    return web.json_response(MONITOR.state())


async def view(request: web.Request) -> web.Response:
    name, error = _session_from_path(request)
    if error:
        return error
    html = (VIEWER / "index.html").read_text("utf-8")
    return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-cache"})


async def viewer_asset(request: web.Request) -> web.Response:
    """The viewer's own files only: a fixed list, never a path from the request."""
    asset = request.match_info["asset"]
    if asset not in VIEWER_ASSETS:
        return _error(404, f"{request.path}: no such viewer file")
    return web.Response(body=(VIEWER / asset).read_bytes(), content_type=VIEWER_ASSETS[asset])


async def _export(request: web.Request, name: str, body: dict) -> web.Response:
    fmt = body.get("format", "webp")
    first, last, fps = body.get("first"), body.get("last"), body.get("fps", SESSIONS.session(name).settings.fps)
    for label, value in (("first", first), ("last", last)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INDEX):
            return _error(400, f"{request.path}: {label} must be a frame index from 1 to {MAX_INDEX}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 120:
        return _error(400, f"{request.path}: fps must be a number in (0, 120]")
    if fmt not in (*FORMATS, "zip"):
        return _error(400, f"{request.path}: format must be one of {', '.join(FORMATS)}, zip")
    folder = SESSIONS.session(name).frames_dir
    if folder.is_symlink():
        return _error(409, f"{request.path}: {folder} is a link; remove it (frames are exported from the session "
                           f"folder only)")
    paths = sorted(p for p in folder.glob("frame_*.png") if FRAME_RE.match(p.name)
                   and (first is None or int(p.name[6:14]) >= first) and (last is None or int(p.name[6:14]) <= last))
    if fmt == "zip":
        return await _export_zip(request, name, paths)
    try:
        data = await asyncio.get_running_loop().run_in_executor(None, export_frames, paths, fmt, float(fps))
    except ValueError as exc:
        return _error(400, f"{request.path}: {exc}")
    filename = f"{name}-{paths[0].stem[6:]}-{paths[-1].stem[6:]}.{fmt}"
    return web.Response(body=data, content_type=FORMATS[fmt],
                        headers={"Content-Disposition": f'attachment; filename="{filename}"',
                                 "X-Dream-Window-Frames": str(len(paths))})


async def _export_zip(request: web.Request, name: str, paths: list[Path]) -> web.StreamResponse:
    """The session's state and frames as a zip, sent while it is written (bounded memory: core.window.export)."""
    session = SESSIONS.session(name)
    loop = asyncio.get_running_loop()
    response = web.StreamResponse(headers={"Content-Type": "application/zip",
                                           "Content-Disposition": f'attachment; filename="{name}.zip"',
                                           "X-Dream-Window-Frames": str(len(paths))})
    await response.prepare(request)

    def send(chunk: bytes) -> None:  # on the export thread: waits until the socket took the chunk
        asyncio.run_coroutine_threadsafe(response.write(chunk), loop).result()

    try:
        await loop.run_in_executor(None, write_session_zip, session.folder, paths, send, session.lock)
    except ConnectionResetError:
        return response  # the client went away; nothing else to do
    except OSError as exc:
        log.error("dream_window[%s]: %s: the zip export stopped (%s); the download is incomplete, export again",
                  name, request.path, exc)
        return response
    await response.write_eof()
    return response


def register() -> None:
    """Add the routes to ComfyUI's server (once per process)."""
    routes = adapter.routes()
    routes.get("/dream_window/sessions")(sessions)
    routes.get("/dream_window/monitor")(monitor)
    routes.get("/dream_window/status/{session}")(status)
    routes.get("/dream_window/frame/{session}")(frame)
    routes.get("/dream_window/stream/{session}")(stream)
    routes.get("/dream_window/cache/{session}")(cache)
    routes.get("/dream_window/view/{session}")(view)
    routes.get("/dream_window/assets/{asset}")(viewer_asset)
    routes.post("/dream_window/{action}")(control)
    routes.get("/dream_window/{action}")(control_get)
