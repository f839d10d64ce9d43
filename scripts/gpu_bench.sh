#!/usr/bin/env bash
# Time the paper preset on an NVIDIA GPU in bf16 autocast with `diffiqt bench-speed` and print its table.
#
#   scripts/gpu_bench.sh                          # forward and forward + backward of one 27-patch batch
#   scripts/gpu_bench.sh --repeats 10             # any further option goes to `diffiqt bench-speed`
#   scripts/gpu_bench.sh --parts networks,enhance,full-brain --model untrained:paper --region 96
#
# Run from anywhere; PYTHON picks the interpreter (default python3). If diffiqt is not importable it is
# installed in editable mode: with --no-deps when torch is already there (so pip never replaces the
# machine's CUDA build of torch), then only the missing dependencies are added.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    || { echo "gpu_bench.sh: no NVIDIA GPU (nvidia-smi failed)" >&2; exit 1; }

if ! "$PYTHON" -c "import diffiqt" 2>/dev/null; then
    if "$PYTHON" -c "import torch" 2>/dev/null; then
        "$PYTHON" -m pip install --no-deps -e .
        # import name -> pip name of every dependency in pyproject.toml except torch
        for pair in numpy:numpy scipy:scipy nibabel:nibabel nilearn:nilearn sklearn:scikit-learn \
                    torchio:torchio safetensors:safetensors typer:typer rich:rich matplotlib:matplotlib \
                    pytorch_msssim:pytorch-msssim; do
            "$PYTHON" -c "import ${pair%%:*}" 2>/dev/null || "$PYTHON" -m pip install "${pair#*:}"
        done
    else
        "$PYTHON" -m pip install -e .
    fi
fi
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'this torch build cannot use the GPU'"

report=$(mktemp --suffix=.md)
trap 'rm -f "$report"' EXIT
"$PYTHON" -m diffiqt bench-speed --device cuda --bf16 --presets paper --parts networks "$@" --out "$report"
cat "$report"
