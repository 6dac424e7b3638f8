"""What a person sees, in a real headless Chromium: the viewer page, the graph UI, its panel."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter

import pytest
from PIL import Image

from harness.comfy_process import PACK_NAME, REPO
from test_window_routes import FPS, frame_file, start_playback

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
    # A new user gets the template dialog on top of the graph; skip it as a returning user would.
    status, _ = comfy.post_json("/api/settings/Comfy.TutorialCompleted", True)
    assert status == 200
    page, console = open_page("graph-ui")
    page.goto(comfy.url)
    page.wait_for_selector(".dream-window-tab-button", timeout=60000)  # the pack's JS registered its tab
    return page, console


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


def test_graph_ui_loads_the_pack_and_opens_its_template(comfy, graph_ui, artifacts):
    page, console = graph_ui
    page.click(".templates-tab-button")
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
    missing = page.evaluate("window.comfyAPI.app.app.graph.nodes.filter((n) => n.has_errors).map((n) => n.type)")
    assert not missing, f"nodes the frontend does not know: {missing}"
    page.screenshot(path=str(artifacts / "browser-template-loaded.png"))
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
    page.click(".dream-window-tab-button")
    row = page.locator(f'.dw-panel tr[data-session="{session}"]')
    row.click()
    assert_frames_match_disk(comfy, page, session, ".dw-panel .dw-window img.dw-front")
    page.wait_for_function("document.querySelector('.dw-panel .dw-status [data-key=state]')")
    assert page.inner_text(".dw-panel .dw-status [data-key=state]") in ("running", "buffering")
    page.screenshot(path=str(artifacts / "browser-panel.png"))

    # Export the five frames just shown as an animated WebP, through the panel's download.
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

    page.click(".dw-panel button[data-action=stop]")
    comfy.wait_for(lambda: comfy.session(session)["state"] == "stopped", timeout=10, what="stop from the panel")
    wait_for_text(page, f'.dw-panel tr[data-session="{session}"] [data-field=state]', "stopped")
    wait_for_text(page, ".dw-panel .dw-status [data-key=state]", "stopped")  # the status events
    page.screenshot(path=str(artifacts / "browser-panel-stopped.png"))
    assert not console.problems(), console.problems()
