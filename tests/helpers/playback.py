"""A loop that plays from its first frame, for the tests of what a viewer gets (routes, panel, viewer)."""

from __future__ import annotations

from .dream_loop import dream_workflow

FPS = 8.0
SIZE = 64


def playback_workflow(session: str, fps: float = FPS) -> dict:
    """The test workflow with playback starting on the first frame at ``fps``.

    A 2 s throttle target keeps the loop just ahead of playback: the backlog never reaches the
    retention limit (no frame is pruned before it is played) and the CPU stays free for the rest.
    """
    wf = dream_workflow(session, size=SIZE)
    wf["4"]["inputs"].update(fps=fps, min_buffer_seconds=0.0)
    wf["10"]["inputs"]["buffer_target"] = 2.0
    return wf


def start_playback(comfy, session: str, fps: float = FPS) -> None:
    """Queue ``session`` and wait until its first frame is played."""
    comfy.queue(playback_workflow(session, fps))
    comfy.wait_for(lambda: comfy.request("GET", f"/dream_window/frame/{session}")[0] == 200, timeout=90,
                   what=f"{session} to play its first frame")


def frame_file(comfy, session: str, index: int):
    return comfy.base / "output" / "dream_window" / session / "frames" / f"frame_{index:08d}.png"
