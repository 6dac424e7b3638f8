"""Loop frames per second with and without the CUDA-graph node, on one server in one run.

    python tools/bench/loop_fps.py [--gpu --models DIR --checkpoint NAME --front-end-root DIR]

The bundled dream workflow (throttling off) runs ``--warmup + --iterations`` keyframes by
itself three times: with its Dream Window CUDA Graph node disabled, enabled, and enabled with
the cache analysis in the Commit node (tuning ``background_analysis: false``) instead of on the
cache worker; frames produced per second are taken over the iterations after the warm-up, from
the server-side prompt timings. The node's counters (captures, replays, fallbacks) are read from
the server log. Two last passes (``--node-iterations`` each, CUDA graph on, the analysis on its
worker and in Commit) time each node with the device synchronised around it, to show where an
iteration's time goes (and how much of it is ComfyUI's own work between nodes), and the stretch
from a Commit's start to the end of the next keyframe source, which the background analysis
overlaps. Results: tools/bench/results/loop_fps.json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from itertools import pairwise
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]

from common import fmt, frame_size, machine_info, median, output_arg, positive_int, print_table, ratio, write_results  # noqa: E402
from serverlib import (add_server_args, check_server_args, dream_workflow, node_id, node_stats, open_server,  # noqa: E402
                       run_dream, set_node_timing)

COUNTERS = re.compile(r"DreamWindowCudaGraph.*?(\d+) captures, (\d+) replays, (\d+) fallbacks")


VARIANTS = (("eager", False, True), ("cuda graph", True, True), ("cuda graph, cache analysis in Commit", True, False))
"""(label, CUDA graph node enabled, cache analysis on the worker)."""


def workflow(args, size, session: str, iterations: int, accel: bool, background: bool) -> dict:
    wf = dream_workflow(args.checkpoint, size, args.steps, args.frames, session, iterations)
    wf[node_id(wf, "DreamWindowCudaGraph")]["inputs"]["enabled"] = accel
    cache = wf[node_id(wf, "DreamWindowCache")]["inputs"]
    cache["tuning"] = json.dumps({**json.loads(cache["tuning"]), "background_analysis": background})
    return wf


def commit_to_decision(records: list[dict]) -> float | None:
    """Median ms from each Commit's start to the end of the next prompt's keyframe source: the
    stretch the cache analysis can overlap (the commit, the gap between prompts, the first nodes)."""
    spans = []
    for a, b in pairwise(records):
        commit = next(n for n in a["nodes"] if n["class_type"] == "DreamWindowCommit")
        source = next(n for n in b["nodes"] if n["class_type"] == "DreamWindowKeyframeSource")
        spans.append((source["start"] - commit["start"]) * 1e3 + source["ms"])
    return median(spans)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_args(parser)
    parser.add_argument("--size", type=frame_size, help="WxH (default 512x256 with --gpu, else 64x64)")
    parser.add_argument("--steps", type=positive_int, default=10)
    parser.add_argument("--frames", type=positive_int, default=10, help="interpolated frames per keyframe (10)")
    parser.add_argument("--warmup", type=positive_int, default=3)
    parser.add_argument("--iterations", type=positive_int, default=20)
    parser.add_argument("--node-iterations", type=positive_int, default=5,
                        help="iterations of the per-node timing pass, CUDA graph on (5)")
    parser.add_argument("--profile", metavar="CLASS_TYPE",
                        help="run this node class under cProfile in the per-node pass and print where it spends")
    output_arg(parser, "loop_fps")
    args = parser.parse_args()
    check_server_args(parser, args)
    size = args.size or ((512, 256) if args.gpu else (64, 64))
    rows, results = [], {"machine": machine_info(), "size": list(size), "steps": args.steps, "frames": args.frames}
    with open_server(args, "fps") as server:
        for label, accel, background in VARIANTS:
            total = args.warmup + args.iterations
            wf = workflow(args, size, f"fps_{int(accel)}{int(background)}", total, accel, background)
            records = run_dream(server, wf, args.warmup, args.iterations, 900)
            seconds = records[-1]["end"] - records[0]["start"]
            fps = args.iterations * (args.frames + 1) / seconds
            results[label] = {"fps": fps, "iteration_ms": 1000 * seconds / args.iterations}
            rows.append([label, f"{fps:.1f}", f"{1000 * seconds / args.iterations:.1f}"])
        counters = COUNTERS.findall(server.log_tail(2_000_000))
        results["cuda_graph_counters"] = [list(map(int, c)) for c in counters[-1:]]
        passes = {}
        for label, background in (("background", True), ("in Commit", False)):
            wf = workflow(args, size, f"fps_nodes{int(background)}", 1 + args.node_iterations, True, background)
            set_node_timing(server, True, args.profile if background else None)
            try:
                timed = run_dream(server, wf, 1, args.node_iterations, 900)
            finally:
                set_node_timing(server, False)
            if args.profile and background:
                results["profile"] = server.get("/dw_bench/profile")["stats"]
            nodes = node_stats(timed)
            executing = median((r["end"] - r["start"]) * 1e3 for r in timed)
            in_nodes = median(sum(n["ms"] for n in r["nodes"] if not n["cached"]) for r in timed)
            passes[label] = {**nodes, "executing_ms": executing, "in_nodes_ms": in_nodes,
                             "commit_to_decision_ms": commit_to_decision(timed)}
    results["nodes"], results["nodes_analysis_in_commit"] = passes["background"], passes["in Commit"]
    speedup = ratio(results["cuda graph"]["fps"], results["eager"]["fps"])
    results["speedup"] = speedup
    print_table(f"loop frames per second, {size[0]}x{size[1]}, {args.steps} steps, N={args.frames}, "
                f"{args.iterations} iterations after {args.warmup} warm-up", ["loop", "fps", "ms/iteration"], rows)
    print(f"cuda graph / eager: {speedup:.2f}x; node counters (captures, replays, fallbacks): "
          f"{results['cuda_graph_counters'] or 'none logged'}")
    results["background_speedup"] = ratio(results["cuda graph"]["fps"], results[VARIANTS[2][0]]["fps"])
    print(f"cache analysis on the worker / in Commit (CUDA graph on): {fmt(results['background_speedup'], 2, 'x')}")
    classes = sorted(set(passes["background"]["per_class_ms"]) | set(passes["in Commit"]["per_class_ms"]))
    print_table(f"where an iteration goes, CUDA graph on ({args.node_iterations} iterations, medians, device "
                f"synchronised around each node), with the cache analysis on its worker and in Commit",
                ["part", "ms, worker", "ms, in Commit"],
                [[c] + [fmt(passes[p]["per_class_ms"].get(c)) for p in passes] for c in classes]
                + [[name] + [fmt(value(passes[p])) for p in passes] for name, value in (
                    ("pack nodes", lambda r: r["pack_ms"]), ("all nodes", lambda r: r["in_nodes_ms"]),
                    ("ComfyUI between nodes", lambda r: r["executing_ms"] - r["in_nodes_ms"]),
                    ("prompt executing", lambda r: r["executing_ms"]),
                    ("Commit start -> next keyframe source done", lambda r: r["commit_to_decision_ms"]))])
    if args.profile:
        print(f"\n{args.profile} under cProfile (warm-up and timed iterations):\n{results['profile']}")
    write_results(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
