"""The README's pictures and links point at files in the repository; the picture script's strip is right."""

from __future__ import annotations

import re

from PIL import Image

from tools.harness.comfy_process import REPO
from tools.harness.make_readme_pictures import compose_strip, evenly_spaced

README = (REPO / "README.md").read_text()
LINK = re.compile(r"(!?)\[[^\]]*\]\(([^)\s]+)\)")
MADE_BY_SCRIPT = {"docs/images/graph-and-panel.jpg", "docs/images/frame-strip.jpg"}
MAX_PICTURE_BYTES = 300_000


def test_readme_shows_the_script_made_pictures_before_install():
    first_screen = README.split("\n## ", 1)[0]
    pictures = {target for bang, target in LINK.findall(first_screen) if bang}
    assert pictures == MADE_BY_SCRIPT, "the pictures above Install are the ones tools/harness/make_readme_pictures.py makes"
    for target in pictures:
        size = (REPO / target).stat().st_size
        assert size < MAX_PICTURE_BYTES, f"{target} is {size} bytes"
        with Image.open(REPO / target) as picture:
            picture.verify()


def test_readme_links_to_files_that_exist():
    local = [target.split("#")[0] for _, target in LINK.findall(README) if not re.match(r"[a-z]+:", target)]
    assert local, "the README links to its pictures and docs"
    missing = [target for target in local if target and not (REPO / target).exists()]
    assert not missing, missing


def test_strip_puts_the_frames_left_to_right_at_one_height():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", size, colour) for size, colour in zip([(64, 32), (128, 64), (30, 30)], colours)]
    strip = compose_strip(frames, height=20, gap=4)
    assert strip.size == (40 + 4 + 40 + 4 + 20, 20)
    assert [strip.getpixel((x, 10)) for x in (20, 64, 98)] == colours
    assert strip.getpixel((42, 10)) == strip.getpixel((86, 10)) != colours[0], "a gap between frames"


def test_strip_frames_are_spread_over_the_whole_run():
    frames = list(range(1, 57))
    assert evenly_spaced(frames, 8) == [1, 9, 17, 25, 32, 40, 48, 56]
    assert evenly_spaced(frames, 1) == [56]
    assert evenly_spaced(frames[:3], 8) == [1, 2, 3]
