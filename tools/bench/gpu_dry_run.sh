#!/usr/bin/env bash
# Rehearses the GPU run here, on the CPU: a throw-away Python 3.11 venv that holds only the packages
# the GPU machine lists (linked from the harness venv: no ComfyUI requirement beyond those, no
# frontend package), then the exact device command with the carried wheels and
# `bash tools/bench/gpu_suite.sh --cpu-dry-run [BENCHMARK...]` (arguments pass through). Needs bash
# tools/bench/prepare_gpu.sh first.
# Not emulated: Python 3.12 (3.11 here; the carried wheels are the same files), torch 2.11 + CUDA
# and transformers 5.17 (the harness venv's versions are used), the GPU itself, torchaudio (absent
# here; ComfyUI only warns), and packages the GPU machine has that the harness venv lacks; httpx2,
# httpcore2 and truststore are added because the harness venv's newer huggingface_hub needs them.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
H=${DW_HARNESS_DIR:-$repo/.harness}
[ -d .whl ] && [ -f .gpu/ComfyUI/main.py ] || { echo "run bash tools/bench/prepare_gpu.sh first" >&2; exit 2; }
emu=$(mktemp -d /tmp/dw-gpu-emu.XXXXXX)
trap 'rm -rf "$emu"' EXIT
"$H/venv/bin/python" - "$emu/venv" <<'PYEOF'
"""Build a venv whose site-packages links only the GPU machine's packages from this interpreter's."""
import importlib.metadata as md
import os
import re
import subprocess
import sys
import sysconfig

GPU_PACKAGES = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas
nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless
optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip
pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson
six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision
tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp""".split()
EMULATION_EXTRAS = ["httpx2", "httpcore2", "truststore"]
"""Needed by the harness venv's huggingface_hub 2.x only; the GPU machine's 1.33 uses httpx, which it has."""


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


allowed = {norm(n) for n in GPU_PACKAGES + EMULATION_EXTRAS} - {"pip", "setuptools", "wheel"}
venv = sys.argv[1]
subprocess.run([sys.executable, "-m", "venv", venv], check=True)
target = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                         "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        check=True, capture_output=True, text=True).stdout.strip()
source = sysconfig.get_paths()["purelib"]
linked, skipped = [], []
for dist in md.distributions():
    name = norm(dist.metadata["Name"])
    if name not in allowed:
        skipped.append(name)
        continue
    tops = {str(f).split("/")[0] for f in dist.files or [] if not str(f).startswith("..")} - {"__pycache__"}
    for top in sorted(tops):
        src, dst = os.path.join(source, top), os.path.join(target, top)
        if os.path.exists(src) and not os.path.exists(dst):
            os.symlink(src, dst)
    linked.append(name)
print(f"emulated GPU site-packages: {len(linked)} linked; left out: {', '.join(sorted(skipped))}")
PYEOF
export PATH=$emu/venv/bin:$PATH
export DW_HARNESS_DIR=$emu/harness
site=$emu/site
echo "python3 is $(command -v python3)"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
export PYTHONPATH=$site
OUT=${OUT:-$repo/tools/bench/results/gpu-dry-run} bash tools/bench/gpu_suite.sh --cpu-dry-run "$@"
