"""What a viewer gets over HTTP from a running loop: frames, streams, status, export, refusals."""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import socket
import struct
import time

import av
import pytest
from PIL import Image

from core.window.publisher import Publisher
from core.window.status import STATUS_KEYS
from helpers.dream_loop import dream_workflow, read_stream
from helpers.playback import FPS, SIZE, frame_file, start_playback
from helpers.rainmeter import RAINMETER_STATUS_PATTERN

pytestmark = pytest.mark.e2e

JPEG_QUALITY = inspect.signature(Publisher.jpeg).parameters["quality"].default


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def session(comfy):
    """One loop for the whole module, playing at ``FPS``; stopped at the end."""
    name = "win_routes"
    start_playback(comfy, name)
    yield name
    comfy.post_json("/dream_window/stop", {"session": name})


def test_frame_route_serves_the_files_on_disk(comfy, session):
    status, body, headers = comfy.request("GET", f"/dream_window/frame/{session}")
    assert status == 200 and headers["Content-Type"] == "image/png"
    index = int(headers["X-Dream-Window-Frame"])
    assert body == frame_file(comfy, session, index).read_bytes()
    status, body, headers = comfy.request("GET", f"/dream_window/frame/{session}?index={index}")
    assert status == 200 and int(headers["X-Dream-Window-Frame"]) == index
    assert body == frame_file(comfy, session, index).read_bytes()


def test_png_stream_sends_the_frame_files_in_order_at_the_playback_rate(comfy, session):
    count = 12
    headers, parts = read_stream(comfy, session, count, "png")
    assert headers["Content-Type"] == "multipart/x-mixed-replace; boundary=dwframe"
    indices = [int(h["x-dream-window-frame"]) for h, _, _ in parts]
    assert indices == list(range(indices[0], indices[0] + count)), f"not consecutive: {indices}"
    for (part_headers, body, _), index in zip(parts, indices, strict=True):
        assert part_headers["content-type"] == "image/png"
        assert sha(body) == sha(frame_file(comfy, session, index).read_bytes()), f"frame {index} differs from its file"
    # The first part is the frame being shown; the next ones come as they are played, on the player's
    # absolute clock: never faster than FPS (one interval of slack: the second part may come late).
    assert parts[-1][2] - parts[1][2] >= (count - 3) / FPS


def test_mjpeg_stream_sends_jpegs_of_the_frames(comfy, session):
    headers, parts = read_stream(comfy, session, 3)
    assert headers["Content-Type"] == "multipart/x-mixed-replace; boundary=dwframe"
    for part_headers, body, _ in parts:
        assert part_headers["content-type"] == "image/jpeg"
        jpeg = Image.open(io.BytesIO(body))
        assert jpeg.format == "JPEG" and jpeg.size == (SIZE, SIZE) and jpeg.mode == "RGB"
        # The part is that frame's file encoded as JPEG (same Pillow, same quality: the same bytes).
        expected = io.BytesIO()
        with Image.open(frame_file(comfy, session, int(part_headers["x-dream-window-frame"]))) as png:
            png.convert("RGB").save(expected, format="JPEG", quality=JPEG_QUALITY)
        assert body == expected.getvalue()


def test_status_route_and_file_have_the_rainmeter_key_order(comfy, session):
    status, body, headers = comfy.request("GET", f"/dream_window/status/{session}")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    text = body.decode()
    served = json.loads(text)
    assert list(served) == list(STATUS_KEYS)
    assert RAINMETER_STATUS_PATTERN.search(text), text
    on_disk = (comfy.base / "output" / "dream_window" / session / "status.json").read_text()
    assert list(json.loads(on_disk)) == list(STATUS_KEYS)
    assert RAINMETER_STATUS_PATTERN.search(on_disk), on_disk
    assert served["state"] in ("running", "buffering") and served["target_fps"] == FPS
    assert served["frame_number"] >= 1 and served["error_message"] is None


def test_view_page_and_its_assets_are_served(comfy, session):
    status, body, headers = comfy.request("GET", f"/dream_window/view/{session}")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"../assets/viewer.mjs" in body and b"../assets/viewer.css" in body
    for asset, kind in (("viewer.mjs", "text/javascript"), ("viewer.css", "text/css")):
        status, body, headers = comfy.request("GET", f"/api/dream_window/assets/{asset}")
        assert status == 200 and headers["Content-Type"].startswith(kind) and body


def export(comfy, session: str, **body) -> tuple[int, bytes, dict]:
    return comfy.request("POST", "/dream_window/export", json.dumps({"session": session, **body}).encode(),
                         {"Content-Type": "application/json"})


