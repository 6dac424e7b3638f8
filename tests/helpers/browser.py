"""Helpers the browser tests share: the graph editor, the pack's sidebar button on every frontend, and a
page's console."""

from __future__ import annotations

import re

PACK_MARKERS = ("dream_window", "dream-window", "viewer.mjs")
"""Text that ties a console message to the pack: its JS URL, its routes, its events."""
TAB_BUTTON = "Dream Window: live sessions, playback and export"
"""The accessible name of the pack's sidebar button (its tooltip, then its key, "(d)") on every frontend version."""


def open_graph_editor(comfy, open_page, name: str):
    """The graph editor as a returning user sees it, once the pack's extension is in: (page, Console)."""
    # A new user gets the template dialog on top of the graph; skip it as a returning user would.
    status, _ = comfy.post_json("/api/settings/Comfy.TutorialCompleted", True)
    assert status == 200
    page, console = open_page(name)
    page.goto(comfy.url)
    tab_button(page).wait_for(timeout=60000)  # the pack's JS registered its tab, the node defs are in
    return page, console


def tab_button(page):
    """The pack's sidebar button, by role and accessible name (its class differs between frontends)."""
    return page.get_by_role("button", name=re.compile("^" + re.escape(TAB_BUTTON)))


class Console:
    """Every console message and uncaught error of a page, as (kind, text, source URL)."""

    def __init__(self, page):
        self.entries: list[tuple[str, str, str]] = []
        page.on("console", lambda m: self.entries.append((m.type, m.text, m.location.get("url", ""))))
        page.on("pageerror", lambda e: self.entries.append(("pageerror", f"{e.name}: {e.message}\n{e.stack}", "")))

    def problems(self) -> list[tuple[str, str, str]]:
        """Errors, warnings and uncaught errors from the pack's own files, routes and events.

        Other console errors (the frontend's 404s for an optional user.css or, on the newest frontend,
        for a jobs API that ComfyUI 0.3.75 lacks, its blocked call to api.comfy.org, its own uncaught
        start-up error, ...) are the frontend's own; they are kept in the log artifact.
        """
        return [entry for entry in self.entries if _is_problem(*entry)]

    def save(self, path) -> None:
        path.write_text("".join(f"[{kind}] {text} ({url})\n" for kind, text, url in self.entries))


def _is_problem(kind: str, text: str, url: str) -> bool:
    source = f"{text} {url}"  # an uncaught error's text holds its stack: the files it went through
    return kind in ("error", "warning", "pageerror") and any(m in source.lower() for m in PACK_MARKERS)
