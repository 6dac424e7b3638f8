"""Loop overhead: the bundled dream workflow looping by itself versus the bare img2img
workflow queued back to back, on one real ComfyUI server, same model, settings and size.

* **dream**: ``workflows/api/dream_window.json`` queued once with throttling off
  (``buffer_target`` 0, ``min_delay`` 0); its AutoQueue supervisor queues every next iteration;
* **bare**: CheckpointLoaderSimple -> CLIPTextEncode x2 -> KSampler on a fixed latent (same
  steps, cfg, sampler, scheduler, denoise) -> RepeatLatentBatch (N + 1 latents) ->
  VAEDecode -> PreviewImage, ``iterations`` prompts queued at once (distinct seeds).

Times come from the server process (the bench-only ``tools/bench/node_timing`` pack): a prompt's
start and end, so per iteration: the **period** (start to next start, the loop's wall time),
the **gap** (one iteration's end to the next one's start), and, in a separate pass with
device synchronisation around each node, every node's time (the pack's own nodes summed).
The dream loop's frame writes run off the executor thread and are not in any node's time.
Dream and bare alternate in rounds; each round's first iteration is a warm-up (the dream's
first iteration is txt2img with no interpolation) and is left out.

Prints the per-iteration table and the per-node table, writes ``tools/bench/results/loop_overhead.json``.
Targets on a GPU at the replaced controller's settings: dream/bare <= 1.05x; the pack's nodes < 5 ms.

Run: ``python tools/bench/loop_overhead.py`` (``--help`` for options; ``--gpu`` for a CUDA server).
"""

from __future__ import annotations

import argparse
import sys

import serverlib as sl
from common import fmt, frame_size, output_arg, positive_int, print_table, ratio, write_results

TARGET_RATIO = 1.05
TARGET_PACK_MS = 5.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; nonsense values are refused, device-dependent defaults filled in."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=positive_int, nargs="+", default=[10, 32],
                        help=f"interpolated frames per iteration, N (default 10 32; at most {sl.MAX_REPEAT - 1})")
    parser.add_argument("--size", type=frame_size, help="frame size WxH (default 512x256 with --gpu, else 64x64)")
    parser.add_argument("--steps", type=positive_int, default=10, help="sampler steps (10)")
    parser.add_argument("--iterations", type=positive_int,
                        help="timed iterations per side per round (default 6 with --gpu, else 3)")
    parser.add_argument("--rounds", type=positive_int, default=2, help="alternating rounds per N (2)")
    parser.add_argument("--node-iterations", type=positive_int,
                        help="iterations per side of the per-node timing pass (default 3 with --gpu, else 2)")
    parser.add_argument("--timeout", type=positive_int, default=600, help="seconds allowed per phase (600)")
    sl.add_server_args(parser)
    output_arg(parser, "loop_overhead")
    args = parser.parse_args(argv)
    too_many = [n for n in args.frames if n + 1 > sl.MAX_REPEAT]
    if too_many:
        parser.error(f"--frames {too_many}: the bare workflow's RepeatLatentBatch makes at most "
                     f"{sl.MAX_REPEAT} latents, so N <= {sl.MAX_REPEAT - 1}")
    sl.check_server_args(parser, args)
    args.size = args.size or ((512, 256) if args.gpu else (64, 64))
    args.iterations = args.iterations or (6 if args.gpu else 3)
    args.node_iterations = args.node_iterations or (3 if args.gpu else 2)
    return args


def measure(server, args: argparse.Namespace, frames: int) -> dict:
    """All rounds and the per-node pass at one N."""
    runs: dict[str, list[list[dict]]] = {"dream": [], "bare": []}

    def run(side: str, tag: str, iterations: int) -> list[dict]:
        dream = sl.dream_workflow(args.checkpoint, args.size, args.steps, frames, f"bench_n{frames}_{tag}",
                                  max_iterations=1 + iterations)
        if side == "dream":
            return sl.run_dream(server, dream, 1, iterations, args.timeout)
        return sl.run_bare(server, dream, frames, 1, iterations, args.timeout)

    for r in range(args.rounds):
        for side in (("dream", "bare") if r % 2 == 0 else ("bare", "dream")):
            runs[side].append(run(side, f"r{r}", args.iterations))
    sl.set_node_timing(server, True)
    try:
        nodes = {side: sl.node_stats(run(side, "nodes", args.node_iterations)) for side in runs}
    finally:
        sl.set_node_timing(server, False)
    result = {side: sl.iteration_stats(side_runs) for side, side_runs in runs.items()}
    result["frames"] = frames
    result["nodes"] = nodes
    result["ratio"] = ratio(result["dream"]["period_ms"], result["bare"]["period_ms"])
    return result


def main(argv: list[str] | None = None) -> int:
    """Measure both sides, print the tables, write the JSON; returns the exit status."""
    args = parse_args(argv)
    w, h = args.size
    print(f"{w}x{h}, {args.steps} steps, N = {args.frames}, {args.rounds} rounds x {args.iterations} iterations "
          f"per side (+1 warm-up each), node pass {args.node_iterations} per side", flush=True)
    with sl.open_server(args, "loop") as server:
        rows = []
        for frames in args.frames:
            rows.append(measure(server, args, frames))
            print(f"  N={frames}: dream/bare {fmt(rows[-1]['ratio'])}x", flush=True)
    print_table(f"per iteration, server-side medians (ms); {w}x{h}, {args.steps} steps, {args.checkpoint}",
                ["N", "dream", "bare", "dream/bare", "dream gap", "bare gap", "dream gap max", "pack nodes"],
                [[r["frames"], fmt(r["dream"]["period_ms"], 1), fmt(r["bare"]["period_ms"], 1),
                  fmt(r["ratio"], 3, "x"), fmt(r["dream"]["gap_ms"]), fmt(r["bare"]["gap_ms"]),
                  fmt(r["dream"]["gap_max_ms"]), fmt(r["nodes"]["dream"]["pack_ms"])] for r in rows])
    classes = sorted({c for r in rows for side in ("dream", "bare") for c in r["nodes"][side]["per_class_ms"]})
    node_rows = []
    for r in rows:
        for c in classes:
            cells = [r["nodes"][side]["per_class_ms"].get(c) for side in ("dream", "bare")]
            node_rows.append([c, r["frames"], fmt(cells[0]), fmt(cells[1])])
    print_table("per node per iteration (ms, median; device synchronised around each node; n/a = not in that "
                "workflow)", ["node", "N", "dream", "bare"], node_rows)
    print(f"targets on a GPU at the replaced controller's settings: dream/bare <= {TARGET_RATIO}x, "
          f"pack nodes < {TARGET_PACK_MS:g} ms")
    write_results(args.output, {"size": [w, h], "steps": args.steps, "checkpoint": args.checkpoint,
                                "device": "cuda" if args.gpu else "cpu", "threads": args.threads, "rounds": args.rounds,
                                "iterations_per_round": args.iterations, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
