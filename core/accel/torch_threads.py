"""How many torch CPU threads to leave the executor beside the pack's frame writer thread.

When torch's intra-op pool has one thread per usable core, a busy frame-writer thread takes a core
from it, and every parallel CPU op (the uint8 conversion, the slerp batch, the decoded images'
copy to the CPU) waits at its barrier for the thread that lost its core. Measured on a 16-core
H200 machine: such ops took 28-44 ms instead of under 1 ms while the writer encoded, and the
dream loop ran 38.4 frames per second with 16 threads against 48.6 with 15
(tools/bench/recorded/h200-2026-11-26-threads/). Freeing a second core, for the cache worker
(``core.cache.pending_jobs``, off by default), measured the same as one: 44.8 and 44.9 fps with the worker,
45.5 and 45.7 without it, at 14 and 15 threads (tools/bench/recorded/h200-2026-12-04-worker-threads/).
"""

from __future__ import annotations

import os

RESERVED_CORES = 1
"""The frame writer's core."""

MIN_CORES = 4
"""Below this many cores ``auto`` leaves torch alone: a core is too large a share to give up."""


def parse_setting(value) -> str:
    """The torch threads setting (``core.server_settings.TORCH_THREADS``) as ``auto``, ``keep`` or a thread count."""
    if value is None:
        return "auto"
    text = str(value).strip().lower() if isinstance(value, (str, int)) and not isinstance(value, bool) else "?"
    if text in ("", "auto"):
        return "auto"
    if text == "keep" or (text.isdigit() and int(text) >= 1):
        return text
    raise ValueError("use auto, keep or a whole number of threads from 1")


def planned_threads(current: int, usable_cores: int, accelerated: bool, setting: str | None) -> int | None:
    """The intra-op thread count to set, or None to leave torch's as it is.

    ``auto`` (or unset) frees ``RESERVED_CORES`` cores when the model runs on an accelerator (on
    the CPU the sampler needs every core more than the workers do) and torch's threads would share
    them;
    ``keep`` never changes anything; a whole number >= 1 is used as given.
    """
    value = parse_setting(setting)
    if value == "keep":
        return None
    if value == "auto":
        if accelerated and usable_cores >= MIN_CORES and current > usable_cores - RESERVED_CORES:
            return usable_cores - RESERVED_CORES
        return None
    return int(value)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS reports one: Linux)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
