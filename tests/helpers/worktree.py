"""A git repository holding this working tree as it is now (committed or not), for tests that pack or
install the pack the way users get it: from git."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tools.harness.comfy_process import REPO


def snapshot(dest: Path) -> list[str]:
    """Copy the working tree's files (tracked, and untracked ones git does not ignore) into a new git
    repository at ``dest`` and commit them; returns their paths."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    files = sorted(f for f in listed if f and (REPO / f).is_file())
    for name in files:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
    git = ["git", "-c", "user.name=dream-window-tests", "-c", "user.email=tests@localhost"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "working tree"], cwd=dest, check=True)
    return files
