#!/usr/bin/env bash
# The GPU benchmark suite, one command on the lent GPU machine. By default the performance
# issue's items (about 6 minutes with start-up): tools/bench/interp_path.py, loop_overhead.py,
# vs_controller.py and memory.py at the replaced controller's settings (512x256, 10 steps, cfg 6,
# euler/karras, denoise 0.2, N = 10 and 32; interp_path also N = 64) with the full SD1.5
# architecture (random fp16 weights made at run time by tools/harness/make_tiny_models.py full_sd15 with
# ComfyUI's own classes). Named on the command line instead: any of those and frame_encode,
# cpu_ops (CPU-side tensor work under a busy frame writer), commit_time (Commit's executor time, the
# asynchronous commit vs the replaced one, frames on the GPU, with and without the cache), decode_path
# (ComfyUI's VAE Decode vs the pack's decode to uint8 on the GPU: the CPU tail, and the pack's decode by VAE
# dtype and memory format), loop_fps (CUDA graph off and on, the cache analysis on its worker and in
# Commit, and where an iteration's time goes), cuda_graph (tools/bench/cuda_graph_bench.py) and divisor_fps
# (loop fps per resolution divisor 1, 1.5, 2, 3 as ratios against 1); `all` runs every one.
# The environment and the models always come first. Every result goes to $OUT (suite.log, one
# JSON per benchmark).
#
#   bash tools/bench/gpu_suite.sh [--cpu-dry-run] [all | BENCHMARK...]
# LOOP_PROFILE=<node class> runs that node under cProfile in loop_fps's per-node pass.
#
# Prepare here first: bash tools/bench/prepare_gpu.sh (wheels in .whl/, stripped ComfyUI in .gpu/ComfyUI).
# Device-tool call: carry [".whl", ".gpu"], timeout_s 600, command:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site && PYTHONUNBUFFERED=1 bash tools/bench/gpu_suite.sh
#
# --cpu-dry-run: the same steps on the CPU with the tiny models and tiny counts (a few minutes), to
# check the environment (see tools/bench/gpu_dry_run.sh); results go to $OUT or tools/bench/results/gpu-dry-run.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
mode=gpu
ISSUE=(interp_path loop_overhead vs_controller memory)
ALL=("${ISSUE[@]}" frame_encode cpu_ops commit_time decode_path loop_fps cuda_graph divisor_fps)
[ "${1:-}" = --cpu-dry-run ] && { mode=cpu; shift; }
only=("${@:-${ISSUE[@]}}")
[ "${only[*]}" = all ] && only=("${ALL[@]}")
for name in "${only[@]}"; do
  [[ " ${ALL[*]} " == *" $name "* ]] || { echo "usage: bash tools/bench/gpu_suite.sh [--cpu-dry-run] [all | ${ALL[*]}]" >&2; exit 2; }
done
PY=${PYTHON:-python3}
export COMFYUI_DIR=${COMFYUI_DIR:-$repo/.gpu/ComfyUI}
out=${OUT:-$repo/tools/bench/results/gpu-$([ $mode = cpu ] && echo dry-run || date +%Y%m%d-%H%M%S)}
work=$(mktemp -d /tmp/dw-gpu-suite.XXXXXX)
export DW_HARNESS_DIR=$work/harness
models=$work/models
front=$work/web
mkdir -p "$out" "$models" "$front"
log=$out/suite.log
[ -f "$COMFYUI_DIR/main.py" ] || { echo "no ComfyUI at $COMFYUI_DIR: run bash tools/bench/prepare_gpu.sh here first" >&2; exit 2; }

if [ $mode = gpu ]; then
  # Each benchmark's defaults on CUDA / with --gpu are the replaced controller's settings.
  kinds=(full_sd15); ckpt=dream_window_full_sd15.safetensors; device=(--gpu)
  interp=(); loop=(); vs=(); mem=(); fps=(); enc=(); ops=(--repeats 15); commit=(--device cuda); div=()
  decode=(--vaes taesd kl --repeats 5)
else
  kinds=(sd15); ckpt=dream_window_tiny_sd15.safetensors; device=()
  interp=(--frames 2 4 --taesd-size 64x32 --kl-size 32x16 --repeats 1)
  loop=(--frames 2 --steps 2 --rounds 1 --iterations 2 --node-iterations 1)
  vs=(--frames 2 --steps 2 --keyframes 3); mem=(--iterations 20 --warmup 5)
  fps=(--frames 2 --steps 2 --warmup 1 --iterations 2 --node-iterations 2); enc=(--rounds 1)
  ops=(--repeats 2 --frames 2); commit=(--repeats 2); div=(--size 64x64 --frames 2 --iterations 1)
  decode=(--size 64x32 --frames 2 --repeats 1 --variants fp32)
fi
server=("${device[@]}" --models "$models" --checkpoint "$ckpt" --front-end-root "$front" --python "$PY")
failed=()
source tools/bench/suite_steps.sh

environment() {
  date -u +"date %Y-%m-%dT%H:%M:%SZ"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  echo "mode $mode, ComfyUI $COMFYUI_DIR, results $out"
}

step environment environment
step models "$PY" tools/harness/make_tiny_models.py --comfy "$COMFYUI_DIR" --models "$models" "${kinds[@]}"
wanted() { [[ " ${only[*]} " == *" $1 "* ]]; }
wanted interp_path && step interp_path "$PY" tools/bench/interp_path.py "${interp[@]}" --output "$out/interp_path.json"
wanted loop_overhead && step loop_overhead "$PY" tools/bench/loop_overhead.py "${server[@]}" "${loop[@]}" --output "$out/loop_overhead.json"
wanted vs_controller && step vs_controller "$PY" tools/bench/vs_controller.py "${server[@]}" "${vs[@]}" --output "$out/vs_controller.json"
wanted memory && step memory "$PY" tools/bench/memory.py "${server[@]}" "${mem[@]}" --output "$out/memory.json"
wanted frame_encode && step frame_encode "$PY" tools/bench/frame_encode.py "${enc[@]}" --output "$out/frame_encode.json"
wanted cpu_ops && step cpu_ops "$PY" tools/bench/cpu_ops.py "${ops[@]}" --output "$out/cpu_ops.json"
wanted commit_time && step commit_time "$PY" tools/bench/commit_time.py "${commit[@]}" --output "$out/commit_time.json"
wanted decode_path && step decode_path "$PY" tools/bench/decode_path.py "${decode[@]}" --output "$out/decode_path.json"
wanted loop_fps && step loop_fps "$PY" tools/bench/loop_fps.py "${server[@]}" "${fps[@]}" ${LOOP_PROFILE:+--profile "$LOOP_PROFILE"} \
  --output "$out/loop_fps.json"
wanted divisor_fps && step divisor_fps "$PY" tools/bench/divisor_fps.py "${server[@]}" "${div[@]}" --output "$out/divisor_fps.json"
if wanted cuda_graph; then
  step cuda_graph "$PY" tools/bench/cuda_graph_bench.py --comfy "$COMFYUI_DIR"
  for f in tools/bench/results/cuda_graph*.json; do [ -f "$f" ] && cp "$f" "$out/"; done
fi
rm -rf "$work"
suite_end "$out"
