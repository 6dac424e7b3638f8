"""The README's Python client drives a loop end to end."""

import json
import subprocess
import sys

import pytest

from tools.harness.comfy_process import REPO, TINY_SD15

pytestmark = pytest.mark.e2e
CLIENT = [sys.executable, str(REPO / "tools" / "client" / "dream_window_client.py")]


def client(comfy, *args):
    out = subprocess.run([*CLIENT, "--server", comfy.url, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_client_queues_lists_and_stops(comfy):
    queued = client(comfy, "queue", str(REPO / "workflows" / "api" / "dream_window.json"),
                    "--set", f"1.ckpt_name={TINY_SD15}", "--set", "4.name=via_client",
                    "--set", "5.width=64", "--set", "5.height=64", "--set", "6.steps=2")
    assert queued["prompt_id"]
    comfy.wait_for(lambda: (comfy.session("via_client") or {}).get("iteration", 0) >= 3, timeout=60, what="3 iterations")
    listed = {s["session"]: s for s in client(comfy, "sessions")["sessions"]}
    assert listed["via_client"]["state"] == "running"
    assert client(comfy, "stop", "via_client")["state"] == "stopped"
    bad = subprocess.run([*CLIENT, "--server", comfy.url, "stop", "nobody_here"], capture_output=True, text=True)
    assert bad.returncode != 0 and "404" in bad.stderr
