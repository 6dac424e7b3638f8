"""Registry metadata, requirements, `comfy node validate` and `comfy node pack` (comfy-cli in its own venv)."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from helpers.worktree import snapshot
from tools.harness.comfy_process import COMFYUI_DIR, HARNESS, REPO

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
    bundled = HARNESS / "ComfyUI" / "comfyui_version.py"
    if bundled.exists():  # the harness's own ComfyUI (not one given in COMFYUI_DIR)
        assert f'__version__ = "{comfy["requires-comfyui"][2:]}"' in bundled.read_text(), \
            "requires-comfyui names the ComfyUI the harness builds and the tests run against"


def requirement_lines() -> list[str]:
    return (REPO / "requirements.txt").read_text().split()


def test_requirements_never_list_torch():
    lines = requirement_lines()
    assert lines and not [line for line in lines if TORCH_LINE.match(line)]
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"] == lines, \
        "pyproject.toml and requirements.txt declare the same packages"


RUNTIME_ROOTS = ("__init__.py", "core", "nodes")
COMFYUI_MODULES = {"comfy", "comfy_api", "comfy_execution", "server", "folder_paths", "nodes"}
COMFYUI_PROVIDED = {"torch", "aiohttp", "av", "psutil"}
OPTIONAL_IMPORTS = {"pynvml": "nvidia-ml-py"}
"""Imported only where installed (the GPU monitor's VRAM check): an optional dependency."""
"""Never declared: the user's own (CUDA) torch, the web server the routes plug into, ComfyUI's video library."""


def third_party_imports() -> dict[str, set[str]]:
    """Top-level modules the pack's runtime code imports (anywhere in a module), with the files."""
    found: dict[str, set[str]] = {}
    files = [REPO / "__init__.py", *(REPO / "core").rglob("*.py"), *(REPO / "nodes").rglob("*.py")]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in COMFYUI_MODULES and top != "__future__":
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_package_is_declared():
    declared = {normalized(line) for line in requirement_lines()}
    comfy_reqs = {normalized(re.split(r"[<>=~!; \[]", line.strip())[0])
                  for line in (COMFYUI_DIR / "requirements.txt").read_text().splitlines()
                  if line.strip() and not line.startswith("#")}
    dists = importlib.metadata.packages_distributions()
    imports = third_party_imports()
    assert "numpy" in imports and "torch" in imports, "the scan finds the pack's imports"
    undeclared = {}
    optional = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for module, files in imports.items():
        if module in OPTIONAL_IMPORTS:
            assert any(OPTIONAL_IMPORTS[module] in deps for deps in optional.values()), \
                f"{module} is optional: declare {OPTIONAL_IMPORTS[module]} in [project.optional-dependencies]"
            continue
        assert module in dists, f"{module} (imported in {sorted(files)}) is not installed in the test venv"
        dist = normalized(dists[module][0])
        if dist in COMFYUI_PROVIDED:
            assert dist in comfy_reqs, f"{dist} is not one of ComfyUI's own requirements; declare it"
        elif dist not in declared:
            undeclared[dist] = sorted(files)
    assert undeclared == {}, "imported but not in requirements.txt / pyproject.toml dependencies"


def test_entrypoint_only():
    init = (REPO / "__init__.py").read_text()
    assert "comfy_entrypoint" in init and "WEB_DIRECTORY" in init
    assert "NODE_CLASS_MAPPINGS" not in init, "it would make ComfyUI ignore comfy_entrypoint"


def test_comfy_imports_stay_in_the_adapter():
    pattern = re.compile(r"^\s*(from|import)\s+(comfy_api|comfy|comfy_execution|server|folder_paths|nodes)\b", re.M)
    offenders = [p.relative_to(REPO) for p in list((REPO / "core").rglob("*.py")) + list((REPO / "nodes").rglob("*.py"))
                 if p.name != "comfy_adapter.py" and pattern.search(p.read_text())]
    assert offenders == []


def run_comfy_cli(command: str, cwd, tmp_path):
    env = {**os.environ, "HOME": str(tmp_path)}
    subprocess.run([str(COMFY_CLI), "--skip-prompt", "tracking", "disable"], env=env, capture_output=True, check=True)
    return subprocess.run([str(COMFY_CLI), "--skip-prompt", "node", command], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_comfy_node_validate_passes(tmp_path):
    assert COMFY_CLI.exists(), f"comfy-cli missing at {COMFY_CLI}: run tools/harness/setup_comfyui.sh"
    result = run_comfy_cli("validate", REPO, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "All validation checks passed" in output, output
    assert "warning" not in output.lower(), output
    bare = tmp_path / "bare"
    shutil.copytree(REPO / "core", bare / "core")
    result = run_comfy_cli("validate", bare, tmp_path)
    assert result.returncode != 0, "validate must fail without a pyproject.toml"


DEV_ONLY = ("tests", "tools", ".ci", ".gitignore", ".comfyignore")


def test_comfy_node_pack_ships_the_runtime_files_only(tmp_path):
    """The archive `comfy node publish` uploads (same code as `comfy node pack`): git-tracked files
    less .comfyignore, made from a git copy of this working tree."""
    tree = tmp_path / "dream-window"
    files = snapshot(tree)
    result = run_comfy_cli("pack", tree, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    with zipfile.ZipFile(tree / "node.zip") as archive:
        packed = set(archive.namelist())
        assert archive.testzip() is None
    runtime = {f for f in files if Path(f).parts[0] not in DEV_ONLY}
    assert {"__init__.py", "pyproject.toml", "requirements.txt", "LICENSE", "README.md",
            "web/js/dream_window.js", "workflows/dream_window.json", "nodes/comfy_adapter.py"} <= runtime
    assert sorted(packed - runtime) == [], "dev-only files in the published node"
    assert sorted(runtime - packed) == [], "runtime files missing from the published node"