@pytest.fixture(scope="module")
def export_range(comfy, session) -> tuple[int, int]:
    """Ten frames just played, so still on disk (run alone, the module's loop may have shown fewer yet)."""
    def shown() -> int:
        return int(comfy.request("GET", f"/dream_window/frame/{session}")[2]["X-Dream-Window-Frame"])

    last = comfy.wait_for(lambda: (index := shown()) >= 10 and index, timeout=120, what="ten frames played")
    first = last - 9
    assert all(frame_file(comfy, session, i).exists() for i in range(first, last + 1))
    return first, last


def test_export_webp_holds_the_requested_frames(comfy, session, export_range):
    first, last = export_range
    count = last - first + 1
    status, body, headers = export(comfy, session, format="webp", first=first, last=last)
    assert status == 200, body[:300]
    assert headers["Content-Type"] == "image/webp" and int(headers["X-Dream-Window-Frames"]) == count
    assert f'filename="{session}-{first:08d}-{last:08d}.webp"' in headers["Content-Disposition"]
    with Image.open(io.BytesIO(body)) as webp:
        assert webp.format == "WEBP" and webp.is_animated and webp.n_frames == count and webp.size == (SIZE, SIZE)
        for offset in range(count):
            webp.seek(offset)
            webp.load()  # Pillow reads a frame's duration when it decodes the frame
            assert webp.info["duration"] == round(1000 / FPS), "the session's playback rate"
            with Image.open(frame_file(comfy, session, first + offset)) as png:
                assert webp.convert("RGB").tobytes() == png.convert("RGB").tobytes(), "lossless, in order"


def mp4_frames(body: bytes) -> tuple[float, list[Image.Image]]:
    with av.open(io.BytesIO(body)) as container:
        stream = container.streams.video[0]
        return float(stream.average_rate), [frame.to_image() for frame in container.decode(stream)]


def test_export_mp4_holds_the_requested_frames(comfy, session, export_range):
    first, last = export_range
    status, body, headers = export(comfy, session, format="mp4", first=first, last=last, fps=5)
    assert status == 200, body[:300]
    assert headers["Content-Type"] == "video/mp4" and int(headers["X-Dream-Window-Frames"]) == last - first + 1
    rate, frames = mp4_frames(body)
    assert rate == 5 and len(frames) == last - first + 1


def test_export_mp4_keeps_the_frame_size_and_picture(comfy, session, export_range):
    first, last = export_range
    _, frames = mp4_frames(export(comfy, session, format="mp4", first=first, last=last)[1])
    assert frames[0].size == (SIZE, SIZE)
    with Image.open(frame_file(comfy, session, first)) as png:
        diff = [abs(a - b) for a, b in zip(frames[0].tobytes(), png.convert("RGB").tobytes(), strict=True)]
    assert sum(diff) / len(diff) < 12, "the first video frame is the first exported frame (up to H.264 loss)"


@pytest.mark.parametrize("body, status", [
    ({"format": "gif"}, 400),
    ({"first": 0}, 400),
    ({"first": "1"}, 400),
    ({"last": True}, 400),
    ({"first": 10**13}, 400),
    ({"fps": 0}, 400),
    ({"fps": 1e9}, 400),
    ({"first": 10**11, "last": 10**11 + 5}, 400),  # no frames in that range
    ({"session": "../x"}, 400),
    ({"session": "no_such_session"}, 404),
])
def test_export_refuses_bad_requests(comfy, session, body, status):
    got, data = comfy.post_json("/dream_window/export", {"session": session, **body})
    assert got == status and data["error"], data


def test_hostile_values_are_refused_and_nothing_outside_is_read(comfy, session):
    # Files a path escape from a session folder would reach: the output folder and ComfyUI's base.
    marker = b"DW-SENTINEL-7f3a"
    sentinels = [comfy.base / "output" / "frames" / "frame_00000001.png", comfy.base / "frames" / "frame_00000001.png",
                 comfy.base / "output" / "dream_window" / "status.json"]
    created = []
    for path in sentinels:
        if not path.parent.exists():
            path.parent.mkdir(parents=True)
            created.append(path.parent)
        path.write_bytes(marker)
    try:
        routed = {  # reach the pack's handlers: a JSON error
            f"/dream_window/frame/{session}?index=-1": 400,
            f"/dream_window/frame/{session}?index=abc": 400,
            f"/dream_window/frame/{session}?index=0": 400,
            f"/dream_window/frame/{session}?index=1e3": 400,
            f"/dream_window/frame/{session}?index=99999999999999999999": 400,
            f"/dream_window/frame/{session}?index=1000000000000": 404,
            f"/dream_window/stream/{session}?limit=0": 400,
            f"/dream_window/stream/{session}?limit=-3": 400,
            f"/dream_window/stream/{session}?limit=99999999999": 400,
            f"/dream_window/stream/{session}?format=gif": 400,
            "/dream_window/frame/%2e%2e?index=1": 400,
            "/dream_window/frame/%2e%2e%2f%2e%2e?index=1": 400,
            "/dream_window/status/%2e%2e": 400,
            "/dream_window/status/..%2Fx": 400,
            "/dream_window/stream/..%2F..%2Fx?format=png": 400,
            "/dream_window/view/%2e%2e": 400,
            "/dream_window/status/a%00b": 400,
            f"/dream_window/status/{'a' * 65}": 400,
            "/dream_window/frame/no_such_session": 404,
            "/dream_window/stream/no_such_session": 404,
            "/dream_window/view/no_such_session": 404,
            "/dream_window/assets/..%2F..%2F__init__.py": 404,
            "/dream_window/assets/index.html": 404,
        }
        for path, expected in routed.items():
            status, body, headers = comfy.request("GET", path)
            assert status == expected, (path, status, body[:200])
            assert headers["Content-Type"].startswith("application/json") and json.loads(body)["error"], path
            assert marker not in body, path
        # Raw dot segments never reach a handler (no route matches); whatever answers serves no file.
        for path in ("/dream_window/frame/../../frames/frame_00000001.png",
                     "/dream_window/status/../x", "/dream_window/assets/../viewer/index.html"):
            with socket.create_connection(("127.0.0.1", comfy.port), timeout=10) as sock:
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
                reply = b"".join(iter(lambda: sock.recv(65536), b""))
            assert reply.split(b" ", 2)[1] in (b"400", b"403", b"404", b"405"), (path, reply[:200])
            assert marker not in reply, path
    finally:
        for path in sentinels:
            path.unlink()
        for folder in created:
            folder.rmdir()


