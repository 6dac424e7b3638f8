"""Loop frames per second in each framerate mode (the Interpolate node's resolution divisor), on one
server in one run.

    python tools/bench/divisor_fps.py [--gpu --models DIR --checkpoint NAME --front-end-root DIR]

The bundled dream workflow (throttling off, CUDA graph node on as shipped) runs ``--warmup + --iterations``
keyframes by itself once per divisor (1, 1.5, 2, 3) and round, the modes taking turns within each
round so that a change of load hits them alike; frames produced per second are taken over the
iterations after the warm-up, from the server-side prompt timings, and reported as the median over
the rounds and as a ratio against divisor 1. Results: tools/bench/results/divisor_fps.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]

from common import fmt, frame_size, machine_info, median, output_arg, positive_int, print_table, ratio, write_results  # noqa: E402
from serverlib import add_server_args, check_server_args, dream_workflow, node_id, open_server, run_dream  # noqa: E402

from core.loop.resolution import DIVISORS  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_args(parser)
    parser.add_argument("--size", type=frame_size, default=(512, 256), help="WxH (512x256)")
    parser.add_argument("--steps", type=positive_int, help="sampler steps (default 10 with --gpu, else 2)")
    parser.add_argument("--frames", type=positive_int, default=10, help="interpolated frames per keyframe (10)")
    parser.add_argument("--warmup", type=positive_int, default=1)
    parser.add_argument("--iterations", type=positive_int, help="timed iterations (default 20 with --gpu, else 3)")
    parser.add_argument("--rounds", type=positive_int, default=1, help="turns of every mode (1)")
    output_arg(parser, "divisor_fps")
    args = parser.parse_args()
    check_server_args(parser, args)
    steps = args.steps or (10 if args.gpu else 2)
    iterations = args.iterations or (20 if args.gpu else 3)
    fps: dict[str, list[float]] = {divisor: [] for divisor in DIVISORS}
    with open_server(args, "divisor") as server:
        for turn in range(args.rounds):
            for index, divisor in enumerate(DIVISORS):
                wf = dream_workflow(args.checkpoint, args.size, steps, args.frames, f"divisor_{turn}_{index}",
                                    args.warmup + iterations)
                wf[node_id(wf, "DreamWindowInterpolate")]["inputs"]["divisor"] = divisor
                wf[node_id(wf, "DreamWindowCudaGraph")]["inputs"]["enabled"] = True  # as shipped; a no-op on CPU
                records = run_dream(server, wf, args.warmup, iterations, 900)
                fps[divisor].append(iterations * (args.frames + 1) / (records[-1]["end"] - records[0]["start"]))
    modes = {divisor: {"fps": median(runs), "runs": runs} for divisor, runs in fps.items()}
    for mode in modes.values():
        mode["vs_divisor_1"] = ratio(mode["fps"], modes["1"]["fps"])
    print_table(f"loop frames per second by divisor, {args.size[0]}x{args.size[1]}, {steps} steps, N={args.frames}, "
                f"{iterations} iterations after {args.warmup} warm-up, {args.rounds} round(s)",
                ["divisor", "fps", "vs divisor 1"],
                [[divisor, fmt(mode["fps"], 2), fmt(mode["vs_divisor_1"], 2, "x")] for divisor, mode in modes.items()])
    write_results(args.output, {"machine": machine_info(), "size": list(args.size), "steps": steps,
                                "frames": args.frames, "modes": modes})
    return 0


if __name__ == "__main__":
    sys.exit(main())
