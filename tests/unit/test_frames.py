"""core.loop.frames: the PNG encoder and the background frame writer (no ComfyUI)."""

import io
import json
import os
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

import threading

from core.loop.frames import (CONVERT_ON_WRITER, PENDING_COMMITS, PINNED_COPY, PLAIN_COPY, FrameBatch, FrameWriter,
                              encode_png, frame_name, frames_on_disk, host_transfer, oldest_kept, png_text,
                              select_frames, shown_frame, to_image, to_uint8, unplayed_run)


@pytest.mark.parametrize("shape", [(256, 512, 3), (1, 1, 3), (7, 13, 4), (9, 5, 1)])
def test_encode_png_decodes_to_the_same_pixels(shape):
    frame = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(frame))))
    assert decoded.reshape(shape).tolist() == frame.tolist()


def test_encode_png_is_a_valid_png_with_checked_chunks():
    frame = np.full((4, 6, 3), 200, np.uint8)
    data = encode_png(frame)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, kinds = 8, []
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        assert int.from_bytes(data[pos + 8 + length:pos + 12 + length], "big") == zlib.crc32(kind + body)
        kinds.append(kind)
        pos += 12 + length
    assert kinds == [b"IHDR", b"IDAT", b"IEND"]
    Image.open(io.BytesIO(data)).verify()


def chunks(data: bytes, kind: bytes) -> list[bytes]:
    """Every chunk of ``kind`` in a PNG, whole (length, type, body, CRC)."""
    pos, found = 8, []
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        if data[pos + 4:pos + 8] == kind:
            found.append(data[pos:pos + 12 + length])
        pos += 12 + length
    return found


PROMPT = {"4": {"class_type": "DreamWindowSession", "inputs": {"name": "dream", "fps": 3.5}}}
EXTRA = {"workflow": {"nodes": [{"id": 4, "title": "Träume ☾"}], "links": []}}


def test_png_text_is_what_save_image_writes_with_pillow():
    """ComfyUI's SaveImage: ``PngInfo.add_text("prompt", json.dumps(prompt))`` and the same for each
    key of extra_pnginfo; Pillow writes those as tEXt chunks, byte for byte what png_text builds."""
    frame = np.full((3, 5, 3), 90, np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(PROMPT))
    for key, value in EXTRA.items():
        info.add_text(key, json.dumps(value))
    pillow = io.BytesIO()
    Image.fromarray(frame).save(pillow, format="PNG", pnginfo=info, compress_level=1)
    ours = encode_png(frame, text=png_text(PROMPT, EXTRA))
    assert chunks(ours, b"tEXt") == chunks(pillow.getvalue(), b"tEXt")
    with Image.open(io.BytesIO(ours)) as image:
        assert image.text == {"prompt": json.dumps(PROMPT), "workflow": json.dumps(EXTRA["workflow"])}
        assert np.array_equal(np.asarray(image), frame)


def test_png_text_without_a_prompt_or_workflow_is_empty():
    assert png_text(None, None) == b""
    assert Image.open(io.BytesIO(encode_png(np.zeros((2, 2, 3), np.uint8), text=png_text(None, None)))).text == {}


def test_the_writer_puts_the_text_into_every_frame(tmp_path):
    writer = FrameWriter(tmp_path, retention=10)
    writer.submit(1, np.zeros((2, 4, 4, 3), np.uint8), png_text(PROMPT, EXTRA))
    assert writer.flush(10)
    for index in (1, 2):
        with Image.open(tmp_path / frame_name(index)) as image:
            assert json.loads(image.text["prompt"]) == PROMPT
            assert json.loads(image.text["workflow"]) == EXTRA["workflow"]


@pytest.mark.parametrize("first, last, stride, expected", [
    (0, -1, 1, [3, 4, 5, 6, 7, 9]),
    (4, 7, 1, [4, 5, 6, 7]),
    (3, -1, 3, [3, 6, 9]),
    (4, 9, 2, [4, 6]),  # 8 is not on disk
    (9, 9, 1, [9]),
])
def test_select_frames_takes_the_range_on_disk_every_stride(first, last, stride, expected):
    frames = {index: Path(frame_name(index)) for index in (3, 4, 5, 6, 7, 9)}
    assert select_frames(frames, first, last, stride) == expected


