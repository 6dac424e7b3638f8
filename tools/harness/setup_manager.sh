#!/usr/bin/env bash
# Installs ComfyUI-Manager 4.3 (PyPI comfyui-manager, its cm-cli) for tests/e2e/test_manager_install.py,
# idempotently, in a venv of its own layered on the harness venv: a .pth file puts the harness venv's
# packages (torch, ComfyUI's requirements, the pack's) behind the venv's own, so pip installs only what
# the Manager needs on top, and whatever the Manager installs lands here, never in the harness venv.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
H=${DW_HARNESS_DIR:-$repo/.harness}
M=$H/manager-venv
marker=$M/.setup-done
if [ -f "$marker" ]; then echo "manager ready: $M"; exit 0; fi
VPY=${COMFYUI_PYTHON:-$H/venv/bin/python}
export PIP_DISABLE_PIP_VERSION_CHECK=1
rm -rf "$M"
"$VPY" -m venv --without-pip "$M"
"$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$("$M/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/harness-venv.pth"
"$M/bin/python" -m pip --version >/dev/null  # pip comes from the harness venv through the .pth file
"$M/bin/python" -m pip install -q -c "$H/constraints.txt" comfyui-manager==4.3
touch "$marker"
echo "manager ready: $M"
