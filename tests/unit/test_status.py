"""Unit tests for core.window.status: schema, key order, the Rainmeter regex, prompt truncation."""

import json
from datetime import datetime

import pytest

from core.window import status
from core.window.playback import Player
from core.window.status import CacheStats, SessionState
from helpers import rainmeter

NOW = datetime(2025, 11, 15, 12, 30, 0)
T0 = 1000.0


def playing_metrics(ready=42, played=7):
    """Metrics of a default player that has shown ``played`` frames and has ``ready`` more."""
    player = Player(min_buffer_seconds=0.0)
    player.add_frames([(i, f"{i}.png") for i in range(played + ready)])
    for k in range(played):
        player.tick(T0 + k / player.fps)
    return player.metrics(T0 + (played - 1) / player.fps)


def build(**overrides):
    kwargs = {
        "state": "running",
        "buffer": playing_metrics(),
        "uptime_seconds": 5400.0,
        "current_prompt": "black, white, ethereal digital angel",
        "mode": "hybrid",
        "generation_time": 2.1234,
        "now": NOW,
    }
    kwargs.update(overrides)
    return status.build_status(**kwargs)


def test_keys_and_order():
    document = build()
    assert tuple(document) == status.STATUS_KEYS
    assert len(set(status.STATUS_KEYS)) == len(status.STATUS_KEYS)
    positions = [status.STATUS_KEYS.index(key) for key in rainmeter.RAINMETER_KEYS]
    assert positions == sorted(positions)


def test_rainmeter_regex_matches_the_serialised_status():
    document = build(cache=CacheStats(cache_size=23, cache_injections=4))
    match = rainmeter.RAINMETER_STATUS_PATTERN.search(status.status_json(document))
    assert match is not None
    assert match.groups() == (
        "7", "2.123", "live", "hybrid", "black, white, ethereal digital angel", "23",
        "1.5", "running", "ready", "generating", "false",
    )


@pytest.mark.parametrize("state", list(SessionState))
@pytest.mark.parametrize("prompt", ["", 'say "hi" \\ ünïcode ✨', "x" * 500, "multi\nline\ttext"])
def test_rainmeter_regex_matches_every_state_and_prompt(state, prompt):
    document = build(state=state, current_prompt=prompt, error_message="boom")
    assert rainmeter.RAINMETER_STATUS_PATTERN.search(status.status_json(document))


def test_rainmeter_regex_rejects_a_wrong_key_order():
    document = build()
    reordered = {key: document[key] for key in status.STATUS_KEYS if key != "frame_number"}
    reordered["frame_number"] = document["frame_number"]
    assert rainmeter.RAINMETER_STATUS_PATTERN.search(status.status_json(reordered)) is None


def test_rainmeter_pattern_is_the_widget_regex():
    assert rainmeter.RAINMETER_STATUS_REGEX.startswith('(?siU)"frame_number": ([0-9]+).*"generation_time"')
    assert rainmeter.RAINMETER_STATUS_REGEX.endswith('.*"is_buffering": (true|false)')
    assert rainmeter.RAINMETER_STATUS_PATTERN.groups == len(rainmeter.RAINMETER_KEYS)


def test_buffer_target_is_target_seconds_times_fps():
    document = build()
    assert document["buffer_target"] == 105
    assert document["buffer_target_seconds"] == 30.0
    assert document["target_fps"] == 3.5
    assert document["buffer_filled"] == 42
    assert document["buffer_seconds"] == 12.0
    assert document["buffer_percentage"] == 40.0
    assert document["is_buffering"] is False
    assert document["frame_number"] == 7
    assert document["fps_achieved"] == 3.5


def test_prompt_is_the_real_one_truncated_to_100_chars():
    long_prompt = ", ".join(f"word{i}" for i in range(60))
    shown = build(current_prompt=long_prompt)["current_prompt"]
    assert len(shown) <= status.PROMPT_MAX_CHARS
    assert shown.endswith("...")
    assert long_prompt.startswith(shown[:-3])
    exact = "a" * 100
    assert build(current_prompt=exact)["current_prompt"] == exact
    assert build(current_prompt="  two\n lines ")["current_prompt"] == "two lines"
    assert build(current_prompt="")["current_prompt"] == status.NO_PROMPT


