"""Benchmark options: tools/bench/cache_scaling.py's, and the embedding rows it reports instead of
zeros when a model cannot be measured; the newer benchmarks refuse nonsense parameters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tools.bench import cache_scaling as bench


def fake_comfy_tree(folder):
    """A folder that passes for a ComfyUI tree (nothing is imported from it)."""
    (folder / "comfy").mkdir(parents=True)
    (folder / "comfy" / "clip_vision.py").write_text("")
    return folder


def test_defaults_point_at_the_harness():
    args = bench.parse_args([])
    assert args.comfy == bench.COMFYUI_DIR
    assert args.clip_vision == bench.DEFAULT_CLIP_VISION
    assert (args.embed_repeats, args.model_repeats) == (20, 3)


def test_given_comfy_tree_and_clip_vision_file_are_kept(tmp_path):
    tree = fake_comfy_tree(tmp_path / "ComfyUI")
    model = tmp_path / "vision.safetensors"
    model.write_bytes(b"")
    args = bench.parse_args(["--comfy", str(tree), "--clip-vision", str(model)])
    assert (args.comfy, args.clip_vision) == (tree, model)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--comfy", "no ComfyUI tree at"),
        ("--clip-vision", "no file"),
        ("--open-clip-weights", "no file"),
    ],
)
def test_a_given_path_that_is_missing_is_an_error(tmp_path, capsys, option, message):
    with pytest.raises(SystemExit):
        bench.parse_args([option, str(tmp_path / "missing")])
    assert message in capsys.readouterr().err


def test_model_repeats_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--model-repeats", "0"])
    assert "outside 1.." in capsys.readouterr().err


def test_clip_vision_without_a_comfy_tree_is_skipped_with_the_reason(tmp_path):
    args = bench.parse_args([])
    args.comfy = tmp_path / "no-comfy"
    row = bench.clip_vision_row(args, torch.rand(2, 8, 16, 3))
    assert row["skipped"] == f"no ComfyUI tree at {args.comfy} (--comfy DIR)"
    assert "median_ms" not in row
    assert bench.embedding_line(row).endswith(f"skipped: {row['skipped']}")


def test_clip_vision_without_a_model_file_is_skipped_with_the_reason(tmp_path):
    args = bench.parse_args(["--comfy", str(fake_comfy_tree(tmp_path / "ComfyUI"))])
    args.clip_vision = tmp_path / "none.safetensors"
    row = bench.clip_vision_row(args, torch.rand(2, 8, 16, 3))
    assert row["skipped"].startswith(f"no CLIP vision file at {args.clip_vision} ")


def test_open_clip_rows_are_skipped_when_the_package_is_missing(monkeypatch):
    monkeypatch.setattr(bench.similarity, "open_clip_available", lambda: False)
    rows = bench.open_clip_rows(bench.parse_args([]), torch.rand(2, 8, 16, 3))
    assert [row["model"] for row in rows] == ["DW-Tiny stand-in", "ViT-B-32"]
    assert all(row["skipped"].startswith("open_clip is not installed") for row in rows)


def test_open_clip_stand_in_is_measured_and_labelled_a_floor():
    pytest.importorskip("open_clip")
    args = bench.parse_args(["--embed-repeats", "1"])
    stand_in, real = bench.open_clip_rows(args, torch.rand(2, 40, 80, 3))
    assert stand_in["median_ms"] > 0 and stand_in["runs"] == 1
    assert stand_in["note"] == "a floor, not the real cost of ViT-B-32"
    assert real["skipped"] == "no local weights given (--open-clip-weights FILE)"


BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench"


@pytest.mark.parametrize(("script", "args", "message"), [
    ("cpu_ops.py", ["--frames", "0"], "--frames: 0 must be >= 1"),
    ("cpu_ops.py", ["--repeats", "-2"], "--repeats: -2 must be >= 1"),
    ("commit_time.py", ["--frames", "0"], "--frames: 0 must be >= 1"),
    ("frame_encode.py", ["--size", "10x10"], "positive multiples of 8"),
    ("frame_encode.py", ["--rounds", "0"], "--rounds: 0 must be >= 1"),
    ("loop_fps.py", ["--node-iterations", "0"], "--node-iterations: 0 must be >= 1"),
    ("loop_fps.py", ["--size", "32x32"], "--size: the dream workflow's keyframe source needs at least 64x64"),
    ("memory.py", ["--size", "32x32"], "--size: the dream workflow's keyframe source needs at least 64x64"),
])
def test_new_benchmarks_refuse_nonsense(script, args, message):
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_frame_encode_measures_both_encoders(tmp_path):
    out = tmp_path / "fe.json"
    done = subprocess.run([sys.executable, str(BENCH / "frame_encode.py"), "--size", "64x32", "--rounds", "1",
                           "--output", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    for encoder in results["encoders"].values():
        assert encoder["encode_ms"] > 0 and encoder["bytes"] > 0 and encoder["executor_slowdown"] > 0


def test_commit_time_measures_every_side(tmp_path):
    out = tmp_path / "ct.json"
    done = subprocess.run([sys.executable, str(BENCH / "commit_time.py"), "--size", "64x32", "--frames", "2",
                           "--repeats", "1", "--output", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    assert sorted(results["executor_ms"]) == ["pack", "pack, cache analysis in Commit",
                                              "pack, cache analysis on its worker", "replaced"]
    assert all(ms > 0 for ms in results["executor_ms"].values())
    assert all(speedup > 0 for speedup in results["executor_speedup"].values())
