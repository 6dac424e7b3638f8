"""Starts and drives a real ComfyUI server (tests, the headless demo, benchmarks).

ComfyUI comes from COMFYUI_DIR, else from the harness build (``tools/harness/setup_comfyui.sh``).
The pack is linked into ``<base>/custom_nodes/dream_window``; models come from ``models``
(default: synthesised once per harness by ``tools/harness/make_tiny_models.py``), linked into
``<base>/models``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HARNESS = Path(os.environ.get("DW_HARNESS_DIR", REPO / ".harness"))
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR", HARNESS / "ComfyUI"))
PACK_NAME = "dream_window"
TINY_SD15 = "dream_window_tiny_sd15.safetensors"
TINY_CLIP_VISION = "dream_window_tiny_vitl.safetensors"
NEWEST_FRONTEND = Path(os.environ.get("DW_FRONTEND_DIR", HARNESS / "frontend")) / "comfyui_frontend_package" / "static"
"""The newest ComfyUI frontend, unpacked by ``tools/harness/setup_frontend.sh`` (served with ``--front-end-root``)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_models(kinds: tuple[str, ...] = ("taesd", "sd15", "clip_vision")) -> Path:
    """The synthesised models folder, made on first use (seeded, so identical every time)."""
    models = HARNESS / "models"
    missing = [k for k, f in (("taesd", "vae_approx/taesd_decoder.safetensors"),
                              ("sd15", f"checkpoints/{TINY_SD15}"),
                              ("clip_vision", f"clip_vision/{TINY_CLIP_VISION}"))
               if k in kinds and not (models / f).is_file()]
    if missing:
        subprocess.run([sys.executable, str(REPO / "tools" / "harness" / "make_tiny_models.py"), "--comfy", str(COMFYUI_DIR),
                        "--models", str(models), *missing], check=True)
    return models


class ComfyServer:
    """One ComfyUI process on a base directory; can be killed and restarted on the same base."""

    def __init__(self, base: Path, port: int | None = None, env: dict | None = None,
                 extra_packs: dict[str, Path] | None = None, models: Path | None = None,
                 python: str = sys.executable, listen: str = "127.0.0.1", cpu: bool = True,
                 comfyui_dir: Path = COMFYUI_DIR, link_pack: bool = True,
                 tls: tuple[Path, Path] | None = None, umask: int | None = None, args: tuple[str, ...] = ()):
        """``link_pack=False``: the pack is not linked in (e.g. a test installed it into ``custom_nodes``).
        ``tls``: (certificate, key) files to serve https with (``--tls-certfile/--tls-keyfile``); the
        helpers below trust that certificate (a self-signed one for 127.0.0.1 made by a test). ``umask``: the
        server process's umask (default: inherited). ``args``: more ComfyUI command-line arguments
        (e.g. ``--disable-metadata``)."""
        self.base = Path(base)
        self.comfyui_dir = Path(comfyui_dir)
        self.port = port or free_port()
        self.env = env or {}
        self.python = python
        self.listen = listen
        self.cpu = cpu
        self.tls = tls
        self.umask = umask
        self.args = tuple(args)
        self.proc: subprocess.Popen | None = None
        self.client_id = uuid.uuid4().hex
        (self.base / "custom_nodes").mkdir(parents=True, exist_ok=True)
        for name, target in {**({PACK_NAME: REPO} if link_pack else {}), **(extra_packs or {})}.items():
            link = self.base / "custom_nodes" / name
            if not link.exists():
                link.symlink_to(target, target_is_directory=True)
        link = self.base / "models"
        if not link.exists():
            link.symlink_to(models or ensure_models(), target_is_directory=True)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.base / "comfy.log"

    def start(self, timeout: float = 120.0) -> "ComfyServer":
        cmd = [self.python, "main.py", "--listen", self.listen, "--port", str(self.port),
               "--disable-auto-launch", "--base-directory", str(self.base), "--database-url", "sqlite:///:memory:",
               "--disable-api-nodes"]
        if self.cpu:
            cmd.append("--cpu")
        if self.tls:
            cmd += ["--tls-certfile", str(self.tls[0]), "--tls-keyfile", str(self.tls[1])]
        cmd += self.args
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=self.comfyui_dir, stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **self.env}, start_new_session=True,
                                     umask=-1 if self.umask is None else self.umask)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        raise TimeoutError(f"ComfyUI did not answer within {timeout} s; log:\n{self.log_tail()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    # -- HTTP helpers --
    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 30) -> tuple[int, bytes, dict]:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        context = ssl.create_default_context(cafile=str(self.tls[0])) if self.tls else None
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as err:
            return err.code, err.read(), dict(err.headers)

    def get(self, path: str, timeout: float = 30):
        status, body, _ = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise AssertionError(f"GET {path} -> {status}: {body[:500]!r}")
        return json.loads(body)

    def post_json(self, path: str, obj) -> tuple[int, dict]:
        """Status and JSON reply; a reply that is not JSON (aiohttp's own 500 page) comes as ``{"text": ...}``."""
        status, body, _ = self.request("POST", path, json.dumps(obj).encode(), {"Content-Type": "application/json"})
        try:
            return status, (json.loads(body) if body else {})
        except ValueError:
            return status, {"text": body.decode(errors="replace")}

    def queue(self, prompt: dict) -> str:
        status, data = self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200:
            raise AssertionError(f"POST /prompt -> {status}: {data}")
        return data["prompt_id"]

    def control(self, action: str, session: str) -> dict:
        status, data = self.post_json(f"/dream_window/{action}", {"session": session})
        if status != 200:
            raise AssertionError(f"POST /dream_window/{action} -> {status}: {data}")
        return data

    def session(self, name: str) -> dict | None:
        return next((s for s in self.get("/dream_window/sessions")["sessions"] if s["session"] == name), None)

    def wait_for(self, predicate, timeout: float = 60.0, what: str = "condition", interval: float = 0.05):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value {last!r}\n"
                             f"server log tail:\n{self.log_tail(3000)}")


def load_api_workflow(name: str = "dream_window") -> dict:
    return json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())
