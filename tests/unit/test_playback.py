"""Unit tests for core.window.playback: paced playback on a fake clock, gaps, throttling, pruning."""

import threading

import pytest

from core.window import playback
from core.window.playback import Player

FPS = 3.5
T0 = 1000.0


def frames(start, stop):
    """``(index, path)`` pairs for indices ``start..stop-1``."""
    return [(i, f"/frames/{i:06d}.png") for i in range(start, stop)]


def due(k, t0=T0, k0=0):
    return t0 + (k - k0) / FPS


# --- start ----------------------------------------------------------------------------------


def test_defaults_are_the_documented_values():
    player = Player()
    assert (player.fps, player.target_seconds) == (3.5, 30.0)
    assert player.start_frames == 35
    assert player.target_frames == 105


def test_waits_for_the_minimum_buffer_then_starts():
    player = Player(clock=lambda: T0)
    player.add_frames(frames(0, 34))
    assert player.tick() is None
    assert player.metrics().is_buffering
    assert not player.metrics().started
    player.add_frames([(34, "/frames/000034.png")])
    shown = player.tick()
    assert shown == playback.Frame(0, "/frames/000000.png")
    metrics = player.metrics()
    assert metrics.started and not metrics.is_buffering
    assert player.tick(due(1) - 1e-6) is None, "the next frame is due one interval later"
    assert player.tick(due(1) + 1e-9).index == 1


def test_frames_after_a_gap_do_not_count_toward_the_start():
    player = Player(min_buffer_seconds=2.0)  # 7 frames
    player.add_frames(frames(0, 5) + frames(6, 20))
    assert player.metrics(T0).frames_ready == 5
    assert player.metrics(T0).frames_pending == 19
    assert player.tick(T0) is None


def test_min_buffer_is_capped_at_the_throttle_target():
    assert Player(min_buffer_seconds=60.0, target_seconds=5.0).start_frames == 18
    assert Player(min_buffer_seconds=60.0, target_seconds=0.0).start_frames == 210
    assert Player(min_buffer_seconds=0.0).start_frames == 1
    assert Player(min_buffer_seconds=2.0).start_frames == 7


def test_force_start_plays_below_the_minimum_to_the_end_without_buffering():
    player = Player()
    player.add_frames(frames(0, 3))
    assert player.tick(T0) is None and player.metrics(T0).is_buffering
    player.force_start()  # the loop stopped with 3 of the 35 frames the minimum buffer wants
    assert [player.tick(due(k)).index for k in range(3)] == [0, 1, 2]
    assert player.tick(due(3)) is None
    drained = player.metrics(due(3))
    assert drained.started and drained.frames_played == 3 and not drained.is_buffering


def test_force_start_with_nothing_ready_starts_on_the_first_frame_to_come():
    player = Player(start_index=1)
    player.force_start()
    assert player.tick(T0) is None and not player.metrics(T0).is_buffering
    player.add_frames([(1, "a")])
    assert player.tick(T0 + 1).index == 1


def test_wait_for_buffer_brings_the_minimum_back_until_playback_starts():
    player = Player()
    player.add_frames(frames(0, 3))
    player.force_start()
    player.wait_for_buffer()  # the loop runs again before the next tick
    assert player.tick(T0) is None and player.metrics(T0).is_buffering
    player.add_frames(frames(3, 35))
    assert player.tick(T0).index == 0
    player.wait_for_buffer()
    assert player.tick(due(1)).index == 1, "a started playback goes on"


def test_start_index_and_out_of_order_arrival():
    player = Player(min_buffer_seconds=0.0, start_index=100)
    player.add_frames([(102, "c")])
    player.add_frames([(101, "b")])
    assert player.tick(T0) is None
    player.add_frames([(100, "a")])
    assert [player.tick(due(k, k0=100)).path for k in (100, 101, 102)] == ["a", "b", "c"]


