"""Prompt themes as editable text, theme rotation and time-of-day modifiers.

Theme text format
-----------------
The theme list is plain text that a user edits in a multiline STRING widget::

    # Lines starting with '#' are comments.
    positive: black, white, ethereal digital angel, dissolving into particles
    negative: colors, low quality, text, watermark
    ---
    abstract geometry, technical wireframe, blueprint aesthetic
    negative: organic forms, curves, nature, soft edges

* One theme per block. Blocks are separated by one or more blank lines or by a
  line of three or more dashes (``---``).
* A line starting with ``positive:`` or ``negative:`` (any case) starts that
  field. A line with neither prefix continues the field above it; at the start
  of a block it begins the positive prompt, so the ``positive:`` prefix is
  optional. A field spread over several lines is joined with single spaces.
* Each field may be given at most once per theme. The positive prompt is
  required; the negative prompt is optional and defaults to empty.
* A ``---`` separator must have a theme on both sides: two separators in a row,
  or one at the very start or end of the text, is reported as an empty theme.
* Leading and trailing whitespace of every line is ignored.

Every problem raises ``ValueError`` with the theme number, the line number and
what to change. ``format_themes`` writes this format back (always with explicit
``positive:``/``negative:`` prefixes), and ``parse_themes(format_themes(t)) == t``.

Rotation
--------
``RotationState`` rotates the themes in order: each theme is
used for ``rotation_interval`` (20) normal keyframes, then the next theme
follows, wrapping around. An injected keyframe (cache or seed injection) does
not consume a slot. ``peek`` tells which theme the next normal keyframe uses
without changing anything, so a prompt node can build its conditioning before
the loop knows whether the keyframe will be injected; ``consume`` records the
keyframe once that is known.

Time of day
-----------
With modifiers enabled, ``apply_time_of_day`` appends ``", <modifier>"`` chosen
by the local hour from ``TIME_OF_DAY_MODIFIERS`` (half-open hour ranges); hours
outside every range get ``NIGHT_MODIFIER``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

DEFAULT_ROTATION_INTERVAL = 20
"""Normal keyframes per theme before rotating to the next one."""


@dataclass(frozen=True)
class Theme:
    """One positive prompt with its paired negative prompt."""

    positive: str
    negative: str = ""


DEFAULT_THEMES: tuple[Theme, ...] = (
    Theme(
        positive=(
            "black, white, ethereal digital angel, dissolving into particles, flowing white lines, "
            "technical wireframe overlay, monochrome, sparse color accents, architectural diagrams, "
            "high contrast, abstract geometry"
        ),
        negative=(
            "colors, red, blue, green, yellow, orange, purple, pink, brown, low quality, text, "
            "watermark, signature, jpeg artifacts, muddy colors, brown tones, warm colors"
        ),
    ),
    Theme(
        positive=(
            "abstract geometry, technical wireframe, architectural diagrams, flowing lines, "
            "blueprint aesthetic, monochrome with data corruption, cyberpunk overlay, grid patterns, "
            "high contrast"
        ),
        negative=(
            "organic forms, curves, nature, soft edges, blur, low quality, text, watermark, "
            "signature, jpeg artifacts, low contrast, muddy colors"
        ),
    ),
    Theme(
        positive=(
            "cyberpunk angel, glitch art aesthetic, digital corruption, technical overlay, "
            "particle dissolution, monochrome with red and cyan accents, wireframe structure, "
            "abstract form, high contrast"
        ),
        negative=(
            "smooth, clean, pristine, perfect, polished, blur, low quality, text, watermark, "
            "signature, jpeg artifacts, low contrast, natural lighting"
        ),
    ),
    Theme(
        positive=(
            "black, white, ethereal figure in data stream, technical readouts, flowing particles, "
            "architectural wireframe, monochrome with blue highlights, digital dissolution, "
            "abstract geometry, high contrast"
        ),
        negative=(
            "solid forms, static, stable, grounded, physical, blur, low quality, text, watermark, "
            "signature, jpeg artifacts, low contrast, warm colors"
        ),
    ),
)
"""The four default theme pairs (``docs/design.md`` §14)."""

_SEPARATOR = re.compile(r"-{3,}")
_FIELD = re.compile(r"(positive|negative)\s*:(.*)", re.IGNORECASE)
_FORMAT_HINT = "a theme is a positive prompt line, optionally followed by a 'negative: ...' line"


def _parse_block(lines: Sequence[tuple[int, str]], number: int) -> Theme:
    """Parse the non-empty, non-comment lines of one theme block."""
    fields: dict[str, list[str]] = {}
    current: str | None = None
    for line_no, line in lines:
        match = _FIELD.fullmatch(line)
        if match:
            current = match.group(1).lower()
            text = match.group(2).strip()
        elif current is None:
            current, text = "positive", line
        else:
            fields[current].append(line)
            continue
        if current in fields:
            raise ValueError(
                f"Theme {number} (line {line_no}) has a second {current} prompt: "
                f"keep one '{current}:' line per theme, or separate the themes "
                "with a blank line or '---'."
            )
        fields[current] = [text] if text else []
    positive = " ".join(fields.get("positive", []))
    if not positive:
        raise ValueError(
            f"Theme {number} (line {lines[0][0]}) has no positive prompt: write the positive "
            f"prompt on the theme's first line (or after 'positive:'); {_FORMAT_HINT}."
        )
    return Theme(positive=positive, negative=" ".join(fields.get("negative", [])))


def parse_themes(text: str) -> tuple[Theme, ...]:
    """Parse the theme text format described in the module docstring.

    Raises ``ValueError`` naming the theme, the line and the fix when the list is
    empty, a theme has no positive prompt, a field is repeated or a ``---``
    separator has no theme on one side.
    """
    items: list[tuple[str, int, list[tuple[int, str]]]] = []
    block: list[tuple[int, str]] = []
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("#"):
            continue
        if not line or _SEPARATOR.fullmatch(line):
            if block:
                items.append(("theme", block[0][0], block))
                block = []
            if line:
                items.append(("separator", line_no, []))
        else:
            block.append((line_no, line))
    if block:
        items.append(("theme", block[0][0], block))

    for position, (kind, line_no, _) in enumerate(items):
        if kind != "separator":
            continue
        before = items[position - 1][0] if position > 0 else None
        after = items[position + 1][0] if position + 1 < len(items) else None
        if before != "theme" or after != "theme":
            side = "before" if before != "theme" else "after"
            raise ValueError(
                f"Empty theme at line {line_no}: the '---' separator has no theme {side} it. "
                f"Remove the separator or write a theme there; {_FORMAT_HINT}."
            )

    blocks = [lines for kind, _, lines in items if kind == "theme"]
    if not blocks:
        raise ValueError(f"The theme list is empty: write at least one theme; {_FORMAT_HINT}.")
    return tuple(_parse_block(lines, number) for number, lines in enumerate(blocks, start=1))


def format_themes(themes: Sequence[Theme]) -> str:
    """Write themes in the text format, one block per theme separated by ``---``."""
    blocks = []
    for theme in themes:
        block = f"positive: {theme.positive}"
        if theme.negative:
            block += f"\nnegative: {theme.negative}"
        blocks.append(block)
    return "\n---\n".join(blocks) + "\n"


DEFAULT_THEMES_TEXT = format_themes(DEFAULT_THEMES)
"""The default theme text shown in the prompt node's widget."""


