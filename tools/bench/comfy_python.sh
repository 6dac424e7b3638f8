#!/bin/sh
# Stands in for ComfyUI's Python in tools/harness/comfy_process.ComfyServer(python=...) when main.py
# needs an argument ComfyServer does not pass: runs DW_COMFY_REAL_PYTHON (default python3) with
# the same arguments plus --front-end-root DW_COMFY_FRONT_END_ROOT (a server with no frontend package).
if [ -n "${DW_COMFY_FRONT_END_ROOT:-}" ]; then
  exec "${DW_COMFY_REAL_PYTHON:-python3}" "$@" --front-end-root "$DW_COMFY_FRONT_END_ROOT"
fi
exec "${DW_COMFY_REAL_PYTHON:-python3}" "$@"