@pytest.mark.parametrize(
    "kwargs", [{"fps": 0}, {"target_seconds": -1}, {"min_buffer_seconds": -1}]
)
def test_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        Player(**kwargs)


def test_rejects_duplicate_stale_and_non_integer_frames():
    player = Player(min_buffer_seconds=0.0)
    player.add_frames(frames(0, 3))
    with pytest.raises(ValueError, match="already received"):
        player.add_frames([(2, "x")])
    player.tick(T0)
    with pytest.raises(ValueError, match="passed it"):
        player.add_frames([(0, "x")])
    with pytest.raises(ValueError, match="must be an int"):
        player.add_frames([(3.0, "x")])


# --- absolute clock -------------------------------------------------------------------------


def test_no_drift_over_10000_frames_ticking_at_due_times():
    """Frame k is shown at exactly t0 + k/fps: never a tick early, never skipped."""
    player = Player(target_seconds=0.0, min_buffer_seconds=0.0)
    for start in range(0, 10_000, 11):
        player.add_frames(frames(start, min(start + 11, 10_000)))
    assert player.tick(T0).index == 0  # the first tick starts playback and anchors the clock
    for k in range(1, 10_000):
        assert player.tick(due(k) - 1e-6) is None
        shown = player.tick(due(k) + 1e-9)
        assert shown is not None and shown.index == k
    assert player.metrics(due(9_999)).frames_played == 10_000


def test_no_drift_over_10000_frames_with_a_jittery_ticker():
    """With ticks every 37 ms (not a divisor of the interval), lateness never accumulates."""
    step = 0.037
    player = Player(target_seconds=0.0, min_buffer_seconds=0.0)
    produced = 0
    shown_at = []
    tick = 0
    while len(shown_at) < 10_000:
        if produced - len(shown_at) < 11 and produced < 10_000:
            player.add_frames(frames(produced, produced + 11))
            produced += 11
        now = T0 + tick * step
        tick += 1
        frame = player.tick(now)
        if frame is not None:
            assert frame.index == len(shown_at)
            shown_at.append(now)
    lateness = [t - due(k) for k, t in enumerate(shown_at)]
    assert min(lateness) >= -1e-9
    assert max(lateness) < step + 1e-9


# --- gaps and stalls ------------------------------------------------------------------------


def test_gap_waits_quietly_then_reanchors_after_a_stall():
    player = Player(target_seconds=0.0, min_buffer_seconds=0.0)
    player.add_frames(frames(0, 10))
    for k in range(10):
        assert player.tick(due(k)).index == k
    for t in (due(10), due(10) + 0.5, due(10) + 3.0):
        assert player.tick(t) is None
        assert player.metrics(t).is_buffering
    arrival = due(10) + 5.0
    player.add_frames(frames(10, 21))
    assert player.tick(arrival).index == 10
    assert not player.metrics(arrival).is_buffering
    for k in range(11, 21):
        new_due = arrival + (k - 10) / FPS
        assert player.tick(new_due - 1e-6) is None
        assert player.tick(new_due + 1e-9).index == k


def test_small_lateness_keeps_the_schedule():
    player = Player(target_seconds=0.0, min_buffer_seconds=0.0)
    player.add_frames(frames(0, 5))
    for k in range(5):
        player.tick(due(k))
    assert player.tick(due(5)) is None
    player.add_frames(frames(5, 8))
    late = due(5) + 0.1
    assert player.tick(late).index == 5
    assert player.tick(due(6) - 1e-6) is None, "the next frame is due on the old schedule"
    assert player.tick(due(6)).index == 6


# --- throttling -----------------------------------------------------------------------------


def test_throttle_holds_at_target_and_resumes_below():
    player = Player()
    player.add_frames(frames(0, 104))
    assert not player.should_hold_next_iteration()
    player.add_frames([(104, "x")])
    assert player.should_hold_next_iteration()
    assert player.metrics(T0).seconds_buffered == pytest.approx(30.0)
    assert player.metrics(T0).percentage == pytest.approx(100.0)
    assert player.tick(T0).index == 0
    assert not player.should_hold_next_iteration()


