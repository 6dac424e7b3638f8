"""The Interpolate node's decode (against ComfyUI's VAE Decode) and its framerate modes (the resolution
divisor), on a real ComfyUI 0.3.75."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers.dream_loop import dream_workflow

pytestmark = pytest.mark.e2e

SIZE, FRAMES = 64, 3
DIVISOR_INPUTS = ("divisor", "downsample", "upscale", "vae")


def dream_frames(comfy, session: str, vae_decode: bool = False, **interpolate) -> list[np.ndarray]:
    """The frames on disk after two keyframes with a replayable seed sequence: keyframe 1, the
    in-between frames, keyframe 2. ``interpolate`` replaces the bundled divisor inputs (none: absent);
    ``vae_decode``: ComfyUI's VAE Decode node decodes the batch into Commit's 'images' instead."""
    wf = dream_workflow(session, size=SIZE)
    wf["5"]["inputs"].update(seed_mode="sequence", base_seed=7)
    wf["2"]["inputs"]["time_of_day"] = False  # the frames compared must not depend on the hour the test runs
    wf["10"]["inputs"]["max_iterations"] = 2
    inputs = wf["7"]["inputs"]
    inputs["frames"] = FRAMES
    for key in DIVISOR_INPUTS:
        del inputs[key]
    inputs.update(interpolate)
    if vae_decode:
        wf["8"] = {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}}
        wf["9"]["inputs"]["images"] = ["8", 0]
    comfy.queue(wf)
    comfy.wait_for(lambda: (comfy.session(session) or {}).get("state") == "stopped", timeout=120,
                   what=f"two iterations of {session}")
    folder = comfy.base / "output" / "dream_window" / session / "frames"
    paths = [folder / f"frame_{i:08d}.png" for i in range(1, FRAMES + 3)]
    comfy.wait_for(lambda: all(p.is_file() for p in paths), what=f"the frames of {session} on disk")
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def difference(a: np.ndarray, b: np.ndarray) -> int:
    """The largest difference of one colour value between two frames, in levels."""
    return int(np.abs(a.astype(int) - b).max())


def test_the_packs_decode_writes_the_frames_comfyuis_vae_decode_makes(comfy):
    """Tolerance 0 on the CPU: the same VAE model, the same float32 mapping to 0..255, the same rounding."""
    comfy_decoded = dream_frames(comfy, "decoded_by_comfyui", vae_decode=True)
    pack = dream_frames(comfy, "decoded_by_the_pack", vae=["1", 2])
    assert len({frame.tobytes() for frame in pack}) > 1, "the frames differ from one another"
    for index, (a, b) in enumerate(zip(comfy_decoded, pack)):
        assert np.array_equal(a, b), f"frame {index + 1}: max difference {difference(a, b)}"


def test_divisor_makes_small_inbetweens_and_keeps_the_keyframes(comfy):
    before = dream_frames(comfy, "divisor_absent", vae=["1", 2])
    full = dream_frames(comfy, "divisor_1", divisor="1", downsample="area", upscale="bilinear", vae=["1", 2])
    assert all(np.array_equal(a, b) for a, b in zip(before, full)), "divisor 1 is the path without the input"

    small = dream_frames(comfy, "divisor_2", divisor="2", downsample="area", upscale="bilinear", vae=["1", 2])
    assert all(frame.shape == (SIZE, SIZE, 3) for frame in small), "every frame is written at the keyframe size"
    # The keyframe is decoded alone here and in the batch of N + 1 at divisor 1: a convolution over another
    # batch size may sum in another order, which moves a pixel that sits on a rounding edge by one level.
    # A half-size decode upscaled differs by far more (the in-between frames below).
    for i in (0, FRAMES + 1):
        assert difference(small[i], full[i]) <= 1, f"keyframe frame {i + 1} stays full size"
    for i in range(1, FRAMES + 1):
        assert difference(small[i], full[i]) > 16, f"in-between frame {i + 1} is made at half size"
