"""SwAV (arXiv:2006.09882; facebookresearch/swav main_swav.py and scripts/).

Usage: --config=configs/swav.py:<preset> with preset in digits, cifar10, imagenet (the
800-epoch batch-4096 run), imagenet_bs256 (200 epochs at batch 256 with the queue), smoke,
then any override, e.g. --config.swav.queue_length=3840 --config.swav.num_prototypes=1000.
"""

from ssl_jax import config_base
from ssl_jax.data import recipes
from ssl_jax.methods import swav


def _swav():
    c = config_base.base_config()
    c.method = "swav"
    # 3000 prototypes, tau 0.1, Sinkhorn epsilon 0.05 x 3 iterations, codes of crops 0 and 1.
    c.swav = swav.get_config()
    # resnet50.py with hidden_mlp 2048, output_dim 128: Linear -> BatchNorm1d -> ReLU ->
    # Linear, then L2 normalisation (normalize=True) and the prototypes.
    c.model.head.update(num_layers=2, hidden_dim=2048, out_dim=128, use_bn=True, last_bn="none")
    # SGD(momentum 0.9, weight_decay --wd 1e-6) inside apex LARC(trust_coefficient 0.001,
    # clip False), on every parameter; --base_lr is the peak lr as given (not scaled by the
    # batch); the prototypes get no update for --freeze_prototypes_niters (one epoch).
    c.optim.update(
        name="larc",
        lr=4.8,
        lr_scaling="none",
        momentum=0.9,
        weight_decay=1e-6,
        trust_coefficient=0.001,
        exclude_bias_and_norm=False,
        delayed_params=("prototypes",),
        delay_epochs=1.0,
    )
    # np.linspace(--start_warmup, --base_lr, W) over --warmup_epochs, then a per-step cosine
    # to --final_lr.
    c.schedule.update(
        epochs=800.0,
        warmup_epochs=10.0,
        warmup_start_lr=0.3,
        warmup_end_inclusive=True,
        decay="cosine",
        final_lr=0.0048,
    )
    return c


def _multicrop(c, global_recipe, local_recipe, num_local: int, local_size: int):
    config_base.set_multicrop(
        c, [global_recipe] * 2, local_recipe, num_local=num_local, local_size=local_size
    )


def imagenet():
    """scripts/swav_800ep_pretrain.sh: 64 GPUs x 64 = 4096, --nmb_crops 2 6 --size_crops
    224 96, no queue (--queue_length 0), lr 4.8 from 0.3 over 10 epochs, cosine to 0.0048.
    main_swav's Normalize has std (0.228, 0.224, 0.225), a typo of 0.229 kept here."""
    c = _swav()
    config_base.use_imagenet(c, recipes.recipe("swav_global"))
    _multicrop(c, recipes.recipe("swav_global"), recipes.recipe("swav_local"), 6, 96)
    c.input.update(global_batch_size=4096, std=(0.228, 0.224, 0.225))
    return c


def imagenet_bs256():
    """scripts/swav_200ep_bs256_pretrain.sh: batch 256 (4 GPUs x 64), 200 epochs, the queue
    of 3840 features from epoch 15, lr 0.6 without warm-up, cosine to 0.0006."""
    c = imagenet()
    c.input.global_batch_size = 256
    c.swav.update(queue_length=3840, epoch_queue_starts=15)
    c.optim.lr = 0.6
    c.schedule.update(epochs=200.0, warmup_epochs=0.0, warmup_start_lr=0.0, final_lr=0.0006)
    return c


def cifar10():
    """Not in the paper. solo-learn's CIFAR SwAV (scripts/pretrain/cifar/swav.yaml with
    augmentations/symmetric.yaml): ResNet-18, two 32-px crops (area (0.08, 1), SimCLR
    jitter s=1, grayscale 0.2, blur 0.5), 3000 prototypes, the queue of 3840 from epoch 50,
    prototypes frozen 2 epochs, LARS (eta 0.02, lr after the momentum, no decay or
    adaptation of biases and norms) at lr 0.6, wd 1e-6, batch 256, 1000 epochs, 10-epoch
    warm-up and cosine to 0 (their LARS also clips the local lr at the global one, and
    their warm-up starts at 3e-5, ours at 0)."""
    c = _swav()
    view = recipes.recipe("swav_global", crop_scale=(0.08, 1.0))
    config_base.use_cifar10(c, view)
    c.input.global_batch_size = 256
    c.swav.update(queue_length=3840, epoch_queue_starts=50)
    c.optim.update(
        name="lars",
        lr=0.6,
        trust_coefficient=0.02,
        exclude_bias_and_norm=True,
        lars_lr_in_momentum=False,
        delay_epochs=2.0,
    )
    c.schedule.update(
        epochs=1000.0,
        warmup_epochs=10.0,
        warmup_start_lr=0.0,
        warmup_end_inclusive=False,
        final_lr=0.0,
    )
    return c


def _digits_crops(c, num_local: int, local_size: int):
    """The digits recipe (brightness / contrast jitter) with DINO's digits crop areas
    (configs/dino.py): global (0.8, 1), local (0.5, 0.9)."""
    _multicrop(
        c,
        recipes.recipe("digits", crop_scale=(0.8, 1.0)),
        recipes.recipe("digits", crop_scale=(0.5, 0.9)),
        num_local,
        local_size,
    )


def digits():
    """The CPU demo: resnet_tiny, 2 global 16-px + 2 local 12-px crops, 40 epochs at batch
    128, 64 prototypes (the batch is 2x that, so Sinkhorn can spread it), no queue.

    Tuned once: LARC at the bs256 script's lr 0.6 with jitter-free crops ended at kNN
    88.61 (below the random-init network's 89.72); lr 2.4 with the digits jitter on
    every crop reached 93.89 (experiments/README.md#instdisc-swav-and-cmc-on-digits)."""
    c = _swav()
    config_base.use_digits(c, recipes.recipe("digits"))
    _digits_crops(c, num_local=2, local_size=12)
    c.input.global_batch_size = 128
    c.model.head.update(hidden_dim=256, out_dim=64)
    c.swav.update(num_prototypes=64)
    c.optim.update(lr=2.4)
    c.schedule.update(epochs=40.0, warmup_epochs=0.0, warmup_start_lr=0.0, final_lr=0.0006)
    return c


def smoke():
    """resnet_tiny, 2 global 16-px + 2 local 8-px crops, 4 steps; a one-batch queue that
    fills on step 0 and joins Sinkhorn from step 1; prototypes frozen on step 0."""
    c = _swav()
    config_base.use_smoke(c, recipes.recipe("digits"))  # head 32 -> 16
    _digits_crops(c, num_local=2, local_size=8)
    c.swav.update(num_prototypes=24, queue_length=16, epoch_queue_starts=0)
    c.optim.update(lr=0.6, delay_epochs=0.25)
    c.schedule.update(warmup_start_lr=0.0)
    return c


PRESETS = dict(
    digits=digits,
    cifar10=cifar10,
    imagenet=imagenet,
    imagenet_bs256=imagenet_bs256,
    smoke=smoke,
)


def get_config(arg=None):
    return config_base.select_preset(arg, PRESETS)