def _check_rotation_args(theme_count: int, rotation_interval: int) -> None:
    """Reject a theme count or rotation interval below 1."""
    if theme_count < 1:
        raise ValueError("The theme list is empty: give at least one theme to rotate through.")
    if rotation_interval < 1:
        raise ValueError(
            f"rotation_interval must be at least 1 keyframe per theme, got {rotation_interval}."
        )


@dataclass
class RotationState:
    """Sequential theme rotation counters, kept per session across prompt executions.

    ``theme_index`` is the theme in use, ``count_on_theme`` how many normal
    keyframes used it since it became current, ``total`` how many normal
    keyframes used any theme.
    """

    theme_index: int = 0
    count_on_theme: int = 0
    total: int = 0

    def peek(self, theme_count: int, rotation_interval: int = DEFAULT_ROTATION_INTERVAL) -> int:
        """Return the index of the theme the next normal keyframe uses, changing nothing."""
        _check_rotation_args(theme_count, rotation_interval)
        index = self.theme_index % theme_count
        if self.count_on_theme >= rotation_interval:
            index = (index + 1) % theme_count
        return index

    def consume(
        self,
        theme_count: int,
        rotation_interval: int = DEFAULT_ROTATION_INTERVAL,
        *,
        injected: bool = False,
    ) -> int:
        """Record one keyframe and return the index of the theme it used.

        A normal keyframe takes a slot (rotating first when the current theme has
        had ``rotation_interval`` keyframes); an injected keyframe takes none and
        leaves the state unchanged.
        """
        index = self.peek(theme_count, rotation_interval)
        if injected:
            return index
        if index != self.theme_index or self.count_on_theme >= rotation_interval:
            self.count_on_theme = 0
        self.theme_index = index
        self.count_on_theme += 1
        self.total += 1
        return index

    def to_dict(self) -> dict[str, int]:
        """Return the state as a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RotationState:
        """Rebuild a state from ``to_dict`` output; missing keys take their defaults.

        Raises ``ValueError`` when a value is not a non-negative integer.
        """
        values: dict[str, int] = {}
        for name, default in asdict(cls()).items():
            value = data.get(name, default)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"Rotation state field '{name}' must be a non-negative integer, got {value!r}."
                )
            values[name] = value
        return cls(**values)


TIME_OF_DAY_MODIFIERS: tuple[tuple[int, int, str], ...] = (
    (5, 8, "dawn light, morning atmosphere"),
    (8, 12, "bright daylight, clear atmosphere"),
    (12, 17, "afternoon light, warm tones"),
    (17, 20, "twilight, golden hour lighting"),
    (20, 23, "evening atmosphere, deep shadows"),
)
"""(start hour inclusive, end hour exclusive, modifier)."""

NIGHT_MODIFIER = "midnight atmosphere, deep darkness"
"""Modifier for the hours no range covers (23:00 to 04:59)."""


def time_of_day_modifier(hour: int) -> str:
    """Return the modifier for a local hour in 0..23."""
    if not 0 <= hour <= 23:
        raise ValueError(f"hour must be in 0..23, got {hour}.")
    for start, end, modifier in TIME_OF_DAY_MODIFIERS:
        if start <= hour < end:
            return modifier
    return NIGHT_MODIFIER


def apply_time_of_day(positive: str, *, enabled: bool, hour: int | None = None) -> str:
    """Append ``", <modifier>"`` for ``hour`` (default: the current local hour) when enabled."""
    if not enabled:
        return positive
    if hour is None:
        hour = datetime.now().hour
    return f"{positive}, {time_of_day_modifier(hour)}"
