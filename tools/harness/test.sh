#!/usr/bin/env bash
# Sets everything up and runs the whole test suite (what .ci/run calls). Extra args go to pytest.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
bash "$repo/tools/harness/setup_comfyui.sh"
bash "$repo/tools/harness/setup_browser.sh"
bash "$repo/tools/harness/setup_manager.sh"
H=${DW_HARNESS_DIR:-$repo/.harness}
export DW_FRONTEND_DIR=${DW_FRONTEND_DIR:-$H/frontend}  # the newest frontend, for tests/browser
bash "$repo/tools/harness/setup_frontend.sh"
cd "$repo"
# The suite needs about 1 GB free beside the harness; a full disk shows up here first.
df -h "$repo" "${TMPDIR:-/tmp}"
# pytest exits 5 when it collected no test: that fails this script like any other non-zero exit.
exec "${COMFYUI_PYTHON:-$H/venv/bin/python}" -m pytest -c tests/pytest.ini tests "$@"
