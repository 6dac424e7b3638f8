# Sourced by tools/bench/run_cpu.sh and tools/bench/gpu_suite.sh: `step NAME COMMAND...` runs one benchmark,
# appends its output to $log, prints its time, and on failure adds NAME to the array `failed`
# and lets the suite go on. The caller sets `log` and `failed=()` and ends with `suite_end`.

step() {
  local name=$1 start=$SECONDS
  shift
  echo "=== $name: $*" | tee -a "$log"
  if "$@" 2>&1 | tee -a "$log"; then
    echo "=== $name done in $((SECONDS - start)) s" | tee -a "$log"
  else
    echo "=== $name FAILED after $((SECONDS - start)) s" | tee -a "$log"
    failed+=("$name")
  fi
}

suite_end() {  # suite_end RESULTS_DIR: the closing line; the exit status says whether every step passed
  echo "=== suite finished in $SECONDS s; results in $1; failed: ${failed[*]:-none}" | tee -a "$log"
  [ ${#failed[@]} -eq 0 ]
}
