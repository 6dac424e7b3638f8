import os
import shutil
import tempfile
from pathlib import Path

import pytest

from helpers.dream_loop import TEST_PACKS
from tools.harness.comfy_process import ComfyServer, REPO

ARTIFACTS = Path(os.environ.get("DW_TEST_ARTIFACTS", REPO / "test-artifacts"))


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def comfy_base():
    base = Path(tempfile.mkdtemp(prefix="dw-comfy-"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def comfy(comfy_base, artifacts):
    """One ComfyUI server shared by the end-to-end tests (each test uses its own session names)."""
    server = ComfyServer(comfy_base, extra_packs=TEST_PACKS).start()
    yield server
    server.stop()
    shutil.copy(server.log_path, artifacts / "comfy-e2e.log")
