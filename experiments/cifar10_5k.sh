#!/usr/bin/env bash
# Quality check on real images: pretrain MoCo v2 and SimCLR on 4,085 CIFAR-10 images for a
# fixed CPU budget (about 16 and 20 minutes on 2 cores: 60 and 40 epochs), then kNN and
# linear probe on the other 1,000 images, beside the same encoder at random
# initialisation. Results: experiments/README.md.
#
#   bash experiments/cifar10_5k.sh [path/to/cifar10_5k.npz] [workdir root]
#
# The npz holds `images` uint8 [5085, 32, 32, 3] and `labels`; any array file of that
# layout works. Extra arguments after the first two are passed to both runs.
set -euo pipefail
NPZ=${1:-../shared/data/cifar10_5k.npz}
ROOT=${2:-workdirs/cifar10_5k}
shift $(( $# > 2 ? 2 : $# )) || true

common=(
  --config.input.dataset="npz:${NPZ}"
  --config.input.train_split='train[:4085]'
  --config.input.eval_train_split='train[:4085]'
  --config.input.eval_test_split='train[4085:]'
  --config.input.global_batch_size=256
  --config.model.backbone=resnet_tiny
  --config.evals.knn_every_steps=300
  --config.evals.batch_size=256
  --config.ckpt.every_steps=300
)

# MoCo v2 with the CIFAR demo's hyper-parameters (K 4096, m 0.99, T 0.1, 8 BN groups).
ssl-jax pretrain --config=configs/moco_v2.py:cifar10 --workdir="${ROOT}/moco_v2" \
  --config.model.head.hidden_dim=128 --config.schedule.epochs=60 "${common[@]}" "$@"

# SimCLR with the reference CIFAR command's hyper-parameters (LARS, T 0.5, no blur).
ssl-jax pretrain --config=configs/simclr.py:cifar10 --workdir="${ROOT}/simclr" \
  --config.model.head.hidden_dim=128 --config.schedule.epochs=40 \
  --config.schedule.warmup_epochs=3 "${common[@]}" "$@"
