"""Regenerates the README's pictures from a real run: the graph UI with the Dream Window panel open, and a
strip of frames.

    python tools/harness/make_readme_pictures.py [--iterations 6] [--frames 8] [--checkpoint NAME] [--out docs/images]

Starts ComfyUI (COMFYUI_DIR, else the harness build) on a fresh base folder, queues the bundled dream
workflow and lets it run ``--iterations`` keyframes; then headless Chromium (Debian's, through Playwright)
loads the bundled UI workflow, opens the panel on the session and takes the screenshot, and the strip is
composed of ``--frames`` frames spread evenly over the run. The checkpoint is chosen as by
``tools/harness/dream.sh``: --checkpoint / DW_CHECKPOINT, else the first in $COMFYUI_DIR/models/checkpoints, else
the synthetic test model (its frames are abstract noise, not pictures).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.harness.chromium import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tools.harness.comfy_process import REPO, ComfyServer, load_api_workflow  # noqa: E402
from tools.harness.run_dream import choose_checkpoint, cuda_available  # noqa: E402

SESSION = "dream"
VIEWPORT = {"width": 1600, "height": 900}
GRAPH_VIEW = {"scale": 0.62, "offset": [600, 120]}
"""Where the bundled graph sits on the canvas: right of the open panel, zoomed out just enough to fit but
not so far that the canvas drops node titles and widgets (below 0.6)."""
QUIET_UI = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}
"""Settings of a returning user: no template dialog on top, no minimap over the graph."""
STRIP_BACKGROUND = (16, 16, 16)
JPEG_QUALITY = 82


def evenly_spaced(items: list, count: int) -> list:
    """``count`` items from first to last, evenly spaced (all of them when there are fewer)."""
    if count >= len(items):
        return list(items)
    if count == 1:
        return [items[-1]]
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def compose_strip(frames: list[Image.Image], height: int, gap: int = 4) -> Image.Image:
    """The frames side by side, left to right, each scaled to ``height`` (aspect kept), ``gap`` pixels apart."""
    scaled = [frame.convert("RGB").resize((round(frame.width * height / frame.height), height), Image.LANCZOS)
              for frame in frames]
    strip = Image.new("RGB", (sum(s.width for s in scaled) + gap * (len(scaled) - 1), height), STRIP_BACKGROUND)
    x = 0
    for frame in scaled:
        strip.paste(frame, (x, 0))
        x += frame.width + gap
    return strip


def ui_workflow(checkpoint: str) -> dict:
    """The bundled UI workflow with the run's checkpoint, placed right of the panel."""
    wf = json.loads((REPO / "workflows" / "dream_window.json").read_text())
    loader = next(node for node in wf["nodes"] if node["type"] == "CheckpointLoaderSimple")
    loader["widgets_values"][0] = checkpoint
    wf["extra"]["ds"] = GRAPH_VIEW
    return wf


def screenshot_panel(server: ComfyServer, checkpoint: str, path: Path) -> None:
    for key, value in QUIET_UI.items():
        status, _ = server.post_json(f"/api/settings/{key}", value)
        assert status == 200, (key, status)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")  # a frontend news banner
        page.goto(server.url)
        tab = page.get_by_role("button", name="Dream Window", exact=False).first
        tab.wait_for(timeout=60000)
        page.evaluate("(wf) => window.comfyAPI.app.app.loadGraphData(wf, true, true, 'dream_window')",
                      ui_workflow(checkpoint))
        tab.click()
        page.locator(f'.dw-panel tr[data-session="{SESSION}"]').click()
        page.wait_for_function("document.querySelector('.dw-panel .dw-window img.dw-front')?.dataset.frame > 1",
                               timeout=60000)
        page.wait_for_timeout(1000)  # the crossfade settles
        page.screenshot(path=str(path), type="jpeg", quality=JPEG_QUALITY)
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=6, help="keyframes to make before the pictures")
    parser.add_argument("--frames", type=int, default=8, help="frames in the strip")
    parser.add_argument("--height", type=int, default=96, help="height of a frame in the strip, in pixels")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()

    wf = load_api_workflow()
    models = choose_checkpoint(args.checkpoint, wf)
    wf["4"]["inputs"]["min_buffer_seconds"] = 0.0  # play from the first frame
    checkpoint = wf["1"]["inputs"]["ckpt_name"]
    args.out.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="dw-pictures-"))
    server = ComfyServer(base, models=models, cpu=not cuda_available(sys.executable))
    try:
        server.start()
        server.queue(wf)
        server.wait_for(lambda: (server.session(SESSION) or {}).get("iteration", 0) >= args.iterations,
                        timeout=60 * args.iterations, what=f"{args.iterations} keyframes", interval=0.5)
        screenshot_panel(server, checkpoint, args.out / "graph-and-panel.jpg")
        server.control("stop", SESSION)
        frames = sorted((base / "output" / "dream_window" / SESSION / "frames").glob("frame_*.png"))
        opened = [Image.open(f) for f in evenly_spaced(frames, args.frames)]
        compose_strip(opened, args.height).save(args.out / "frame-strip.jpg", quality=JPEG_QUALITY)
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(f"Wrote {args.out / 'graph-and-panel.jpg'} and {args.out / 'frame-strip.jpg'} ({checkpoint})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
