#!/usr/bin/env bash
# Every row of the CPU performance table in experiments/README.md, in one go.
#
#   bash experiments/benchmarks/cpu_table.sh [OUT_DIR]    # default workdirs/cpu_table
#
# Writes one JSON per row to OUT_DIR and the markdown tables to OUT_DIR/table.md. About
# 10 minutes on a quiet 2-core CPU. The PyTorch rows need torch (see experiments/README.md);
# without it those rows are left out. Set STEPS / WARMUP / BATCH to change the budget.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-workdirs/cpu_table}
BATCH=${BATCH:-64}
STEPS=${STEPS:-3}
WARMUP=${WARMUP:-1}
mkdir -p "$OUT"
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONWARNINGS=ignore

# CIFAR-like source for the real-input row and the schedules: 1024 random 32 px images.
DATA="$OUT/random_32px.npz"
python -c "import numpy as np; r = np.random.default_rng(0); np.savez('$DATA', \
images=r.integers(0, 256, (1024, 32, 32, 3), np.uint8), labels=np.zeros(1024, np.int32))"

TORCH=--torch
python -c "import torch" 2>/dev/null || { TORCH=; echo "no torch: PyTorch columns left out"; }

show() {  # show NAME: the row's log without TF / absl start-up noise
  grep -v -E "^(WARNING|W0|I0|E0)" "$OUT/$1.log" || true
}

bench() {  # bench NAME ARGS...: one row of the step table; a failed row does not stop the rest
  local name=$1
  shift
  echo "== $name"
  python experiments/benchmark.py "$@" --steps="$STEPS" --warmup="$WARMUP" --label="$name" \
    --json_out="$OUT/$name.json" >"$OUT/$name.log" 2>&1 || echo "!! $name failed"
  show "$name"
}

# MoCo v2 with global BN (bn_groups=1, no key shuffle): the PyTorch reference in one process
# has no shuffle BN, so both sides normalise over the whole batch.
MOCO=(--config=configs/moco_v2.py:cifar10 --config.input.dataset="npz:$DATA"
  --config.input.global_batch_size="$BATCH" --config.moco.bn_groups=1
  --config.moco.shuffle_keys=False)
SIMCLR=(--config=configs/simclr.py:cifar10 --config.input.dataset="npz:$DATA"
  --config.input.global_batch_size="$BATCH")
VIT=(--config=configs/moco_v3.py:cifar10_vit --config.input.dataset="npz:$DATA"
  --config.input.global_batch_size="$BATCH")

bench 01_moco_v2_r18 "${MOCO[@]}" $TORCH
bench 02_simclr_r18 "${SIMCLR[@]}" $TORCH
bench 03_moco_v2_r18_bf16 "${MOCO[@]}" --config.model.dtype=bfloat16
bench 04_moco_v2_r18_no_donation "${MOCO[@]}" --donate=false
bench 05_moco_v2_r18_shuffle_bn8 "${MOCO[@]}" --config.moco.bn_groups=8 \
  --config.moco.shuffle_keys=True
bench 06_moco_v2_r18_real_input "${MOCO[@]}" --input=real
bench 07_moco_v3_vit_tiny "${VIT[@]}"
bench 08_moco_v3_vit_tiny_remat "${VIT[@]}" --config.model.vit.remat=True

pipeline() {  # pipeline NAME ARGS...: one row of the input-pipeline table
  echo "== $1"
  python experiments/benchmarks/input_pipeline.py "${@:2}" --json_out="$OUT/$1.json" \
    >"$OUT/$1.log" 2>&1 || echo "!! $1 failed"
  show "$1"
}
pipeline 09_input_simclr_32px --config=configs/simclr.py:cifar10 \
  --config.input.global_batch_size="$BATCH"
pipeline 10_input_simclr_224px --config=configs/simclr.py:imagenet \
  --config.input.global_batch_size="$BATCH" --batches=8

# Photometric ops in the jitted step, crops on the host (input.augment_on_device).
AOD=--config.input.augment_on_device=True
bench 11_moco_v2_r18_augment_on_device "${MOCO[@]}" $AOD
pipeline 12_input_simclr_32px_augment_on_device --config=configs/simclr.py:cifar10 \
  --config.input.global_batch_size="$BATCH" $AOD
pipeline 13_input_simclr_224px_augment_on_device --config=configs/simclr.py:imagenet \
  --config.input.global_batch_size="$BATCH" --batches=8 $AOD

python experiments/benchmarks/table.py "$OUT"/[0-9]*.json | tee "$OUT/table.md"
