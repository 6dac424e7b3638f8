"""Runs the Dream Window loop headless on a real ComfyUI and reports where the frames go.

    python tools/harness/run_dream.py [--iterations N] [--port 8188] [--session dream] [--checkpoint NAME]
                                [--base DIR]

* ComfyUI: COMFYUI_DIR if set (its models/ folder is used), else the harness build.
* Checkpoint: --checkpoint / DW_CHECKPOINT, else the first .safetensors/.ckpt in models/checkpoints,
  else a synthetic random-weight demo model (frames are then abstract patterns, not pictures).
* The server's base folder is .harness/demo (or --base DIR), so a second run resumes the same session
  from its last committed keyframe. Ctrl-C stops the session and shuts the server down; --iterations N
  sets the AutoQueue's max_iterations to N past where the session stands, so exactly N keyframes are made.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.harness.comfy_process import (COMFYUI_DIR, HARNESS, TINY_SD15, ComfyServer, ensure_models,  # noqa: E402
                                   load_api_workflow)

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")


def find_checkpoint(models: Path) -> str | None:
    folder = models / "checkpoints"
    if not folder.is_dir():
        return None
    found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.suffix in CHECKPOINT_SUFFIXES and p.name != TINY_SD15)
    return found[0] if found else None


def choose_checkpoint(checkpoint: str | None, wf: dict) -> Path:
    """Sets the checkpoint of ``wf`` (the API dream workflow) and returns the models folder to serve.

    ``checkpoint`` (--checkpoint / DW_CHECKPOINT), else the first one in $COMFYUI_DIR/models/checkpoints,
    else the synthetic demo model, at 128x64.
    """
    user_models = COMFYUI_DIR / "models" if "COMFYUI_DIR" in os.environ else None
    checkpoint = checkpoint or (find_checkpoint(user_models) if user_models else None)
    if checkpoint:
        models = user_models or ensure_models(("taesd", "sd15"))
        print(f"Using checkpoint {checkpoint!r} from {models / 'checkpoints'}")
    else:
        models = ensure_models(("taesd", "sd15"))
        checkpoint = TINY_SD15
        # The synthetic UNet has no downsampling: keep its frames small so a CPU keeps up.
        wf["5"]["inputs"].update(width=128, height=64)
        print("No checkpoint found (set COMFYUI_DIR to your ComfyUI, or --checkpoint): using a synthetic\n"
              "random-weight demo model. Its frames are abstract patterns, not pictures; put an SD1.5-family\n"
              "checkpoint in models/checkpoints for real dreams.")
    wf["1"]["inputs"]["ckpt_name"] = checkpoint
    return models


def cuda_available(python: str) -> bool:
    probe = subprocess.run([python, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True)
    return probe.stdout.strip() == "True"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=0, help="stop after this many keyframes (0 = until Ctrl-C)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("DW_PORT", 8188)))
    parser.add_argument("--listen", default="127.0.0.1", help="address ComfyUI listens on")
    parser.add_argument("--session", default="dream")
    parser.add_argument("--checkpoint", default=os.environ.get("DW_CHECKPOINT"))
    parser.add_argument("--base", type=Path, default=HARNESS / "demo",
                        help="ComfyUI's base folder (output/, user/, linked models/); a session there resumes")
    args = parser.parse_args()
    if args.iterations < 0:
        parser.error("--iterations must be >= 0")

    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    wf = load_api_workflow()
    models = choose_checkpoint(args.checkpoint, wf)
    wf["4"]["inputs"]["name"] = args.session

    base = args.base
    server = ComfyServer(base, port=args.port, models=models, python=python, listen=args.listen,
                         cpu=not cuda_available(python))
    print(f"Starting ComfyUI from {COMFYUI_DIR} on http://{args.listen}:{args.port} (log: {server.log_path}) ...")
    server.start()
    stopping = {"now": False}
    signal.signal(signal.SIGINT, lambda *_: stopping.update(now=True))
    signal.signal(signal.SIGTERM, lambda *_: stopping.update(now=True))
    try:
        before = server.session(args.session)
        start_iteration = before["iteration"] if before else 0
        # The supervisor stops the loop at the limit (counted across restarts), so no iteration past it starts.
        wf["10"]["inputs"]["max_iterations"] = start_iteration + args.iterations if args.iterations else 0
        server.queue(wf)
        folder = base / "output" / "dream_window" / args.session
        print(f"Dreaming. Frames:        {folder / 'frames'}\n"
              f"          Newest frame:  {folder / 'current_frame.png'}\n"
              f"          Control:       POST {server.url}/dream_window/stop|pause|resume "
              f"{{\"session\": \"{args.session}\"}}\n"
              f"          Graph UI:      {server.url}  (Ctrl-C here stops the loop and the server)")
        last = time.time()
        while not stopping["now"]:
            time.sleep(0.5)
            state = server.session(args.session) or {}
            finished = args.iterations and state.get("iteration", 0) - start_iteration >= args.iterations \
                and state.get("state") == "stopped"
            if time.time() - last >= 5 or finished:
                last = time.time()
                print(f"  iteration {state.get('iteration')}  frames {state.get('frames')}  state {state.get('state')}"
                      + (f"  last error: {state['last_error'].get('message')}" if state.get("last_error") else ""))
            if finished:
                break
            if state.get("state") in ("paused", "stopped") and state.get("last_error"):
                print("The session paused on an error; see the log above and the server log.")
                return 1
        server.control("stop", args.session)
        time.sleep(1)
        print(f"Stopped. {server.session(args.session)['frames']} frames so far in {folder / 'frames'}")
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
