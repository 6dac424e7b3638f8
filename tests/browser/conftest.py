"""Debian's Chromium, headless, driven by Playwright (which never downloads a browser here)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from helpers.browser import Console
from helpers.dream_loop import TEST_PACKS
from tools.harness.chromium import CHROMIUM, CHROMIUM_ARGS
from tools.harness.comfy_process import NEWEST_FRONTEND, ComfyServer

VIEWPORT = {"width": 1280, "height": 800}
FRONTENDS = ("bundled", "newest")
"""The frontend ComfyUI ships (1.32.9 with 0.3.75), and the newest comfyui-frontend-package."""


@pytest.fixture(scope="session", params=FRONTENDS)
def frontend(request) -> str:
    """Every browser test runs once per frontend."""
    return request.param


@pytest.fixture(scope="session")
def artifacts(artifacts, frontend) -> Path:
    """Screenshots and console logs: those of the newest frontend in a folder of their own."""
    if frontend == "bundled":
        return artifacts
    folder = artifacts / f"frontend-{frontend}"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def comfy(frontend, comfy, artifacts):
    """The server whose frontend the browser tests run against.

    ``bundled`` is the shared end-to-end server; ``newest`` is a server of its own on the same ComfyUI,
    serving the newest frontend (``tools/harness/setup_frontend.sh``) with ``--front-end-root``.
    """
    if frontend == "bundled":
        yield comfy
        return
    if not (NEWEST_FRONTEND / "index.html").is_file():
        pytest.fail(f"{NEWEST_FRONTEND} is missing: run `bash tools/harness/setup_frontend.sh` (with DW_FRONTEND_DIR "
                    "set as for the tests). The browser tests run against both frontends and never skip.")
    base = Path(tempfile.mkdtemp(prefix="dw-comfy-newest-"))
    server = ComfyServer(base, extra_packs=TEST_PACKS, args=("--front-end-root", str(NEWEST_FRONTEND))).start()
    yield server
    server.stop()
    shutil.copy(server.log_path, artifacts / "comfy.log")
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `bash tools/harness/setup_browser.sh` (apt-get install chromium). "
                    "The browser tests are part of the suite and never skip.")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def open_page(browser, artifacts):
    """Opens a page in a fresh browser context: ``open_page(name)`` → (page, Console).

    The contexts close at the end of the module; each page's console log is kept as the
    artifact ``browser-<name>-console.txt``.
    """
    opened = []

    def open_page(name: str):
        context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
        page = context.new_page()
        console = Console(page)
        opened.append((name, context, console))
        return page, console

    yield open_page
    for name, context, console in opened:
        console.save(artifacts / f"browser-{name}-console.txt")
        context.close()
