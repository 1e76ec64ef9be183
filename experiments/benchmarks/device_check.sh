#!/usr/bin/env bash
# The device check on one GPU (experiments/benchmarks/device_check.py): the train steps of
# MoCo v2 and SimCLR ResNet-50, MAE ViT-B/16 and DINO ViT-S/16 multi-crop at the papers'
# per-device batches in bfloat16, ssl_jax (with and without remat for the ViTs) beside the
# PyTorch reference, into OUT_DIR/device_check.json (+ one log per case).
#
#   bash experiments/benchmarks/device_check.sh [OUT_DIR] [device_check.py flags ...]
#
# The cases share one deadline (device_check.py --budget_s, 450 s); `timeout` stops the
# whole run BACKSTOP_S (470) s after the start whatever happens, so it ends within 8
# minutes. Needs JAX with CUDA, flax, optax, tensorflow(-cpu) and the rest of
# requirements.txt, and a CUDA build of torch; no network, nothing installed.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-workdirs/device_check}
shift || true
mkdir -p "$OUT"
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONWARNINGS=ignore
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not found"
exec timeout -k 5 "${BACKSTOP_S:-470}" python experiments/benchmarks/device_check.py \
  --out="$OUT" "$@"
