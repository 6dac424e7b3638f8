"""core.frames: the PNG encoder and the background frame writer (no ComfyUI)."""

import io
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from core.frames import FrameWriter, encode_png, frame_name, to_uint8


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


def test_encode_png_accepts_a_non_contiguous_view():
    frame = np.random.default_rng(1).integers(0, 256, (8, 10, 3), dtype=np.uint8)[:, ::2]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(frame)))), frame)


def test_to_uint8_rounds_and_clamps():
    images = torch.tensor([[[[-0.5, 0.5, 1.5]]]])
    assert to_uint8(images).tolist() == [[[[0, 128, 255]]]]


def test_the_writer_writes_each_frame_once_and_prunes_beyond_retention(tmp_path):
    written, pruned = [], []
    writer = FrameWriter(tmp_path / "frames", retention=4, on_written=written.append, on_pruned=pruned.append)
    batch = np.stack([np.full((2, 3, 3), i, np.uint8) for i in range(3)])
    writer.submit(1, batch)
    writer.submit(4, batch)
    assert writer.flush(10)
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [frame_name(i) for i in range(3, 7)]
    assert [[i for i, _ in w] for w in written] == [[1, 2, 3], [4, 5, 6]]
    assert pruned == [0, 3] and writer.last_written == 6 and writer.error is None
    assert np.asarray(Image.open(tmp_path / "frames" / frame_name(6))).max() == 2


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
