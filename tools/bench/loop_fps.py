"""Loop frames per second as shipped and in three variants, on one server in one run.

    python tools/bench/loop_fps.py [--gpu --models DIR --checkpoint NAME --front-end-root DIR]

The bundled dream workflow (throttling off) runs ``--warmup + --iterations`` keyframes by itself four
times: as shipped (CUDA Graph node on, the cache analysis in Commit, the Interpolate node decoding with
its VAE), with the CUDA Graph node disabled (eager), with the cache analysis on the cache worker (tuning
``background_analysis: true``), and with ComfyUI's VAE Decode decoding the batch into Commit's
``images`` (Interpolate without its VAE: the path before the pack's decode). Frames produced per second
are taken over the iterations after the warm-up, from the server-side prompt timings, and each variant
is reported as a ratio against the shipped loop. The node's counters (captures, replays, fallbacks) are
read from the server log. Three last passes (``--node-iterations`` each: as shipped, the analysis on its
worker, ComfyUI's VAE Decode) time each node with the device synchronised around it, to show where an
iteration's time goes (and how much of it is ComfyUI's own work between nodes), and the stretch from a
Commit's start to the end of the next keyframe source, which the background analysis overlaps.
Results: tools/bench/results/loop_fps.json.
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


SHIPPED = "as shipped"
VARIANTS = ((SHIPPED, True, False, False), ("eager (CUDA graph off)", False, False, False),
            ("cache analysis on its worker", True, True, False), ("ComfyUI's VAE Decode", True, False, True))
"""(label, CUDA graph node enabled, cache analysis on the worker, ComfyUI's VAE Decode instead of the pack's)."""
PASSES = {"as shipped": (False, False), "analysis on its worker": (True, False), "ComfyUI's VAE Decode": (False, True)}
"""The per-node timing passes: (cache analysis on the worker, ComfyUI's VAE Decode)."""


def workflow(args, size, session: str, iterations: int, accel: bool, background: bool, vae_decode: bool) -> dict:
    wf = dream_workflow(args.checkpoint, size, args.steps, args.frames, session, iterations)
    wf[node_id(wf, "DreamWindowCudaGraph")]["inputs"]["enabled"] = accel
    cache = wf[node_id(wf, "DreamWindowCache")]["inputs"]
    cache["tuning"] = json.dumps({**json.loads(cache["tuning"]), "background_analysis": background})
    if vae_decode:
        interpolate, commit = node_id(wf, "DreamWindowInterpolate"), node_id(wf, "DreamWindowCommit")
        vae = wf[interpolate]["inputs"].pop("vae")
        wf["vae_decode"] = {"class_type": "VAEDecode", "inputs": {"samples": [interpolate, 0], "vae": vae}}
        wf[commit]["inputs"]["images"] = ["vae_decode", 0]
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
        for index, (label, accel, background, vae_decode) in enumerate(VARIANTS):
            total = args.warmup + args.iterations
            wf = workflow(args, size, f"fps_{index}", total, accel, background, vae_decode)
            records = run_dream(server, wf, args.warmup, args.iterations, 900)
            seconds = records[-1]["end"] - records[0]["start"]
            fps = args.iterations * (args.frames + 1) / seconds
            results[label] = {"fps": fps, "iteration_ms": 1000 * seconds / args.iterations}
        counters = COUNTERS.findall(server.log_tail(2_000_000))
        results["cuda_graph_counters"] = [list(map(int, c)) for c in counters[-1:]]
        passes = {}
        for index, (label, (background, vae_decode)) in enumerate(PASSES.items()):
            wf = workflow(args, size, f"fps_nodes{index}", 1 + args.node_iterations, True, background, vae_decode)
            profile = args.profile if label == SHIPPED else None
            set_node_timing(server, True, profile)
            try:
                timed = run_dream(server, wf, 1, args.node_iterations, 900)
            finally:
                set_node_timing(server, False)
            if profile:
                results["profile"] = server.get("/dw_bench/profile")["stats"]
            nodes = node_stats(timed)
            executing = median((r["end"] - r["start"]) * 1e3 for r in timed)
            in_nodes = median(sum(n["ms"] for n in r["nodes"] if not n["cached"]) for r in timed)
            passes[label] = {**nodes, "executing_ms": executing, "in_nodes_ms": in_nodes,
                             "commit_to_decision_ms": commit_to_decision(timed)}
    results["nodes"] = passes
    for label, *_ in VARIANTS:
        results[label]["shipped_vs_this"] = ratio(results[SHIPPED]["fps"], results[label]["fps"])
        rows.append([label, fmt(results[label]["fps"], 1), fmt(results[label]["iteration_ms"], 1),
                     fmt(results[label]["shipped_vs_this"], 2, "x")])
    print_table(f"loop frames per second, {size[0]}x{size[1]}, {args.steps} steps, N={args.frames}, "
                f"{args.iterations} iterations after {args.warmup} warm-up",
                ["loop", "fps", "ms/iteration", "as shipped / this"], rows)
    print(f"node counters (captures, replays, fallbacks): {results['cuda_graph_counters'] or 'none logged'}")
    classes = sorted(set().union(*(p["per_class_ms"] for p in passes.values())))
    print_table(f"where an iteration goes, CUDA graph on ({args.node_iterations} iterations, medians, device "
                f"synchronised around each node)",
                ["part"] + [f"ms, {label}" for label in passes],
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
