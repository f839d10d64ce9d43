#!/usr/bin/env bash
# Train the reference model on one NVIDIA GPU from a pre-simulated pairs file for a fixed wall-clock time,
# and leave in OUT_DIR what a borrowed machine can hand back (at most 8 files of 16 MiB): the EMA weights
# as shards, the checkpoint's config (checkpoint.json), train.csv and val.csv. Back home:
# `python scripts/checkpoint_shards.py join OUT_DIR --out runs/NAME`, then
# `diffiqt export-model runs/NAME --name NAME --default`.
#
#   scripts/gpu_train.sh PAIRS OUT_DIR                        # paper preset, 8.5 min of training, bf16 on CUDA
#   scripts/gpu_train.sh PAIRS OUT_DIR --minutes 5 --set optim.lr=2e-4
#   scripts/gpu_train.sh PAIRS OUT_DIR --device cpu --minutes 0.2 --set network.overrides='{...}'   # CPU rehearsal
#
# PAIRS: a file from `diffiqt simulate-pairs` with the preset's block size. Options: --minutes M (training
# time; the final validation, checkpoint and shards follow, about half a minute more), --preset NAME (paper),
# --device cuda|cpu (cuda), --run-dir DIR (the full run folder; default: a new temporary folder),
# --set KEY=VALUE (repeatable; applied after the settings below, so it can change them).
#
# On top of the preset, for a run of minutes rather than days: the network adds its output to the LF
# condition (condition_skip: it starts at interpolation quality, see docs/training.md), the learning rate
# warms up over 200 steps instead of 1000, validation every 500 steps, a checkpoint every 1000 (the last
# one kept), 2 data workers (cutting blocks from stored pairs is cheap). Installs nothing: PYTHON (python3)
# needs torch, numpy, scipy, safetensors, typer and rich; diffiqt runs from src/ if it is not installed.
set -euo pipefail
PYTHON=${PYTHON:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)

usage() { sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
(( $# >= 2 )) || usage
pairs=$1 out_dir=$2
shift 2
minutes=8.5 preset=paper device=cuda run_dir="" sets=()
while (( $# )); do
    (( $# >= 2 )) || usage
    case $1 in
        --minutes) minutes=$2 ;;
        --preset) preset=$2 ;;
        --device) device=$2 ;;
        --run-dir) run_dir=$2 ;;
        --set) sets+=(--set "$2") ;;
        *) usage ;;
    esac
    shift 2
done

if [[ $device == cuda* ]]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
        || { echo "gpu_train.sh: no NVIDIA GPU (nvidia-smi failed); rehearse with --device cpu" >&2; exit 1; }
fi
"$PYTHON" -c "import diffiqt" 2>/dev/null || export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
# A missing module fails here, in seconds, rather than after the run.
"$PYTHON" -c "import torch, numpy, scipy, safetensors, typer, rich, diffiqt.cli, diffiqt.training.loop, diffiqt.models.checkpoint"
run_dir=${run_dir:-$(mktemp -d)/run}
mkdir -p "$out_dir"

status=0
PYTHONUNBUFFERED=1 "$PYTHON" -m diffiqt train --preset "$preset" --out "$run_dir" --device "$device" --no-progress \
    --max-minutes "$minutes" --set "data.pairs_file=\"$pairs\"" --set data.num_workers=2 \
    --set 'network.overrides={"condition_skip": true}' --set optim.warmup_steps=200 \
    --set log_every=50 --set val_every=500 --set checkpoint_every=1000 --set keep_checkpoints=1 \
    ${sets[@]+"${sets[@]}"} || status=$?

# Whatever happened, hand back the logs there are and the newest complete checkpoint.
for log in train.csv val.csv; do
    if [[ -f $run_dir/$log ]]; then cp "$run_dir/$log" "$out_dir/"; fi
done
if compgen -G "$run_dir/checkpoints/step_*" >/dev/null; then
    "$PYTHON" "$root/scripts/checkpoint_shards.py" split "$run_dir" --out "$out_dir"
fi
if [[ -f $run_dir/train.csv ]]; then
    echo "== train.csv (last rows)"
    tail -n 5 "$run_dir/train.csv"
    awk -F, 'NR > 1 { n++; rate += $5 } END { if (n) printf "mean examples/s over %d log rows: %.3g\n", n, rate / n }' \
        "$run_dir/train.csv"
fi
if [[ -f $run_dir/val.csv ]]; then
    echo "== val.csv"
    cat "$run_dir/val.csv"
fi
exit "$status"
