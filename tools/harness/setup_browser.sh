#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium for the browser tests (tests/browser), idempotently.
# Runs as root in CI with no stdin; Playwright drives this binary and never downloads a browser.
set -euo pipefail
if command -v chromium >/dev/null; then echo "chromium ready: $(command -v chromium)"; exit 0; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends chromium
