"""The Rainmeter desktop widget's view of ``status.json``: the keys it captures and its regex.

The pack writes ``status.json`` so that this regex matches it (``core.window.status.STATUS_KEYS``);
the tests check that it does.
"""

from __future__ import annotations

import re

RAINMETER_KEYS: tuple[str, ...] = (
    "frame_number",
    "generation_time",
    "status",
    "current_mode",
    "current_prompt",
    "cache_size",
    "uptime_hours",
    "daemon_status",
    "comfyui_status",
    "controller_status",
    "is_buffering",
)
"""The keys the Rainmeter widget captures, in the order its regex needs them."""

RAINMETER_STATUS_REGEX = (
    r'(?siU)"frame_number": ([0-9]+).*"generation_time": ([0-9.]+).*"status": "([^"]+).*'
    r'"current_mode": "([^"]+).*"current_prompt": "([^"]+).*"cache_size": ([0-9]+).*'
    r'"uptime_hours": ([0-9.]+).*"daemon_status": "([^"]+).*"comfyui_status": "([^"]+).*'
    r'"controller_status": "([^"]+).*"is_buffering": (true|false)'
)
"""The ``RegExp`` of the widget skin's ``MeasureStatusFile`` (PCRE), verbatim."""

RAINMETER_STATUS_PATTERN = re.compile(
    RAINMETER_STATUS_REGEX.replace("(?siU)", "(?si)").replace(".*", ".*?")
)
"""``RAINMETER_STATUS_REGEX`` for Python's ``re``, which has no ``U`` (ungreedy) flag.

Only the ``.*`` between keys are made lazy; whether a text matches does not
depend on greediness, and the greedy captures hold the whole values.
"""
