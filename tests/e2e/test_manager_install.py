"""Installed the way users install it: ComfyUI-Manager 4.3's `cm-cli install <git url>` from a git
repository served on 127.0.0.1, into a clean ComfyUI, which then loads the nodes, the web extension
and the templates from `custom_nodes/dream-window` and runs the loop; torch is left as it was.

The Manager runs in tools/harness/setup_manager.sh's venv, layered on the harness venv: it pip-installs the
pack's requirements into that venv (all present already), never into the harness venv.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import threading

import pytest

from helpers.dream_loop import NODE_IDS, dream_workflow
from helpers.worktree import snapshot
from tools.harness.comfy_process import COMFYUI_DIR, HARNESS, REPO, ComfyServer, free_port

pytestmark = pytest.mark.e2e

MANAGER_PYTHON = HARNESS / "manager-venv" / "bin" / "python"
FOLDER = "dream-window"
"""The folder the Manager names after the git URL (and the registry after pyproject's name)."""
NOT_COPIED = {".git", "models", "output", "input", "temp", "user"}
"""Top-level folders of the harness ComfyUI a clean install has none of (models are linked in)."""
TORCH_FINGERPRINT = """
import importlib.metadata, json, os, torch
init = os.stat(torch.__file__)
print(json.dumps({"version": torch.__version__, "file": torch.__file__, "inode": init.st_ino,
                  "mtime_ns": init.st_mtime_ns, "dist": str(importlib.metadata.distribution("torch")._path)}))
"""


CONSOLE_COLUMNS = 4000
"""The Manager prints through rich, which wraps at the console width (80 without a terminal): the
commands it ran would break across lines at a width that depends on the path of the checkout."""


def clean_comfyui(dest):
    """A copy of the harness ComfyUI's code: no custom node but ComfyUI's own examples, no user data."""
    def ignore(folder, names):
        skip = {n for n in names if n == "__pycache__" or (folder == str(COMFYUI_DIR) and n in NOT_COPIED)}
        if folder == str(COMFYUI_DIR / "custom_nodes"):
            skip |= {n for n in names if not os.path.isfile(os.path.join(folder, n))}
        return skip
    shutil.copytree(COMFYUI_DIR, dest, ignore=ignore)
    return dest


@pytest.fixture
def git_url(tmp_path):
    """This working tree as a bare repository on a dumb-HTTP git server on 127.0.0.1."""
    served = tmp_path / "served"
    snapshot(tmp_path / "src")
    subprocess.run(["git", "clone", "-q", "--bare", str(tmp_path / "src"), str(served / f"{FOLDER}.git")], check=True)
    subprocess.run(["git", "update-server-info"], cwd=served / f"{FOLDER}.git", check=True)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()),
                                             functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/{FOLDER}.git"
    server.shutdown()
    server.server_close()


def torch_fingerprint() -> dict:
    out = subprocess.run([str(MANAGER_PYTHON), "-c", TORCH_FINGERPRINT], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_cm_cli_installs_the_pack_from_git_into_a_clean_comfyui(tmp_path, git_url, artifacts):
    assert MANAGER_PYTHON.exists(), f"ComfyUI-Manager missing at {MANAGER_PYTHON.parent}: run tools/harness/setup_manager.sh"
    comfyui = clean_comfyui(tmp_path / "ComfyUI")
    torch_before = torch_fingerprint()
    result = subprocess.run([str(MANAGER_PYTHON), "-m", "cm_cli", "install", git_url],
                            env={**os.environ, "COMFYUI_PATH": str(comfyui), "COLUMNS": str(CONSOLE_COLUMNS)},
                            capture_output=True, text=True, timeout=180)
    log = result.stdout + result.stderr
    (artifacts / "cm-cli-install.log").write_text(log)
    assert result.returncode == 0 and f"[INSTALLED] {git_url}" in log, log[-4000:]
    installed = comfyui / "custom_nodes" / FOLDER
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=installed, capture_output=True, text=True, check=True)
    source = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path / "src", capture_output=True, text=True,
                            check=True)
    assert head.stdout == source.stdout, "the Manager cloned the served commit"
    for requirement in (REPO / "requirements.txt").read_text().split():
        assert (f"'install', '{requirement}'" in log
                or f"skip black listed pip installation: '{requirement}'" in log), f"{requirement} not handled"
    assert not [line for line in log.splitlines() if "Successfully installed" in line and "torch" in line], log
    assert torch_fingerprint() == torch_before, "the install touched torch"

    server = ComfyServer(comfyui, comfyui_dir=comfyui, link_pack=False, python=str(MANAGER_PYTHON)).start()
    try:
        info = server.get("/object_info")
        ours = {node_id for node_id, node in info.items() if node["python_module"] == f"custom_nodes.{FOLDER}"}
        assert set(NODE_IDS) <= ours and all(node_id.startswith("DreamWindow") for node_id in ours), ours
        assert not [n for n in info if n.startswith("DreamWindow") and n not in ours], "every node from the install"
        script = f"/extensions/{FOLDER}/js/dream_window.js"
        assert script in server.get("/extensions")
        status, body, _ = server.request("GET", script)
        assert status == 200 and body == (REPO / "web" / "js" / "dream_window.js").read_bytes()
        assert sorted(server.get("/api/workflow_templates")[FOLDER]) == ["dream_window", "dream_window_clip"]
        status, body, _ = server.request("GET", f"/api/workflow_templates/{FOLDER}/dream_window.json")
        assert status == 200 and json.loads(body) == json.loads((REPO / "workflows" / "dream_window.json").read_text())
        server.queue(dream_workflow("installed", autoqueue=False))
        server.wait_for(lambda: (server.session("installed") or {}).get("frames", 0) >= 1, timeout=60,
                        what="a keyframe from the installed pack")
        assert not [line for line in server.log_tail(10**6).splitlines() if "IMPORT FAILED" in line and FOLDER in line]
    finally:
        server.stop()
        shutil.copy(server.log_path, artifacts / "comfy-manager-install.log")
    assert torch_fingerprint() == torch_before
