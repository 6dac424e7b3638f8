#!/usr/bin/env bash
# The CPU benchmark suite, one command from a fresh clone (builds the harness first if needed):
#   bash tools/bench/run_cpu.sh
# Runs tools/bench/cache_scaling.py, interp_path.py, loop_overhead.py, vs_controller.py, memory.py,
# frame_encode.py, cpu_ops.py, commit_time.py and decode_path.py with their CPU defaults (tiny synthesised models at <= 128 px, commit_time and decode_path at 512x256; 1,000 loop iterations for memory);
# about 5 minutes on an idle 2-core machine, well under 10. Results: tools/bench/results/*.json and
# tools/bench/results/cpu_suite.log. Noisy neighbours slow every figure: the ratios, measured with both
# sides in the same run, are what to compare; the load average is printed before and after.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
bash tools/harness/setup_comfyui.sh || exit 1
H=${DW_HARNESS_DIR:-$repo/.harness}
PY=${COMFYUI_PYTHON:-$H/venv/bin/python}
mkdir -p tools/bench/results
log=tools/bench/results/cpu_suite.log
: > "$log"
failed=()
source tools/bench/suite_steps.sh

step load uptime
step cache_scaling "$PY" tools/bench/cache_scaling.py
step interp_path "$PY" tools/bench/interp_path.py
step loop_overhead "$PY" tools/bench/loop_overhead.py
step vs_controller "$PY" tools/bench/vs_controller.py
step memory "$PY" tools/bench/memory.py
step frame_encode "$PY" tools/bench/frame_encode.py
step cpu_ops "$PY" tools/bench/cpu_ops.py
step commit_time "$PY" tools/bench/commit_time.py
step decode_path "$PY" tools/bench/decode_path.py
step load uptime
suite_end tools/bench/results
