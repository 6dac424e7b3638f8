"""Debian's Chromium, headless, driven by Playwright (which never downloads a browser here)."""

from __future__ import annotations

import os

import pytest
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
KNOWN_FRONTEND_ERROR = "Cannot read properties of undefined (reading 'id')"
"""An uncaught error the ComfyUI frontend (1.32.9) always logs at start-up; not the pack's."""
PACK_MARKERS = ("dream_window", "dream-window", "viewer.mjs")
"""Text that ties a console message to the pack: its JS URL, its routes, its events."""
VIEWPORT = {"width": 1280, "height": 800}


@pytest.fixture(scope="session")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `bash harness/setup_browser.sh` (apt-get install chromium). "
                    "The browser tests are part of the suite and never skip.")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Console:
    """Every console message and uncaught error of a page, as (kind, text, source URL)."""

    def __init__(self, page):
        self.entries: list[tuple[str, str, str]] = []
        page.on("console", lambda m: self.entries.append((m.type, m.text, m.location.get("url", ""))))
        page.on("pageerror", lambda e: self.entries.append(("pageerror", f"{e.name}: {e.message}\n{e.stack}", "")))

    def problems(self) -> list[tuple[str, str, str]]:
        """Errors and warnings from the pack, and uncaught errors other than the frontend's known one.

        Other console errors (the frontend's 404s for an optional user.css, its blocked call to
        api.comfy.org, ...) are the frontend's own; they are kept in the log artifact.
        """
        return [entry for entry in self.entries if _is_problem(*entry)]

    def save(self, path) -> None:
        path.write_text("".join(f"[{kind}] {text} ({url})\n" for kind, text, url in self.entries))


def _is_problem(kind: str, text: str, url: str) -> bool:
    if kind == "pageerror":
        return KNOWN_FRONTEND_ERROR not in text
    source = f"{text} {url}"
    return kind in ("error", "warning") and any(m in source.lower() for m in PACK_MARKERS)


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