def test_truncate_prompt():
    assert status.truncate_prompt("abc") == "abc"
    assert status.truncate_prompt("x" * 101) == "x" * 97 + "..."
    assert len(status.truncate_prompt("y" * 1000, limit=20)) == 20


def test_paused_state():
    document = build(state=SessionState.PAUSED)
    assert (document["state"], document["status"], document["controller_status"]) == ("paused",) * 3
    assert document["error_message"] is None


def test_running_player_still_buffering_is_reported_as_buffering():
    document = build(buffer=Player().metrics(T0))
    assert (document["state"], document["status"]) == ("buffering", "buffering")
    assert document["is_buffering"] is True
    assert document["controller_status"] == "generating"


def test_stopped_and_error_states():
    stopped = build(state="stopped")
    assert (stopped["state"], stopped["status"], stopped["controller_status"]) == ("stopped",) * 3
    error = build(state="error", error_message="CUDA out of memory")
    assert (error["state"], error["status"], error["error_message"]) == (
        "error", "error", "CUDA out of memory",
    )
    paused_on_error = build(state="paused", error_message="keyframe failed 3 times")
    assert paused_on_error["error_message"] == "keyframe failed 3 times"


def test_error_without_message_and_unknown_state_are_rejected():
    with pytest.raises(ValueError, match="needs an error_message"):
        build(state="error")
    with pytest.raises(ValueError):
        build(state="exploded")


def test_cache_fields_are_null_until_provided():
    document = build()
    for key in (
        "cache_injections", "total_seed_injections", "collapse_recent_similarity",
        "collapse_overall_similarity", "collapse_frames_analyzed", "collapse_frequency",
        "collapse_trend", "cache_diversity_score", "cache_avg_similarity",
        "keyframe_time", "batch_decode_time",
    ):
        assert document[key] is None, key
    assert document["cache_size"] == 0


def test_cache_fields_when_provided():
    cache = CacheStats(
        cache_size=50, cache_injections=12, total_seed_injections=3,
        collapse_recent_similarity=1.91234, collapse_overall_similarity=1.8,
        collapse_frames_analyzed=44, collapse_frequency=0.25, collapse_trend="converging",
        cache_diversity_score=0.31, cache_avg_similarity=float("nan"),
    )
    document = build(cache=cache, keyframe_time=1.23456, batch_decode_time=0.4)
    assert document["cache_size"] == 50
    assert document["cache_injections"] == 12
    assert document["total_seed_injections"] == 3
    assert document["collapse_recent_similarity"] == 1.9123
    assert document["collapse_trend"] == "converging"
    assert document["cache_avg_similarity"] is None
    assert (document["keyframe_time"], document["batch_decode_time"]) == (1.235, 0.4)


def test_times_and_daemon_fields():
    document = build(generation_time=-3.0, uptime_seconds=7200.0)
    assert document["generation_time"] == 0.0
    assert (document["uptime_hours"], document["uptime_minutes"]) == (2.0, 120.0)
    assert document["daemon_uptime_hours"] == 2.0
    assert (document["daemon_status"], document["comfyui_status"]) == ("running", "ready")
    assert (document["comfyui_restarts"], document["controller_restarts"]) == (0, 0)
    assert document["last_update"] == "2025-11-15T12:30:00"
    assert build(generation_time=float("inf"))["generation_time"] == 0.0


@pytest.mark.parametrize("mode", ["hybrid", "img2img", "interpolate"])
def test_current_mode_is_the_mode_of_the_last_keyframe(mode):
    assert build(mode=mode)["current_mode"] == mode


def test_current_mode_before_the_first_keyframe_is_idle_and_matches_the_widget():
    document = build(mode=None)
    assert document["current_mode"] == "idle"
    assert rainmeter.RAINMETER_STATUS_PATTERN.search(status.status_json(document)).group(4) == "idle"


def test_interrupted_state_is_not_generating_nor_buffering():
    document = build(state="interrupted", buffer=Player().metrics(T0))
    assert (document["state"], document["status"], document["controller_status"]) == ("interrupted",) * 3


def test_json_serialisation():
    document = build(current_prompt="ünïcode")
    text = status.status_json(document)
    assert json.loads(text) == document
    assert text.splitlines()[1].startswith('  "frame_number": ')
    assert "ünïcode" in text
    assert status.status_json_bytes(document) == text.encode("utf-8")
