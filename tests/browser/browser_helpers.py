"""Helpers the browser tests share: the graph editor and the pack's sidebar button on every frontend."""

from __future__ import annotations

import re

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
