"""Developer tools, never shipped with the pack: ``harness`` (a private ComfyUI to test and demo
against), ``bench`` (the benchmarks) and ``client`` (a stdlib client of the pack's HTTP routes)."""