def test_zero_target_disables_throttling():
    player = Player(target_seconds=0.0)
    player.add_frames(frames(0, 1000))
    assert not player.should_hold_next_iteration()
    assert player.metrics(T0).percentage == 100.0


def test_throttled_loop_keeps_the_buffer_near_its_target():
    """A producer of 11-frame batches that obeys the throttle never overfills the buffer."""
    player = Player(target_seconds=5.0, min_buffer_seconds=2.0)
    produced = 0
    peak = 0
    for tick in range(20_000):
        now = T0 + tick * 0.01
        if not player.should_hold_next_iteration():
            player.add_frames(frames(produced, produced + 11))
            produced += 11
        player.tick(now)
        peak = max(peak, player.metrics(now).frames_ready)
    target = round(5.0 * FPS)
    assert target <= peak < target + 11
    assert player.metrics(now).frames_played > 600


# --- pruning and metrics ---------------------------------------------------------------------


def test_played_frames_are_pruned_to_a_small_tail():
    player = Player(target_seconds=0.0, min_buffer_seconds=0.0)
    player.add_frames(frames(0, 1000))
    for k in range(1000):
        player.tick(due(k))
    metrics = player.metrics(due(999))
    assert metrics.frames_pending == 0
    assert player.latest().index == 999


def test_fps_achieved_measures_the_real_rate():
    player = Player(target_seconds=0.0, min_buffer_seconds=0.0)
    assert player.metrics(T0).fps_achieved == 0.0
    player.add_frames(frames(0, 100))
    for k in range(100):
        player.tick(due(k))
    assert player.metrics(due(99)).fps_achieved == pytest.approx(FPS)
    assert player.metrics(due(99) + playback.FPS_WINDOW_SECONDS + 1).fps_achieved == 0.0


def test_metrics_snapshot():
    player = Player()
    player.add_frames(frames(0, 42))
    metrics = player.metrics(T0)
    assert metrics.frames_ready == 42
    assert metrics.seconds_buffered == pytest.approx(12.0)
    assert metrics.percentage == pytest.approx(40.0)
    assert metrics.target_frames == 105
    assert metrics.next_index == 0
    assert Player().metrics(T0).next_index is None


# --- threads ----------------------------------------------------------------------------------


def test_feeding_and_ticking_from_two_threads_keeps_strict_order():
    player = Player(target_seconds=0.0, min_buffer_seconds=0.0)
    total = 3_003

    def produce():
        for start in range(0, total, 11):
            player.add_frames(frames(start, start + 11))

    producer = threading.Thread(target=produce)
    producer.start()
    shown = []
    now = T0
    while len(shown) < total and now < T0 + 1e6:
        frame = player.tick(now)
        if frame is not None:
            shown.append(frame.index)
        now += 1 / FPS
    producer.join()
    assert shown == list(range(total))


def test_new_settings_keep_the_buffer_the_frame_shown_and_the_next_due_time():
    player = Player(min_buffer_seconds=0.0, target_seconds=10.0)
    player.add_frames(frames(0, 20))
    assert player.tick(T0).index == 0
    assert player.tick(due(1)).index == 1
    player.configure(fps=7.0, target_seconds=2.0, min_buffer_seconds=0.0)
    assert player.latest().index == 1, "the frame on screen survives a settings change"
    assert player.metrics(due(1)).frames_ready == 18
    assert player.tick(due(2) - 1e-6) is None, "the frame already due keeps its time"
    assert player.tick(due(2)).index == 2
    assert player.tick(due(2) + 1 / 7.0).index == 3, "then the new rate paces playback"
    assert player.should_hold_next_iteration(), "the new, smaller target applies"
    with pytest.raises(ValueError, match="fps must be positive"):
        player.configure(fps=0.0, target_seconds=2.0, min_buffer_seconds=0.0)
