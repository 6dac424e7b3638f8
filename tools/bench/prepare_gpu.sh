#!/usr/bin/env bash
# Prepares, here (with network), what tools/bench/gpu_suite.sh needs on the GPU machine (no network, no
# ComfyUI, Python 3.12 with torch but without ComfyUI's other requirements listed below):
#   .whl/          wheels pip cannot fetch there: av (ComfyUI's V3 API imports it at module level),
#                  torchsde + trampoline (the k-diffusion samplers import torchsde), websocket-client
#                  (the replaced controller's websocket library, for tools/bench/vs_controller.py).
#                  av 18.1.0 is a cp311-abi3 wheel: it also installs on this machine's Python 3.11.
#   .gpu/ComfyUI/  ComfyUI 0.3.75 stripped of tests and of the tokenizer data of other model
#                  families (SD1.5's CLIP tokenizer, comfy/sd1_tokenizer, stays).
# Not carried (ComfyUI starts without them; --disable-api-nodes, no frontend): alembic, SQLAlchemy,
# Mako (the sqlite database is optional), pydantic*, kornia, spandrel (some comfy_extras nodes fail
# to import, which ComfyUI logs and skips), open_clip_torch and ftfy (optional in the pack), the
# frontend, template and docs packages (the server gets --front-end-root <empty folder>).
# Both folders are git-ignored through git's info/exclude; both travel with `carry: [".whl", ".gpu"]`.
# Prints their sizes: everything that travels must stay under 64 MiB.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
WHEELS=(av==18.1.0 torchsde==0.2.6 trampoline==0.1.2 websocket-client==1.9.2)
BUDGET_MIB=55

exclude=$(git rev-parse --git-path info/exclude)  # the repository's, also from a linked worktree
mkdir -p "$(dirname "$exclude")"
for path in /.whl/ /.gpu/; do
  grep -qxsF "$path" "$exclude" || echo "$path" >> "$exclude"
done

rm -rf .whl && mkdir -p .whl
for spec in "${WHEELS[@]}"; do
  python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "$spec"
done

bash tools/harness/setup_comfyui.sh >/dev/null
src=${COMFYUI_DIR:-${DW_HARNESS_DIR:-$repo/.harness}/ComfyUI}
rm -rf .gpu/ComfyUI && mkdir -p .gpu/ComfyUI
tar -C "$src" --exclude=./tests --exclude=./tests-unit --exclude=__pycache__ --exclude='*.pyc' \
  --exclude='./comfy/text_encoders/*_tokenizer' --exclude=./output --exclude=./input --exclude=./temp \
  --exclude=./user -cf - . | tar -C .gpu/ComfyUI -xf -
mkdir -p .gpu/ComfyUI/input .gpu/ComfyUI/output

du -sh .whl .gpu
tracked_kib=$(git ls-files -z --cached --others --exclude-standard | du -ck --files0-from=- 2>/dev/null | tail -1 | cut -f1)
carried_kib=$(du -sk .whl .gpu | awk '{s += $1} END {print s}')
total_mib=$(( (tracked_kib + carried_kib + 1023) / 1024 ))
echo "working tree ${tracked_kib} KiB + carried ${carried_kib} KiB = ${total_mib} MiB (budget ${BUDGET_MIB} MiB of 64)"
[ "$total_mib" -le "$BUDGET_MIB" ] || { echo "over budget: strip more" >&2; exit 1; }
