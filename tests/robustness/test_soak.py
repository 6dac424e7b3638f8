"""The soak (tools/bench/soak.py), short: the loop's memory, history, files, cache and buffer stay bounded.

The full run is ``python tools/bench/soak.py`` (2,000 iterations); this one runs the same script for
300 iterations with a small retention and cache (2 in-between frames per keyframe), so every
bound is reached within 20 iterations and held for the rest of the run. The RSS slope is taken
after a 100-iteration warm-up: with 40, a one-time +8 MB step of the allocator at iteration 60
(flat for the 90 iterations after it) once read as 77 MB per 1,000 iterations. It starts a server
of its own: the shared one's memory still moves with what the tests before it did.
"""

from __future__ import annotations

import copy
import json

import pytest

from tools.bench import soak

CI_ARGS = ["--iterations", "300", "--warmup", "100", "--frames", "2", "--retention", "48", "--capacity", "8",
           "--interval", "0.25", "--timeout", "400"]


@pytest.mark.e2e
def test_short_soak_holds_every_bound(artifacts):
    output = artifacts / "soak-ci.json"
    status = soak.main(CI_ARGS + ["--output", str(output)])
    result = json.loads(output.read_text())
    assert status == 0 and result["violations"] == [], soak.summary(result)
    # The bounds were reached, not merely never approached.
    assert result["iterations"] == 300
    assert result["frame_files"]["end"] == 48 and result["frame_files"]["produced"] > 9 * 48
    assert result["cache"]["end_size"] == result["cache"]["end_files"] == 8
    assert result["buffer"]["frames_played"] > 0, "playback ran during the soak"
    assert result["rss_mb"]["samples"] >= 20


def test_violations_name_every_broken_bound():
    """The checker itself: a report breaking each bound in turn is flagged, a good one is not."""
    good = {
        "settings": {"frames": 2},
        "rss_mb": {"slope_per_1000": 3.0},
        "threads": {"first_quarter_max": 10, "last_quarter_max": 10},
        "fds": {"first_quarter_max": 13, "last_quarter_max": 14},
        "history": {"before": 4, "peak": 5, "end": 5},
        "frame_files": {"peak": 50, "end": 48, "retention": 48, "produced": 600, "bound": 51},
        "cache": {"peak_size": 8, "end_size": 8, "peak_files": 10, "end_files": 8, "capacity": 8},
        "buffer": {"peak_filled": 50, "bound": 51},
    }
    assert soak.violations(good) == []
    broken = {
        ("rss_mb", "slope_per_1000", 50.0): "RSS grows",
        ("rss_mb", "slope_per_1000", None): "RSS grows",
        ("threads", "last_quarter_max", 14): "threads grew",
        ("fds", "last_quarter_max", 22): "fds grew",
        ("history", "peak", 7): "history grew",
        ("frame_files", "peak", 52): "frame folder held",
        ("frame_files", "end", 49): "at the end",
        ("cache", "peak_size", 9): "cache held",
        ("cache", "peak_files", 11): "cache held",
        ("cache", "end_size", 7): "not its capacity",
        ("buffer", "peak_filled", 52): "playback buffer held",
    }
    for (group, key, value), words in broken.items():
        report = copy.deepcopy(good)
        report[group][key] = value
        found = soak.violations(report)
        assert len(found) == 1 and words in found[0], (group, key, found)
