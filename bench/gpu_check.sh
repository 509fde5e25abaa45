#!/usr/bin/env bash
# The device check for the GPU paths (issue 14's decoder with CUDA graphs; issue 10's ACE-Step in bf16): one call
# of the `device` tool's run, about 8 minutes of a lent GPU, every figure printed and kept under $OUT.
#
#   here, once:      bash bench/gpu_check.sh --fetch     (the wheels the GPU image lacks, into .whl/, ignored)
#   on the device:   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=560)
#
# The image there has torch with CUDA, but another transformers and no diffusers, soundfile or soxr: those travel
# as wheels. Each step has its own timeout, so a hang in one still leaves the others' figures.
set -u
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--fetch" ]; then
    exec .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl transformers==5.24.0 diffusers==0.42.1 soundfile==0.14.0 \
        soxr==1.1.0 cffi pycparser
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT="${OUT:-/tmp/gpu-check}"
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
fi
{
    nvidia-smi -L
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/machine.txt"
step() {  # step NAME SECONDS COMMAND...: one figure file per step
    local name=$1 seconds=$2
    shift 2
    echo "== $name"
    timeout "$seconds" "$@" 2>&1 | grep --line-buffered -v -e "Loading weights" -e "^\[transformers\]" \
        | tee "$OUT/$name.txt"
}
# 505 s of steps in all, inside the run's 560 s; the out-of-memory check is its own process, so an error that
# poisons its CUDA context cannot cost the other figures
step cuda_check 80 python3 bench/cuda_check.py
step cuda_oom 45 python3 bench/cuda_check.py --oom
step decoder_graphs 170 python3 bench/decoder.py --device cuda --dtype bf16 --repeats 2
step decoder_eager 110 python3 bench/decoder.py --device cuda --dtype bf16 --repeats 1 --no-cuda-graphs
step ace_step 100 python3 bench/generate.py --family ace-step --device cuda --dtype bf16