@pytest.mark.parametrize("first, last, stride, message", [
    (10, -1, 1, "no frame from 10 to 9 (stride 1) is on disk; the session holds frames 3 to 9"),
    (1, 2, 1, "no frame from 1 to 2"),
    (8, 8, 1, "no frame from 8 to 8"),
    (0, -1, 0, "stride must be at least 1"),
])
def test_select_frames_says_what_is_on_disk_when_the_range_is_empty(first, last, stride, message):
    frames = {index: Path(frame_name(index)) for index in (3, 4, 5, 6, 7, 9)}
    with pytest.raises(ValueError, match=re.escape(message)):
        select_frames(frames, first, last, stride)


def test_select_frames_of_a_session_without_frames():
    with pytest.raises(ValueError, match="no frames on disk"):
        select_frames({}, 0, -1, 1)


def test_encode_png_accepts_a_non_contiguous_view():
    frame = np.random.default_rng(1).integers(0, 256, (8, 10, 3), dtype=np.uint8)[:, ::2]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(frame)))), frame)


def test_to_uint8_rounds_and_clamps():
    images = torch.tensor([[[[-0.5, 0.5, 1.5]]]])
    assert to_uint8(images).tolist() == [[[[0, 128, 255]]]]


def test_the_writer_writes_each_frame_once_and_prunes_played_frames_beyond_retention(tmp_path):
    written = []
    writer = FrameWriter(tmp_path / "frames", retention=4, on_written=written.append, first_unplayed=lambda: 7)
    batch = np.stack([np.full((2, 3, 3), i, np.uint8) for i in range(3)])
    writer.submit(1, batch)
    writer.submit(4, batch)
    assert writer.flush(10)
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [frame_name(i) for i in range(3, 7)]
    assert [[i for i, _ in w] for w in written] == [[1, 2, 3], [4, 5, 6]]
    assert writer.last_written == 6 and writer.error is None
    assert np.asarray(Image.open(tmp_path / "frames" / frame_name(6))).max() == 2


def test_the_writer_never_deletes_a_frame_playback_has_not_shown(tmp_path):
    played = [0]  # frames 1.. are unplayed: playback lags far behind (a long buffer, a low fps)
    writer = FrameWriter(tmp_path / "frames", retention=2, first_unplayed=lambda: played[0] + 1)
    batch = np.zeros((5, 2, 2, 3), np.uint8)
    for first in (1, 6, 11):
        writer.submit(first, batch)
    assert writer.flush(10)
    assert sorted(frames_on_disk(tmp_path / "frames")) == list(range(1, 16))
    played[0] = 9  # 1..9 played: 8 and 9 are the retention window
    writer.submit(16, batch)
    assert writer.flush(10)
    assert sorted(frames_on_disk(tmp_path / "frames")) == list(range(8, 21))
    played[0] = 20  # the loop stopped and playback went on to the end: pruned as it plays
    writer.played()
    writer.played()
    assert writer.flush(10)
    assert sorted(frames_on_disk(tmp_path / "frames")) == [19, 20]


@pytest.mark.parametrize("last_written, first_unplayed, retention, expected", [
    (100, None, 128, -27),  # nothing known: the newest 128 frames
    (100, 101, 10, 91),     # every frame played: the newest 10
    (100, 40, 10, 30),      # 60 unplayed: all of them and the 10 played before them
    (100, 1, 128, -127),    # nothing played yet: nothing goes
    (100, 150, 10, 91),     # a play position past the newest frame keeps the newest frames
])
def test_oldest_kept_keeps_the_unplayed_frames_and_the_retention_window(last_written, first_unplayed,
                                                                       retention, expected):
    assert oldest_kept(last_written, first_unplayed, retention) == expected


def disk(*indices):
    return {i: Path(f"/f/{frame_name(i)}") for i in indices}


@pytest.mark.parametrize("frames, shown, next_frame, expected", [
    (disk(1, 2, 3, 4, 5), 2, 6, [3, 4, 5]),        # 3..5 were made but not played
    (disk(1, 2, 3, 4, 5), 5, 6, []),               # all played
    (disk(1, 2, 3, 4, 5), None, 6, [1, 2, 3, 4, 5]),  # none played yet
    (disk(1, 2, 4, 5), None, 6, [4, 5]),           # a hole: only the run up to the newest frame
    (disk(3, 4, 5, 6, 7), 4, 6, [5]),              # 6 and 7 belong to a keyframe made again
    (disk(), None, 1, []),                          # a new session
    (disk(10, 11), 3, 12, [10, 11]),               # the frame shown is gone: from the oldest kept
])
def test_unplayed_run_after_a_restart(frames, shown, next_frame, expected):
    assert [i for i, _ in unplayed_run(frames, shown, next_frame)] == expected


