"""Unit tests for core.loop.prompts: theme text format, rotation and time-of-day modifiers."""

import json

import pytest

from core.loop import prompts
from core.loop.prompts import RotationState, Theme

# --- default themes -----------------------------------------------------------------------


def test_default_themes_are_the_four_documented_pairs():
    themes = prompts.DEFAULT_THEMES
    assert len(themes) == 4
    assert themes[0].positive == (
        "black, white, ethereal digital angel, dissolving into particles, flowing white lines, "
        "technical wireframe overlay, monochrome, sparse color accents, architectural diagrams, "
        "high contrast, abstract geometry"
    )
    assert themes[0].negative.endswith("muddy colors, brown tones, warm colors")
    assert themes[2].positive.startswith("cyberpunk angel, glitch art aesthetic")
    assert themes[3].negative == (
        "solid forms, static, stable, grounded, physical, blur, low quality, text, watermark, "
        "signature, jpeg artifacts, low contrast, warm colors"
    )


def test_default_text_parses_back_to_the_default_themes():
    assert prompts.parse_themes(prompts.DEFAULT_THEMES_TEXT) == prompts.DEFAULT_THEMES


# --- parser ---------------------------------------------------------------------------------


def test_blocks_separated_by_blank_lines_and_dashes_with_comments():
    text = """
    # my themes
    first positive
    negative: first negative

    positive: second positive
    ---
    NEGATIVE: third negative
    Positive: third positive
    """
    assert prompts.parse_themes(text) == (
        Theme("first positive", "first negative"),
        Theme("second positive", ""),
        Theme("third positive", "third negative"),
    )


def test_continuation_lines_join_the_field_above_with_spaces():
    text = "a, b,\nc\nnegative: x,\n  y\n"
    assert prompts.parse_themes(text) == (Theme("a, b, c", "x, y"),)


def test_colons_inside_a_prompt_are_kept():
    text = "(masterpiece:1.2), style: noir\nnegative: text: none"
    assert prompts.parse_themes(text) == (Theme("(masterpiece:1.2), style: noir", "text: none"),)


@pytest.mark.parametrize("text", ["", "   \n\n", "# only a comment\n\n# another\n"])
def test_empty_list_is_a_clear_error(text):
    with pytest.raises(ValueError, match=r"theme list is empty: write at least one theme"):
        prompts.parse_themes(text)


def test_theme_without_positive_names_theme_and_line():
    text = "one\nnegative: n1\n\nnegative: only a negative\n"
    with pytest.raises(ValueError, match=r"Theme 2 \(line 4\) has no positive prompt: write"):
        prompts.parse_themes(text)


def test_empty_positive_prefix_is_an_error():
    with pytest.raises(ValueError, match=r"Theme 1 \(line 1\) has no positive prompt"):
        prompts.parse_themes("positive:\nnegative: n\n")


@pytest.mark.parametrize(
    ("text", "line", "side"),
    [
        ("a\n---\n---\nb\n", 2, "after"),
        ("---\na\n", 1, "before"),
        ("a\n---\n", 2, "after"),
        ("a\n---\n\n# nothing here\n\n---\nb\n", 2, "after"),
    ],
)
def test_separator_without_theme_is_an_empty_theme_error(text, line, side):
    with pytest.raises(ValueError, match=rf"Empty theme at line {line}: .* no theme {side} it\. Remove"):
        prompts.parse_themes(text)


def test_repeated_field_in_one_theme_is_an_error():
    with pytest.raises(ValueError, match=r"Theme 1 \(line 3\) has a second negative prompt"):
        prompts.parse_themes("p\nnegative: a\nnegative: b\n")
    with pytest.raises(ValueError, match=r"Theme 1 \(line 2\) has a second positive prompt"):
        prompts.parse_themes("p\npositive: q\n")


def test_format_round_trips_awkward_texts():
    themes = (Theme("# not a comment", "---"), Theme("negative: literal", ""))
    assert prompts.parse_themes(prompts.format_themes(themes)) == themes


# --- rotation -------------------------------------------------------------------------------


def test_rotation_order_is_sequential():
    state = RotationState()
    used = [state.consume(4, 20) for _ in range(100)]
    assert used == [0] * 20 + [1] * 20 + [2] * 20 + [3] * 20 + [0] * 20
    assert state.to_dict() == {"theme_index": 0, "count_on_theme": 20, "total": 100}


