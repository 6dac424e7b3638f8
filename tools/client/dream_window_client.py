"""A small stdlib-only client for Dream Window on a ComfyUI server.

    python tools/client/dream_window_client.py queue workflows/api/dream_window.json \\
        --set 1.ckpt_name=my_model.safetensors --set 4.name=dream
    python tools/client/dream_window_client.py sessions
    python tools/client/dream_window_client.py stop dream        # also: start, pause, resume, reset

``--server`` (or DREAM_WINDOW_SERVER) picks the server, default http://127.0.0.1:8188.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ACTIONS = ("start", "pause", "resume", "stop", "reset")


def call(server: str, method: str, path: str, body=None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(server.rstrip("/") + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        raise SystemExit(f"{method} {path} -> {err.code}: {err.read().decode(errors='replace')}") from None


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(workflow: dict, overrides: list[str]) -> dict:
    for item in overrides:
        target, _, value = item.partition("=")
        node, _, field = target.partition(".")
        if not _ or node not in workflow:
            raise SystemExit(f"--set {item!r}: use NODE_ID.INPUT=VALUE with a node id of the workflow")
        workflow[node]["inputs"][field] = parse_value(value)
    return workflow


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default=os.environ.get("DREAM_WINDOW_SERVER", "http://127.0.0.1:8188"))
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("queue", help="queue an API-format workflow once (the loop then runs by itself)")
    q.add_argument("workflow", type=Path)
    q.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE")
    sub.add_parser("sessions", help="list sessions with state, iteration, frames and last error")
    for action in ACTIONS:
        sub.add_parser(action, help=f"{action} a session").add_argument("session")
    args = parser.parse_args(argv)

    if args.command == "queue":
        workflow = apply_overrides(json.loads(args.workflow.read_text()), args.set)
        result = call(args.server, "POST", "/prompt", {"prompt": workflow, "client_id": uuid.uuid4().hex})
    elif args.command == "sessions":
        result = call(args.server, "GET", "/dream_window/sessions")
    else:
        result = call(args.server, "POST", f"/dream_window/{args.command}", {"session": args.session})
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