def test_shown_frame_finds_the_linked_or_copied_frame(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(1, 5):
        (folder / frame_name(i)).write_bytes(bytes([i]) * (10 + i % 2))
    current = tmp_path / "current_frame.png"
    assert shown_frame(frames_on_disk(folder), current) is None, "nothing shown yet"
    os.link(folder / frame_name(2), current)
    assert shown_frame(frames_on_disk(folder), current) == 2
    current.unlink()
    current.write_bytes((folder / frame_name(3)).read_bytes())
    assert shown_frame(frames_on_disk(folder), current) == 3
    current.write_bytes(b"another picture")
    assert shown_frame(frames_on_disk(folder), current) is None


def test_the_writer_reports_a_folder_it_cannot_make_and_recovers(tmp_path):
    blocker = tmp_path / "frames"
    blocker.write_bytes(b"a file where the folder should be")
    writer = FrameWriter(blocker, retention=10)
    writer.submit(1, np.zeros((1, 2, 2, 3), np.uint8))
    assert writer.flush(10) and isinstance(writer.error, OSError)
    blocker.unlink()
    writer.submit(2, np.zeros((1, 2, 2, 3), np.uint8))
    assert writer.flush(10) and writer.error is None
    assert [p.name for p in blocker.iterdir()] == [frame_name(2)]


@pytest.mark.parametrize("device, transfer", [("cpu", CONVERT_ON_WRITER), ("cuda", PINNED_COPY),
                                              ("cuda:1", PINNED_COPY), ("mps", PLAIN_COPY), ("xpu", PLAIN_COPY)])
def test_frames_reach_the_writer_in_one_copy_pinned_from_cuda(device, transfer):
    assert host_transfer(torch.device(device)) == transfer


def test_a_frame_batch_gives_the_writer_the_rounded_uint8_frames():
    images = torch.rand(3, 5, 7, 3) * 1.2 - 0.1
    frames = np.asarray(FrameBatch(images))
    assert frames.dtype == np.uint8 and frames.shape == (3, 5, 7, 3)
    assert np.array_equal(frames, (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy())


def test_uint8_frames_reach_the_writer_as_they_are_and_become_an_image_again():
    frames = torch.randint(0, 256, (2, 3, 4, 3), dtype=torch.uint8)
    assert np.array_equal(np.asarray(FrameBatch(frames)), frames.numpy()) and to_uint8(frames) is frames
    image = to_image(frames)
    assert image.dtype == torch.float32 and torch.equal(to_uint8(image), frames)
    assert to_image(image) is image


def test_committed_frames_are_announced_after_their_commit_and_dropped_ones_deleted(tmp_path):
    written, calls = [], []
    writer = FrameWriter(tmp_path, retention=10, on_written=written.append)
    batch = np.zeros((2, 2, 2, 3), np.uint8)

    def commit(stands):
        def call(frames_written):
            calls.append((frames_written, sorted(p.name for p in tmp_path.iterdir()), list(written)))
            return stands
        return call

    writer.submit(1, batch, commit=commit(True))
    writer.submit(3, batch, commit=commit(False))
    assert writer.flush(10)
    assert calls[0] == (True, [frame_name(1), frame_name(2)], []), "the frames are on disk, not yet announced"
    assert [[index for index, _ in w] for w in written] == [[1, 2]]
    assert sorted(p.name for p in tmp_path.iterdir()) == [frame_name(1), frame_name(2)]
    assert writer.last_written == 2


def test_at_most_two_commits_wait_behind_their_frames(tmp_path):
    writer = FrameWriter(tmp_path, retention=10)
    release, entered = threading.Event(), threading.Event()

    def slow(frames_written):
        entered.set()
        return release.wait(10)

    batch = np.zeros((1, 2, 2, 3), np.uint8)
    for first in range(1, PENDING_COMMITS + 1):
        writer.submit(first, batch, commit=slow)
    assert entered.wait(10)
    third = threading.Thread(target=writer.submit, args=(9, batch), kwargs={"commit": lambda written: True})
    third.start()
    third.join(0.3)
    assert third.is_alive(), "a third commit waits while two are pending"
    release.set()
    third.join(10)
    assert not third.is_alive() and writer.flush(10)
