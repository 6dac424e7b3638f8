#!/usr/bin/env bash
# Fetches the newest ComfyUI frontend the browser tests also run against (tests/browser): the
# comfyui-frontend-package wheel from PyPI, unpacked (never installed) so that the harness ComfyUI can
# serve it with --front-end-root. Idempotent: a finished unpack is reused.
#   DW_FRONTEND_DIR  where it goes (default: <harness>/frontend); the tests read the same variable
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
H=${DW_HARNESS_DIR:-$repo/.harness}
VERSION=1.58.1
SHA=37912597537a731a8f421179618a736c24184c5bdbfa327f38b2fb7c291852d9
F=${DW_FRONTEND_DIR:-$H/frontend}
if [ -f "$F/.version-$VERSION" ]; then echo "frontend $VERSION ready: $F"; exit 0; fi
VPY=${COMFYUI_PYTHON:-$H/venv/bin/python}
tmp=$(mktemp -d)
PIP_DISABLE_PIP_VERSION_CHECK=1 "$VPY" -m pip download -q --no-deps -d "$tmp" "comfyui-frontend-package==$VERSION"
whl=$(ls "$tmp"/comfyui_frontend_package-"$VERSION"-*.whl)
echo "$SHA  $whl" | sha256sum -c --quiet
"$VPY" - "$whl" "$tmp/x" <<'PYEOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("comfyui_frontend_package/static/")])
PYEOF
rm -rf "$F"; mkdir -p "$(dirname "$F")"; mv "$tmp/x" "$F"; rm -rf "$tmp"
touch "$F/.version-$VERSION"
echo "frontend $VERSION ready: $F"
