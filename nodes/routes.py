"""HTTP routes under ``/dream_window/`` (ComfyUI also serves each one under ``/api/``).

Control routes take POST with ``Content-Type: application/json`` only, so neither a
cross-site GET nor a ``text/plain`` form post (which skips the browser's CORS preflight)
can drive a session. Every error is JSON: ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web

from ..core.session import SessionError, validate_name
from . import comfy_adapter as comfy
from .runtime import RUNTIME

log = logging.getLogger("dream_window")

CONTROL_ACTIONS = ("start", "pause", "resume", "stop", "reset")
MAX_BODY = 64 * 1024


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _session_from_body(request: web.Request):
    """(session name, body) from a JSON control request, or an error response."""
    if request.content_type != "application/json":
        return None, _error(415, f"{request.path}: send a JSON body with Content-Type: application/json")
    if request.content_length is not None and request.content_length > MAX_BODY:
        return None, _error(413, f"{request.path}: body too large")
    try:
        body = json.loads(await request.read())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, _error(400, f'{request.path}: the body is not valid JSON; send {{"session": "<name>"}}')
    if not isinstance(body, dict) or "session" not in body:
        return None, _error(400, f'{request.path}: send {{"session": "<name>"}}')
    try:
        name = validate_name(body["session"])
    except SessionError as exc:
        return None, _error(400, f"{request.path}: {exc}")
    if not RUNTIME.registry.exists(name):
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
        sup = RUNTIME.supervisor(name)
    except SessionError as exc:
        return _error(409, f"{request.path}: {exc}")
    result: dict = {"session": name}
    if action in ("start", "resume"):
        client_id = body.get("client_id")
        if client_id is not None and not isinstance(client_id, str):
            return _error(400, f"{request.path}: client_id must be a string")
        try:
            result["prompt_id"] = await sup.start(client_id)
        except LookupError as exc:
            return _error(409, f"{request.path}: {exc.args[0]}")
    elif action == "pause":
        sup.set_state("paused")
    elif action == "stop":
        sup.set_state("stopped")
    else:
        sup.set_state("idle")
        RUNTIME.session(name).reset()
    result.update(RUNTIME.session(name).summary())
    log.info("dream_window[%s]: %s", name, action)
    return web.json_response(result)


async def control_get(request: web.Request) -> web.Response:
    """A GET (e.g. a cross-site link or image tag) never drives a session."""
    return web.json_response({"error": f"{request.path}: use POST with a JSON body"}, status=405,
                             headers={"Allow": "POST"})


async def sessions(request: web.Request) -> web.Response:
    listed = []
    for name in RUNTIME.registry.names():
        try:
            listed.append(RUNTIME.session(name).summary())
        except (SessionError, KeyError) as exc:
            listed.append({"session": name, "state": "broken", "last_error": {"message": str(exc)}})
    return web.json_response({"sessions": listed})


def register() -> None:
    """Add the routes to ComfyUI's server (once per process)."""
    routes = comfy.routes()
    routes.get("/dream_window/sessions")(sessions)
    routes.post("/dream_window/{action}")(control)
    routes.get("/dream_window/{action}")(control_get)
