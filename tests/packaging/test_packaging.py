"""Registry metadata, requirements and `comfy node validate` (comfy-cli in its own venv)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib


from harness.comfy_process import HARNESS, REPO

COMFY_CLI = HARNESS / "cli-venv" / "bin" / "comfy"
TORCH_LINE = re.compile(r"^\s*[\"']?torch(vision|audio)?\s*([<>=~!;\[].*)?[\"']?,?\s*$", re.IGNORECASE)


def test_pyproject_has_registry_fields():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert project["name"] == "dream-window" and project["version"] and project["description"]
    assert project["license"] == {"file": "LICENSE"} and "GNU GENERAL PUBLIC LICENSE" in (REPO / "LICENSE").read_text()
    assert project["requires-python"] and project["urls"]["Repository"]
    assert not [d for d in project["dependencies"] if TORCH_LINE.match(d)], "torch must never be listed"
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["Icon"]
    assert comfy["requires-comfyui"] == ">=0.3.75", "the oldest version the tests run against"


def test_requirements_never_list_torch():
    lines = (REPO / "requirements.txt").read_text().split()
    assert lines == ["numpy", "open_clip_torch", "Pillow", "safetensors"]
    assert not [line for line in lines if TORCH_LINE.match(line)]


def test_entrypoint_only():
    init = (REPO / "__init__.py").read_text()
    assert "comfy_entrypoint" in init and "WEB_DIRECTORY" in init
    assert "NODE_CLASS_MAPPINGS" not in init, "it would make ComfyUI ignore comfy_entrypoint"


def test_comfy_imports_stay_in_the_adapter():
    pattern = re.compile(r"^\s*(from|import)\s+(comfy_api|comfy|comfy_execution|server|folder_paths|nodes)\b", re.M)
    offenders = [p.relative_to(REPO) for p in list((REPO / "core").rglob("*.py")) + list((REPO / "nodes").rglob("*.py"))
                 if p.name != "comfy_adapter.py" and pattern.search(p.read_text())]
    assert offenders == []


def run_validate(cwd, tmp_path):
    env = {**os.environ, "HOME": str(tmp_path)}
    subprocess.run([str(COMFY_CLI), "--skip-prompt", "tracking", "disable"], env=env, capture_output=True, check=True)
    return subprocess.run([str(COMFY_CLI), "--skip-prompt", "node", "validate"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_comfy_node_validate_passes(tmp_path):
    assert COMFY_CLI.exists(), f"comfy-cli missing at {COMFY_CLI}: run harness/setup_comfyui.sh"
    result = run_validate(REPO, tmp_path)
    assert result.returncode == 0 and "All validation checks passed" in result.stdout + result.stderr, result.stdout + result.stderr
    bare = tmp_path / "bare"
    shutil.copytree(REPO / "core", bare / "core")
    result = run_validate(bare, tmp_path)
    assert result.returncode != 0, "validate must fail without a pyproject.toml"
