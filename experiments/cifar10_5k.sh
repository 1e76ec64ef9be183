#!/usr/bin/env bash
# Quality check on real images: pretrain each method on 4,085 CIFAR-10 images for a fixed
# CPU budget, then kNN and linear probe on the other 1,000 images, beside the same encoder
# at random initialisation. Results, budgets and wall times: experiments/README.md.
#
#   bash experiments/cifar10_5k.sh [path/to/cifar10_5k.npz] [workdir root] [method ...]
#
# Methods: moco_v2 simclr moco_v3 simsiam byol dino swav instdisc cmc (default: all, one
# after another).
# The npz holds `images` uint8 [5085, 32, 32, 3] and `labels`; any array file of that
# layout works. Every run uses resnet_tiny and its method's `cifar10` preset otherwise,
# with the CPU-budget overrides written beside it.
set -euo pipefail
NPZ=${1:-../shared/data/cifar10_5k.npz}
ROOT=${2:-workdirs/cifar10_5k}
shift $(( $# > 2 ? 2 : $# )) || true
METHODS=("$@")
[ ${#METHODS[@]} -gt 0 ] || METHODS=(moco_v2 simclr moco_v3 simsiam byol dino swav instdisc cmc)

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
# resnet_tiny's features are 128-d: heads 512 wide instead of the presets' 2048-4096.
narrow=(--config.model.head.hidden_dim=512 --config.model.predictor.hidden_dim=512)

run() {  # run <method> <config preset> [overrides...]
  local name=$1 config=$2
  shift 2
  ssl-jax pretrain --config="configs/${config}" --workdir="${ROOT}/${name}" "${common[@]}" "$@"
}

for method in "${METHODS[@]}"; do
  case "${method}" in
    # MoCo CIFAR demo hyper-parameters (K 4096, m 0.99, T 0.1, 8 BN groups), 60 epochs.
    moco_v2) run moco_v2 moco_v2.py:cifar10 --config.model.head.hidden_dim=128 \
      --config.schedule.epochs=60 ;;
    # The reference CIFAR command (LARS, T 0.5, no blur), 40 epochs, 3 warm-up.
    simclr) run simclr simclr.py:cifar10 --config.model.head.hidden_dim=128 \
      --config.schedule.epochs=40 --config.schedule.warmup_epochs=3 ;;
    # solo-learn's CIFAR recipe (LARS 0.3 x bs/256, T 0.2, m 0.99 -> 1), 30 epochs.
    moco_v3) run moco_v3 moco_v3.py:cifar10 "${narrow[@]}" \
      --config.schedule.epochs=30 --config.schedule.warmup_epochs=3 ;;
    # The paper's CIFAR recipe (SGD 0.03 x bs/256, wd 5e-4, fixed predictor lr), 30 epochs.
    # Projector 512-512 and predictor 512 -> 128 -> 512 keep the paper's 4:1 bottleneck.
    simsiam) run simsiam simsiam.py:cifar10 --config.model.head.hidden_dim=512 \
      --config.model.head.out_dim=512 --config.model.predictor.hidden_dim=128 \
      --config.model.predictor.out_dim=512 --config.schedule.epochs=30 ;;
    # solo-learn's CIFAR recipe (LARS 1.0 x bs/256, tau 0.99 -> 1), 30 epochs, 3 warm-up.
    byol) run byol byol.py:cifar10 "${narrow[@]}" \
      --config.schedule.epochs=30 --config.schedule.warmup_epochs=3 ;;
    # solo-learn's CIFAR DINO (ResNet-18 recipe: two 32-px crops, LARS 0.3, tau_t 0.07), 30
    # epochs, 3 warm-up, teacher m 0.99 (0.9995 is sized for 1000 epochs). The cifar10
    # multi-crop AdamW preset, run on resnet_tiny, collapsed to the uniform output here.
    dino) run dino dino.py:cifar10_resnet18 "${narrow[@]}" --config.dino.momentum_teacher=0.99 \
      --config.dino.teacher_temp=0.04 \
      --config.schedule.epochs=30 --config.schedule.warmup_epochs=3 ;;
    # solo-learn's CIFAR SwAV (LARS 0.6, two 32-px crops), 30 epochs, 3 warm-up, with 100
    # prototypes and no queue: with 3000 prototypes for a batch of 256, Sinkhorn's codes
    # stay near uniform until the queue fills (loss at log 3000, kNN 19.2 at step 300 of a
    # run with the queue from epoch 15), and 1000 epochs are out of this budget.
    swav) run swav swav.py:cifar10 --config.model.head.hidden_dim=512 \
      --config.swav.num_prototypes=100 --config.swav.queue_length=0 \
      --config.schedule.epochs=30 --config.schedule.warmup_epochs=3 ;;
    # lemniscate's CIFAR command (full softmax over the 4,085-row bank, T 0.1, SGD 0.03, wd
    # 5e-4), 30 epochs with its lr drops at 80/120/160 of 200 epochs scaled to 12/18/24.
    instdisc) run instdisc instdisc.py:cifar10 --config.schedule.epochs=30 \
      --config.schedule.milestones='(12,18,24)' ;;
    # configs/cmc.py:cifar10 (two half-width towers of resnet_tiny here, NCE over 4,096
    # noise rows, SGD 0.03), 30 epochs with the lr drops at 120/160/200 of 240 scaled.
    cmc) run cmc cmc.py:cifar10 --config.schedule.epochs=30 \
      --config.schedule.milestones='(15,20,25)' ;;
    *) echo "unknown method ${method}" >&2; exit 2 ;;
  esac
done