def test_injected_keyframes_do_not_consume_a_slot():
    state = RotationState()
    normal = []
    for keyframe in range(200):
        injected = keyframe % 3 == 2
        before = state.to_dict()
        index = state.consume(4, 5, injected=injected)
        if injected:
            assert state.to_dict() == before
            assert index == state.peek(4, 5)
        else:
            normal.append(index)
    expected = [(n // 5) % 4 for n in range(len(normal))]
    assert normal == expected
    assert state.total == len(normal)


def test_peek_does_not_change_state_and_predicts_consume():
    state = RotationState(theme_index=1, count_on_theme=3, total=23)
    assert state.peek(4, 3) == 2
    assert state.to_dict() == {"theme_index": 1, "count_on_theme": 3, "total": 23}
    assert state.consume(4, 3) == 2
    assert state.to_dict() == {"theme_index": 2, "count_on_theme": 1, "total": 24}


def test_rotation_with_one_theme_and_interval_one():
    state = RotationState()
    assert [state.consume(1, 1) for _ in range(5)] == [0] * 5
    assert [state.consume(3, 1) for _ in range(4)] == [1, 2, 0, 1]


def test_shrunk_theme_list_keeps_index_valid_and_restarts_count():
    state = RotationState(theme_index=3, count_on_theme=4, total=64)
    assert state.peek(2, 20) == 1
    assert state.consume(2, 20) == 1
    assert (state.theme_index, state.count_on_theme) == (1, 1)


@pytest.mark.parametrize(("count", "interval"), [(0, 20), (4, 0)])
def test_rotation_rejects_bad_arguments(count, interval):
    with pytest.raises(ValueError):
        RotationState().consume(count, interval)


def test_state_round_trips_through_json():
    state = RotationState()
    for _ in range(47):
        state.consume(4, 20)
    restored = RotationState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert restored == state
    assert restored.consume(4, 20) == state.consume(4, 20)


def test_from_dict_defaults_missing_keys_and_rejects_bad_values():
    assert RotationState.from_dict({"total": 5}) == RotationState(0, 0, 5)
    for bad in (-1, "3", 1.5, True):
        with pytest.raises(ValueError, match="non-negative integer"):
            RotationState.from_dict({"theme_index": bad})


# --- time of day ----------------------------------------------------------------------------

DAWN = "dawn light, morning atmosphere"
DAY = "bright daylight, clear atmosphere"
AFTERNOON = "afternoon light, warm tones"
TWILIGHT = "twilight, golden hour lighting"
EVENING = "evening atmosphere, deep shadows"
NIGHT = "midnight atmosphere, deep darkness"

EXPECTED_BY_HOUR = (
    [NIGHT] * 5 + [DAWN] * 3 + [DAY] * 4 + [AFTERNOON] * 5 + [TWILIGHT] * 3 + [EVENING] * 3 + [NIGHT]
)


@pytest.mark.parametrize("hour", range(24))
def test_time_of_day_table_every_hour(hour):
    assert len(EXPECTED_BY_HOUR) == 24
    assert prompts.time_of_day_modifier(hour) == EXPECTED_BY_HOUR[hour]


@pytest.mark.parametrize(
    ("hour", "modifier"),
    [(4, NIGHT), (5, DAWN), (7, DAWN), (8, DAY), (11, DAY), (12, AFTERNOON), (16, AFTERNOON),
     (17, TWILIGHT), (19, TWILIGHT), (20, EVENING), (22, EVENING), (23, NIGHT), (0, NIGHT)],
)
def test_time_of_day_boundaries(hour, modifier):
    assert prompts.time_of_day_modifier(hour) == modifier


@pytest.mark.parametrize("hour", [-1, 24])
def test_time_of_day_rejects_invalid_hours(hour):
    with pytest.raises(ValueError):
        prompts.time_of_day_modifier(hour)


def test_apply_time_of_day():
    assert prompts.apply_time_of_day("sky", enabled=True, hour=6) == f"sky, {DAWN}"
    assert prompts.apply_time_of_day("sky", enabled=False, hour=6) == "sky"
    current = prompts.apply_time_of_day("sky", enabled=True)
    assert current.removeprefix("sky, ") in set(EXPECTED_BY_HOUR)
