#!/usr/bin/env bash
# Sets everything up (ComfyUI 0.3.75 build, or the one in COMFYUI_DIR) and runs the dream loop headless.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
bash "$repo/tools/harness/setup_comfyui.sh"
H=${DW_HARNESS_DIR:-$repo/.harness}
exec "${COMFYUI_PYTHON:-$H/venv/bin/python}" "$repo/tools/harness/run_dream.py" "$@"
