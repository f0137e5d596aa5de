#!/usr/bin/env bash
# The project's GPU checks in one command, for a GPU machine without network access:
#   where there is network:  bash scripts/setup.sh && bash scripts/device_bundle.sh
#   on the GPU machine (with .device/ copied beside the code):  bash bench/device_check.sh
# Installs the bundle, then runs the CUDA tests, bench.update on CUDA (every algorithm eager;
# Cal-QL compiled, with CUDA graphs, float32 and bf16 encoder), makes the default dataset and
# runs bench.finetune with the sim rendering on the GPU (eager, then compiled with CUDA graphs).
# About 12 minutes on one H100 (an estimate); the output is the report ($OUT/device_check.log
# too where OUT is set). Each step is limited to STEP_LIMIT seconds (default 300).
set -uo pipefail
cd "$(dirname "$0")/.."
[ -d .device/wheels ] || { echo "error: no .device/ bundle here: make it with bash scripts/device_bundle.sh" >&2; exit 2; }
exec > >(tee "${OUT:-/tmp}/device_check.log") 2>&1

for deb in .device/gl/*.deb; do dpkg -x "$deb" /; done
ldconfig
nvidia_egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
if [ -f "$nvidia_egl" ] && [ -z "${__EGL_VENDOR_LIBRARY_FILENAMES:-}" ]; then
    export __EGL_VENDOR_LIBRARY_FILENAMES="$nvidia_egl"
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/device-site .device/wheels/*.whl || exit 1
export PYTHONPATH="/tmp/device-site:$PWD/.device/site:$PWD" MUJOCO_GL=egl PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), 'cores', __import__('os').cpu_count())"

step() {
    echo "== $*"
    local start=$SECONDS
    timeout "${STEP_LIMIT:-300}" "$@"
    echo "== exit $? after $((SECONDS - start)) s"
}
step python3 -m pytest -q -p no:cacheprovider tests/test_rendering.py tests/test_algorithms.py tests/test_compile.py tests/test_replay.py
step python3 -m bench.update --devices cuda --modes eager --precisions fp32 --seconds 5
step python3 -m bench.update --devices cuda --modes compiled,cudagraphs --algos calql --batch-sizes 256 --image-sizes 48 --seconds 5
step python3 -m sim.collect workers=14
step python3 -m bench.finetune --device cuda --env-steps 2000 --warmup-steps 200
step python3 -m bench.finetune --device cuda --env-steps 2000 --warmup-steps 200 --compile --cuda-graphs
