"""Crash-safe file writes: temp file in the target's folder, fsync, then ``os.replace``.

A reader (or a restarted server) sees either the old complete file or the new complete
file, never a partial one. ``DREAM_WINDOW_FAULT`` lets the fault tests stop the process
just before or just after a replace (see ``fault_point``).
"""

from __future__ import annotations

import fnmatch
import json
import os
import secrets
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

FAULT_ENV = "DREAM_WINDOW_FAULT"
_fault_hits: dict = {}
"""How often each rule's point was reached, for ``@<n>`` (and the spec they count for)."""


_scope = threading.local()


@contextmanager
def fault_scope(scope: str) -> Iterator[None]:
    """Within the block, on this thread, every fault point is also reached as ``<scope>:<point>``."""
    _scope.name = scope
    try:
        yield
    finally:
        _scope.name = None


def fault_point(name: str) -> None:
    """Simulate a crash or a full disk at a named point, when the tests ask for it.

    ``DREAM_WINDOW_FAULT=<point>:kill`` kills the process with SIGKILL there;
    ``<point>:enospc`` raises ``OSError(ENOSPC)``. Points are ``before_replace:<file>``
    and ``after_replace:<file>`` where ``<file>`` is the target's file name, or a
    ``fnmatch`` pattern of it (``before_replace:????????-????????.safetensors``: a cache
    tensor file), and inside a keyframe's commit on the frame writer ``commit:frames_written``
    (its frames are on disk, its latents not yet) and ``commit:durable`` (its ``state.json`` was
    replaced, its frames not yet announced); inside ``fault_scope(scope)`` a point is also
    reached as ``<scope>:<point>`` (``commit:before_replace:state.json``: the commit's state
    write, not another thread's). ``<point>:<action>@<n>`` acts from the n-th time the point is reached
    on (counted per process), e.g. ``before_replace:state.json:kill@5``.
    Several rules may be given, separated by commas.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    if spec != _fault_hits.get("spec"):
        _fault_hits.clear()
        _fault_hits["spec"] = spec
    scope = getattr(_scope, "name", None)
    names = (name, f"{scope}:{name}") if scope else (name,)
    for rule in spec.split(","):
        point, _, action = rule.rpartition(":")
        action, _, nth = action.partition("@")
        if not any(fnmatch.fnmatchcase(reached, point) for reached in names):
            continue
        _fault_hits[rule] = hits = _fault_hits.get(rule, 0) + 1
        if hits < int(nth or 1):
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "enospc":
            raise OSError(28, "No space left on device (injected fault)", name)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write ``path`` atomically; ``write(fileobj)`` fills a temp file in the same folder."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Created like any file the server writes: 0666 less the umask (``mkstemp`` would make it 0600, so a
    # desktop widget or web server running as another user could not read the frames and status).
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        fault_point(f"before_replace:{target.name}")
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fault_point(f"after_replace:{target.name}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically replace ``path`` with ``obj`` as indented UTF-8 JSON (NaN refused)."""
    atomic_write_bytes(path, json.dumps(obj, indent=2, allow_nan=False).encode("utf-8"))


def atomic_link(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Point ``dst`` at the already written file ``src`` without copying or re-encoding.

    A hard link is made under a temp name next to ``dst`` and renamed over it, so a
    reader polling ``dst`` always opens a complete file. Falls back to a copy where the
    filesystem has no hard links.
    """
    target = Path(dst)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.lnk")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        import shutil

        shutil.copyfile(src, tmp)
    os.replace(tmp, target)


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Delete the temp files an interrupted ``atomic_write`` or ``atomic_link`` left in ``folder``.

    Only call it while nothing writes to ``folder`` (when a session or cache is loaded);
    returns how many files were removed.
    """
    removed = 0
    directory = Path(folder)
    if directory.is_dir() and not directory.is_symlink():
        for path in directory.iterdir():
            if path.name.startswith(".") and path.name.endswith((".tmp", ".lnk")) and path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
    return removed
