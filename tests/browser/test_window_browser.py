"""What a person sees, in a real headless Chromium: the viewer page, the graph UI, its panel."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
import zipfile
from collections import Counter

import pytest
from PIL import Image

from helpers.browser import TAB_BUTTON, open_graph_editor, tab_button
from helpers.dream_loop import held_iteration, running_with_a_keyframe
from helpers.playback import FPS, frame_file, start_playback
from tools.harness.comfy_process import PACK_NAME, REPO

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

SESSION = "win_browser"

# The frame on top of a crossfade stage: its index and the SHA-256 of its decoded RGBA pixels, read
# back from a canvas. (The page cannot fetch its own blob: URLs again: ComfyUI's CSP allows
# connect-src 'self' only.)
DISPLAYED = """async (selector) => {
  const img = document.querySelector(selector);
  const index = Number(img.dataset.frame);
  const canvas = new OffscreenCanvas(img.naturalWidth, img.naturalHeight);
  const context = canvas.getContext("2d");
  context.drawImage(img, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", pixels));
  return [index, Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("")];
}"""


@pytest.fixture(scope="module")
def session(comfy):
    """A loop playing at ``FPS`` for the module; the panel test stops it."""
    start_playback(comfy, SESSION)
    yield SESSION
    comfy.post_json("/dream_window/stop", {"session": SESSION})


@pytest.fixture(scope="module")
def graph_ui(comfy, open_page):
    """The graph UI, loaded once for the module: (page, Console)."""
    return open_graph_editor(comfy, open_page, "graph-ui")


def assert_frames_match_disk(comfy, page, session: str, selector: str, samples: int = 3) -> None:
    """The displayed picture is, pixel for pixel, the frame file of its index, at several moments."""
    seen = set()
    for _ in range(samples):
        page.wait_for_function("([selector, seen]) => document.querySelector(selector)?.dataset.frame > seen",
                               arg=[selector, max(seen, default=0)], timeout=30000)
        index, digest = page.evaluate(DISPLAYED, selector)
        with Image.open(frame_file(comfy, session, index)) as png:
            assert digest == hashlib.sha256(png.convert("RGBA").tobytes()).hexdigest(), f"frame {index}"
        seen.add(index)


def wait_for_text(page, selector: str, text: str) -> None:
    page.wait_for_function("([selector, text]) => document.querySelector(selector)?.textContent === text",
                           arg=[selector, text], timeout=10000)


def test_viewer_page_plays_the_frames_in_order_and_shows_status(comfy, open_page, session, artifacts):
    page, console = open_page("viewer")
    page.goto(f"{comfy.url}/dream_window/view/{session}")
    page.wait_for_function("window.dreamWindowViewer?.stage.history.length >= 12", timeout=60000)
    assert_frames_match_disk(comfy, page, session, "#stage img.dw-front")
    history = page.evaluate("window.dreamWindowViewer.stage.history")
    assert all(a < b for a, b in itertools.pairwise(history)), f"frames shown out of order: {history}"
    stage, front = page.evaluate("[document.querySelector('#stage').dataset.frame, "
                                 "document.querySelector('#stage img.dw-front').dataset.frame]")
    assert stage == front, "the stage names the frame on top"

    # Default crossfade 0.75 s, capped below the frame interval (0.8 of it).
    duration = page.evaluate("window.dreamWindowViewer.stage.fade.effect.getTiming().duration")
    assert duration == pytest.approx(min(750, 0.8 * 1000 / FPS))

    page.wait_for_function("document.querySelector('#status [data-key=fps]')?.textContent.endsWith('/8 fps')")
    status = {key: page.inner_text(f"#status [data-key={key}]") for key in ("frame", "state", "cache", "prompt")}
    assert status["state"] in ("running", "buffering") and status["frame"].startswith("frame ")
    assert status["cache"].startswith("cache ") and status["prompt"]
    page.mouse.move(400, 300)  # the buttons show while the pointer moves
    page.wait_for_timeout(700)  # their fade-in
    page.screenshot(path=str(artifacts / "browser-viewer.png"))

    # The page's buttons drive the session (POST JSON).
    page.click("button[data-action=pause]")
    comfy.wait_for(lambda: comfy.session(session)["state"] == "paused", timeout=10, what="pause from the viewer")
    page.click("button[data-action=start]")
    comfy.wait_for(lambda: comfy.session(session)["state"] == "running", timeout=10, what="start from the viewer")

    # An OBS browser source: the picture only, with a custom crossfade.
    page.goto(f"{comfy.url}/dream_window/view/{session}?chrome=0&crossfade=0.05")
    page.wait_for_function("window.dreamWindowViewer?.stage.history.length >= 3", timeout=60000)
    assert page.is_hidden(".dw-chrome") and page.is_hidden("#message")
    assert page.evaluate("window.dreamWindowViewer.stage.fade.effect.getTiming().duration") == pytest.approx(50)
    page.screenshot(path=str(artifacts / "browser-viewer-obs.png"))
    assert not console.problems(), console.problems()


def focused(page, expression: str = "el"):
    """``expression`` of the focused element ``el`` (null: the page itself has the focus)."""
    return page.evaluate(f"(() => {{ const el = document.activeElement; "
                         f"return el === document.body ? null : {expression}; }})()")


def has_visible_focus(page) -> bool:
    return focused(page, "getComputedStyle(el).outlineStyle !== 'none' && el.matches(':focus-visible')")


def tab_to(page, expression: str, most: int = 30) -> None:
    """Tab forward until ``expression`` (of the focused element ``el``) holds."""
    for _ in range(most):
        page.keyboard.press("Tab")
        if focused(page, f"Boolean({expression})"):
            return
    raise AssertionError(f"{most} Tabs never reached {expression}; the focus is on {focused(page, 'el.outerHTML')}")


def test_viewer_works_from_the_keyboard(comfy, open_page, session):
    page, console = open_page("viewer-keyboard")
    page.goto(f"{comfy.url}/dream_window/view/{session}")
    page.wait_for_function("window.dreamWindowViewer?.stage.history.length >= 1", timeout=60000)
    for name in ("Start", "Pause", "Stop", "Full screen"):  # each control by its accessible name
        assert page.get_by_role("button", name=name, exact=True).count() == 1, name

    page.keyboard.press("Tab")  # the first stop is the first control, drawn with a visible focus ring
    assert focused(page, "el.dataset.action") == "start" and has_visible_focus(page)
    page.keyboard.press("Tab")
    assert focused(page, "el.dataset.action") == "pause"
    page.keyboard.press("Space")
    comfy.wait_for(lambda: comfy.session(session)["state"] == "paused", timeout=10, what="Space on Pause")
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Enter")
    comfy.wait_for(lambda: comfy.session(session)["state"] == "running", timeout=10, what="Enter on Start")
    assert page.is_visible(".dw-buttons") and page.evaluate("!document.body.classList.contains('dw-idle')")

    page.keyboard.press("Escape")  # the controls step aside at once, the picture alone stays
    assert focused(page) is None
    page.wait_for_function("getComputedStyle(document.querySelector('.dw-buttons')).opacity === '0'")
    assert not console.problems(), console.problems()


def test_graph_ui_loads_the_pack_and_opens_its_template(comfy, graph_ui, frontend, artifacts):
    page, console = graph_ui
    page.get_by_role("button", name="Templates", exact=True).click()
    page.get_by_role("button", name=PACK_NAME, exact=True).click()  # the pack's entry under Extensions
    card = page.locator(f'[data-testid="template-workflow-{PACK_NAME}"]')
    card.wait_for(timeout=20000)
    page.screenshot(path=str(artifacts / "browser-template-browser.png"))
    card.click()
    page.wait_for_function("window.comfyAPI.app.app.graph.nodes.some((n) => n.type === 'DreamWindowSession')",
                           timeout=20000)
    types = page.evaluate("window.comfyAPI.app.app.graph.nodes.map((n) => n.type)")
    shipped = json.loads((REPO / "workflows" / f"{PACK_NAME}.json").read_text())
    assert Counter(types) == Counter(node["type"] for node in shipped["nodes"])
    unknown = page.evaluate("window.comfyAPI.app.app.graph.nodes.map((n) => n.type)"
                            ".filter((type) => !(type in window.LiteGraph.registered_node_types))")
    assert not unknown, f"nodes the frontend does not know: {unknown}"
    page.screenshot(path=str(artifacts / "browser-template-loaded.png"))

    # The checkpoint the template names is not installed: the frontend offers its download, from the
    # loader's properties (the newest frontend in its missing-model panel, 1.32.9 in a dialog).
    checkpoint = next(n for n in shipped["nodes"] if n["type"] == "CheckpointLoaderSimple")["widgets_values"][0]
    if frontend == "newest":
        page.get_by_text(f"{checkpoint} is missing").wait_for(timeout=20000)
        page.get_by_role("button", name="View details").click()
        download = page.get_by_role("button", name=f"Download {checkpoint}")
    else:
        dialog = page.get_by_role("dialog").filter(has_text=f"checkpoints / {checkpoint}")
        download = dialog.get_by_role("button", name=re.compile("^Download"))
    download.wait_for(timeout=20000)
    page.screenshot(path=str(artifacts / "browser-template-missing-model.png"))
    page.keyboard.press("Escape")
    page.get_by_role("dialog").wait_for(state="hidden", timeout=10000)
    assert not console.problems(), console.problems()


def test_panel_works_from_the_keyboard(comfy, graph_ui, session):
    page, console = graph_ui
    if comfy.session(session)["state"] != "running":
        comfy.control("start", session)
    tab_button(page).focus()
    page.keyboard.press("Enter")  # opens the panel and moves the focus into it
    page.wait_for_selector(f'.dw-panel tr[data-session="{session}"]')
    assert focused(page, "el.closest('.dw-panel') !== null")
    panel = page.locator(".dw-panel")

    tab_to(page, f"el.textContent === {json.dumps(session)} && el.closest('tr')")
    assert has_visible_focus(page)
    page.keyboard.press("Space")  # selects the session
    wait_for_text(page, ".dw-panel .dw-head h3", session)
    assert focused(page, "el.getAttribute('aria-pressed')") == "true"

    # A state change rebuilds the list: the focus stays on the session.
    comfy.control("pause", session)
    wait_for_text(page, f'.dw-panel tr[data-session="{session}"] [data-field=state]', "paused")
    assert focused(page, "el.textContent") == session

    # Every control has an accessible name.
    assert page.get_by_role("region", name="Dream Window", exact=True).count() == 1
    for role, name in [("button", "Start"), ("button", "Pause"), ("button", "Stop"), ("button", "Reset"),
                       ("button", "Delete"), ("button", "Export"), ("spinbutton", "First frame"),
                       ("spinbutton", "Last frame"), ("combobox", "Export format"),
                       ("link", "Open the full-window viewer in a new tab"),
                       ("img", f"Dream Window {session}: live frames")]:
        assert panel.get_by_role(role, name=name, exact=True).count() == 1, (role, name)

    tab_to(page, "el.dataset.action === 'start'")
    assert has_visible_focus(page)
    page.keyboard.press("Enter")
    comfy.wait_for(lambda: comfy.session(session)["state"] == "running", timeout=10, what="Enter on Start")

    page.keyboard.press("Escape")  # closes the panel, the focus goes back to its sidebar button
    page.wait_for_selector(".dw-panel", state="detached")
    assert focused(page, "el.getAttribute('aria-label')") == f"{TAB_BUTTON} (d)"  # the name tells the key
    page.keyboard.press("d")  # the pack's keybinding toggles the panel
    page.wait_for_selector(".dw-panel")
    page.keyboard.press("Escape")
    page.wait_for_selector(".dw-panel", state="detached")
    assert not console.problems(), console.problems()


def test_settings_dialog_holds_the_pack_settings_and_the_server_reads_what_it_saves(comfy, graph_ui):
    page, console = graph_ui
    settings = "window.comfyAPI.app.app.extensionManager.setting"
    assert page.evaluate(f"{settings}.get('DreamWindow.Monitor.Enabled')") == "auto", "registered, with its default"
    assert page.evaluate(f"{settings}.get('DreamWindow.ResumeOnStart')") is False
    page.evaluate(f"{settings}.set('DreamWindow.Monitor.Processes', 'dwbrowsergame, other')")
    try:
        config = comfy.wait_for(lambda: (c := comfy.get("/dream_window/monitor")["config"]) and
                                c["processes"] == ["dwbrowsergame", "other"] and c, timeout=15,
                                what="the monitor's next check to read the saved setting")
        assert config["resume_after"] == 30.0
    finally:
        page.evaluate(f"{settings}.set('DreamWindow.Monitor.Processes', '')")
    assert not console.problems(), console.problems()


def test_panel_shows_frames_exports_and_stops_the_session(comfy, graph_ui, session, artifacts, tmp_path):
    page, console = graph_ui
    if comfy.session(session)["state"] != "running":
        comfy.control("start", session)
    tab_button(page).click()
    row = page.locator(f'.dw-panel tr[data-session="{session}"]')
    row.click()
    assert_frames_match_disk(comfy, page, session, ".dw-panel .dw-window img.dw-front")
    page.wait_for_function("document.querySelector('.dw-panel .dw-status [data-key=state]')")
    assert page.inner_text(".dw-panel .dw-status [data-key=state]") in ("running", "buffering")
    page.screenshot(path=str(artifacts / "browser-panel.png"))

    # Export the five frames just shown as an animated WebP, through the panel's download.
    page.wait_for_function("Number(document.querySelector('.dw-panel .dw-window').dataset.frame) >= 5")
    last = int(page.get_attribute(".dw-panel .dw-window", "data-frame"))
    page.fill(".dw-panel input[aria-label='First frame']", str(last - 4))
    page.fill(".dw-panel input[aria-label='Last frame']", str(last))
    page.select_option(".dw-panel select", "webp")
    with page.expect_download() as download:
        page.click(".dw-panel button[data-action=export]")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == f"{session}-{last - 4:08d}-{last:08d}.webp"
    with Image.open(saved) as webp:
        assert webp.is_animated and webp.n_frames == 5
    page.get_by_text(f"{saved.name}: 5 frames", exact=True).wait_for(timeout=10000)  # the frontend's toast
    # The same frames with the session's state, as a zip.
    page.select_option(".dw-panel select", "zip")
    with page.expect_download() as download:
        page.click(".dw-panel button[data-action=export]")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        names = archive.namelist()
    assert saved.name == f"{session}.zip" and "state.json" in names, names
    assert [n for n in names if n.startswith("frames/")] == [
        f"frames/frame_{i:08d}.png" for i in range(last - 4, last + 1)], names

    page.click(".dw-panel button[data-action=stop]")
    comfy.wait_for(lambda: comfy.session(session)["state"] == "stopped", timeout=10, what="stop from the panel")
    wait_for_text(page, f'.dw-panel tr[data-session="{session}"] [data-field=state]', "stopped")
    wait_for_text(page, ".dw-panel .dw-status [data-key=state]", "stopped")  # the status events
    page.screenshot(path=str(artifacts / "browser-panel-stopped.png"))
    assert not console.problems(), console.problems()


def test_panel_deletes_a_paused_session_whose_last_iteration_still_runs(comfy, graph_ui):
    """Pause, then Delete (confirmed in the frontend's dialog) while the iteration in flight still runs: the
    panel waits for the server, then the session leaves the list, with no error shown."""
    page, console = graph_ui
    name = "win_delete"
    folder = comfy.base / "output" / "dream_window" / name
    running_with_a_keyframe(comfy, name)
    if not page.locator(".dw-panel").count():
        tab_button(page).click()
    with held_iteration(comfy):
        page.locator(f'.dw-panel tr[data-session="{name}"]').click()
        wait_for_text(page, ".dw-panel .dw-head h3", name)
        page.click(".dw-panel button[data-action=pause]")
        comfy.wait_for(lambda: comfy.session(name)["state"] == "paused", timeout=10, what="pause from the panel")
        page.click(".dw-panel button[data-action=delete]")
        page.locator("[role=dialog] button", has_text=re.compile(r"^\s*Delete\s*$")).click()
        time.sleep(1.0)
        assert comfy.session(name) is not None, "the delete waits for the iteration in flight"
    page.wait_for_selector(f'.dw-panel tr[data-session="{name}"]', state="detached", timeout=30000)
    assert comfy.session(name) is None and not folder.exists()
    assert not page.get_by_text(f'Dream Window: delete "{name}"').count(), "no error toast"
    # The frontend may fetch the last iteration's output frame (the Commit node's preview) from ComfyUI's /view
    # after the delete removed it: that 404 is its request for a file that is gone, not an error of the pack.
    problems = [p for p in console.problems() if not ("/api/view?" in p[2] and f"dream_window%2F{name}%2F" in p[2])]
    assert not problems, problems
