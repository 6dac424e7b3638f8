"""Bench-only ComfyUI instrumentation (loaded as a custom-node folder; defines no nodes).

ComfyUI 0.3.75 reports no per-node times, and its ``execution_start``/``execution_success``
timestamps have millisecond resolution. This pack wraps the two functions that emit them:

* ``execution.PromptExecutor.execute_async``: every prompt's start and end
  (``time.perf_counter`` of the server process);
* ``execution.execute``: every node's start and wall time, only while node timing is on. Then the
  device is synchronised before and after each node, so GPU work is charged to the node
  that queued it (this removes CPU/GPU overlap between nodes: measure per-iteration wall
  time with node timing off).

Routes: ``GET /dw_bench/timings`` returns and forgets the finished prompts;
``POST /dw_bench/node_timing`` with ``{"enabled": bool}`` switches node timing;
``POST /dw_bench/node_timing`` with ``{"enabled": true, "profile": "<class_type>"}`` also runs
that node class under cProfile, and ``GET /dw_bench/profile`` returns its statistics so far
(the 30 costliest functions by cumulative time) and forgets them.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import threading
import time

import execution
import torch
from aiohttp import web
from server import PromptServer

NODE_CLASS_MAPPINGS: dict = {}

_lock = threading.Lock()
_finished: list[dict] = []
_state: dict = {"node_timing": False, "current": None, "profile": None, "profiler": None}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


_execute = execution.execute
_execute_async = execution.PromptExecutor.execute_async


async def _timed_execute(server, dynprompt, caches, current_item, *args, **kwargs):
    record = _state["current"]
    if not _state["node_timing"] or record is None:
        return await _execute(server, dynprompt, caches, current_item, *args, **kwargs)
    cached = caches.outputs.get(current_item) is not None
    class_type = dynprompt.get_node(current_item)["class_type"]
    profiler = _state["profiler"] if class_type == _state["profile"] else None
    _sync()
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    try:
        result = await _execute(server, dynprompt, caches, current_item, *args, **kwargs)
    finally:
        if profiler is not None:
            profiler.disable()
    _sync()
    record["nodes"].append({"id": current_item, "class_type": class_type, "start": start,
                            "ms": (time.perf_counter() - start) * 1e3, "cached": cached})
    return result


async def _timed_execute_async(self, prompt, prompt_id, *args, **kwargs):
    record = {"prompt_id": prompt_id, "start": time.perf_counter(), "nodes": [],
              "node_timing": _state["node_timing"]}
    _state["current"] = record
    try:
        return await _execute_async(self, prompt, prompt_id, *args, **kwargs)
    finally:
        record["end"] = time.perf_counter()
        record["success"] = bool(self.success)
        _state["current"] = None
        with _lock:
            _finished.append(record)


execution.execute = _timed_execute
execution.PromptExecutor.execute_async = _timed_execute_async
routes = PromptServer.instance.routes


@routes.get("/dw_bench/timings")
async def timings(request: web.Request) -> web.Response:
    with _lock:
        records = list(_finished)
        _finished.clear()
    return web.json_response({"records": records, "now": time.perf_counter()})


@routes.post("/dw_bench/node_timing")
async def node_timing(request: web.Request) -> web.Response:
    body = await request.json()
    _state["node_timing"] = bool(body.get("enabled"))
    _state["profile"] = body.get("profile") if _state["node_timing"] else None
    if _state["profile"] and _state["profiler"] is None:
        _state["profiler"] = cProfile.Profile()
    return web.json_response({"node_timing": _state["node_timing"], "profile": _state["profile"]})


@routes.get("/dw_bench/profile")
async def profile(request: web.Request) -> web.Response:
    profiler, _state["profiler"] = _state["profiler"], None
    if profiler is None:
        return web.json_response({"stats": ""})
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
    return web.json_response({"stats": text.getvalue()})