def test_viewers_that_disconnect_mid_stream_do_not_disturb_the_loop(comfy, session):
    log_start = len(comfy.log_path.read_bytes())
    before = comfy.session(session)["iteration"]
    for fmt in ("png", "jpeg", "png", "jpeg"):
        with socket.create_connection(("127.0.0.1", comfy.port), timeout=10) as sock:
            sock.sendall(f"GET /dream_window/stream/{session}?format={fmt} HTTP/1.1\r\n"
                         f"Host: 127.0.0.1\r\n\r\n".encode())
            received = b""
            while b"--dwframe" not in received:
                chunk = sock.recv(4096)
                assert chunk, "the stream ended before its first part"
                received += chunk
            # Reset the connection in the middle of the stream (no orderly close).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    played = int(comfy.request("GET", f"/dream_window/frame/{session}")[2]["X-Dream-Window-Frame"])
    comfy.wait_for(lambda: comfy.session(session)["iteration"] >= before + 2, timeout=60,
                   what="the loop to go on iterating")
    comfy.wait_for(lambda: int(comfy.request("GET", f"/dream_window/frame/{session}")[2]["X-Dream-Window-Frame"])
                   >= played + 5, timeout=30, what="playback to go on")
    _, parts = read_stream(comfy, session, 2, "png")
    assert len(parts) == 2
    assert comfy.session(session)["state"] == "running"
    log = comfy.log_path.read_bytes()[log_start:].decode(errors="replace")
    assert "Error handling request" not in log and "Traceback" not in log, log[-3000:]


def status_state(comfy, session: str) -> str:
    return comfy.get(f"/dream_window/status/{session}")["state"]


def file_state(comfy, session: str) -> str:
    return json.loads((comfy.base / "output" / "dream_window" / session / "status.json").read_text())["state"]


def queued(comfy, session: str) -> bool:
    """Whether a prompt of ``session`` is running or waiting in ComfyUI's queue."""
    queue = comfy.get("/queue")
    return any(node.get("class_type") == "DreamWindowSession" and node["inputs"].get("name") == session
               for entry in queue["queue_running"] + queue["queue_pending"] for node in entry[2].values())


def test_status_follows_pause_resume_and_stop(comfy, session):
    comfy.control("pause", session)
    comfy.wait_for(lambda: status_state(comfy, session) == "paused" and file_state(comfy, session) == "paused",
                   timeout=10, what="the status to say paused")
    assert comfy.get(f"/dream_window/status/{session}")["status"] == "paused"
    comfy.control("resume", session)
    comfy.wait_for(lambda: status_state(comfy, session) in ("running", "buffering"), timeout=10,
                   what="the status to say running again")
    stopped_at = comfy.control("stop", session)["iteration"]
    comfy.wait_for(lambda: status_state(comfy, session) == "stopped" and file_state(comfy, session) == "stopped",
                   timeout=10, what="the status to say stopped")
    served = comfy.get(f"/dream_window/status/{session}")
    assert (served["status"], served["controller_status"]) == ("stopped", "stopped")
    # The iteration running when stop came may still finish; none is queued after it.
    comfy.wait_for(lambda: not queued(comfy, session), timeout=60, what="the last iteration to finish")
    final = comfy.session(session)
    assert final["state"] == "stopped" and final["iteration"] <= stopped_at + 1
    time.sleep(1.5)
    assert comfy.session(session)["iteration"] == final["iteration"]
