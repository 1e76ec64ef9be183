"""CMC (arXiv:1906.05849; HobbitLong/CMC train_CMC.py and README commands).

Usage: --config=configs/cmc.py:<preset> with preset in digits, cifar10, imagenet
(resnet50v1: two half-width ResNet-50s, NCE with 16,384 noise rows), smoke, then any
override, e.g. --config.cmc.softmax=True --config.cmc.width=1.0 (resnet50v2).

The network converts RGB in [0, 1] to Lab itself, so every preset sets input.mean 0 and
input.std 1. Memory: two banks of N x 128 float32 on every device (ImageNet: 1.3 GB).
"""

from ssl_jax import config_base
from ssl_jax.data import recipes
from ssl_jax.methods import cmc

RGB_IN_UNIT_RANGE = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _cmc():
    c = config_base.base_config()
    c.method = "cmc"
    c.cmc = cmc.get_config()  # NCE K 16384, T 0.07, bank momentum 0.5, half width
    # models/resnet.py: each view's fc to --feat_dim 128 (bias), then Normalize(2).
    c.model.head.update(num_layers=1, out_dim=128, use_bn=False, last_bn="none")
    # SGD --learning_rate 0.03 (not scaled by the batch), momentum 0.9, --weight_decay 1e-4,
    # --epochs 240, lr x0.1 after epochs 120, 160 and 200 (--lr_decay_epochs).
    c.optim.update(name="sgd", lr=0.03, lr_scaling="none", momentum=0.9, weight_decay=1e-4)
    c.schedule.update(epochs=240.0, warmup_epochs=0.0, decay="step", milestones=(120, 160, 200))
    return c


def _one_view(c, recipe):
    """One crop per example: its L and ab channels are the two views."""
    config_base.set_views(c, recipe)
    c.input.update(**RGB_IN_UNIT_RANGE)


def imagenet():
    """The README's resnet50v1 command: --model resnet50v1 --batch_size 128 (4 GPUs)."""
    c = _cmc()
    config_base.use_imagenet(c, recipes.recipe("cmc"))
    _one_view(c, recipes.recipe("cmc"))
    c.input.global_batch_size = 128
    return c


def cifar10():
    """Not in the paper (its small-data runs are on STL-10). The ImageNet recipe on a
    ResNet-18 pair of half width with the CIFAR stem, 4,096 noise rows for the 50k images
    (InstDisc's count), batch 128."""
    c = _cmc()
    config_base.use_cifar10(c, recipes.recipe("cmc"))
    _one_view(c, recipes.recipe("cmc"))
    c.input.global_batch_size = 128
    c.cmc.num_negatives = 4096
    return c


def _colour_digits(c):
    """The digits in colour (``colour_digits``: each digit's strokes in a hue of its own).
    On the gray ``digits`` the ab channels are zero everywhere: the ab view holds no
    information, every ab feature is the same vector and CMC has nothing to contrast."""
    config_base.use_digits(c, recipes.recipe("digits"))
    _one_view(c, recipes.recipe("digits"))
    c.input.dataset = "colour_digits"


def digits():
    """The CPU demo on ``colour_digits``: the resnet_tiny pair at the reference's lr 0.03,
    40 epochs at batch 128 with drops at 30 and 35, 512 noise rows. Tried once each: lr
    0.2 (InstDisc's digits lr) collapsed the features (effective rank 1.7, kNN 63.6 at
    step 200), the softmax form reached kNN 66.4 at step 200 against 76.1 for NCE
    (experiments/README.md#instdisc-swav-and-cmc-on-digits)."""
    c = _cmc()
    _colour_digits(c)
    c.input.global_batch_size = 128
    c.model.head.out_dim = 64
    c.cmc.update(num_negatives=512, temperature=0.1)
    c.optim.update(lr=0.03, weight_decay=5e-4)
    c.schedule.update(epochs=40.0, milestones=(30, 35))
    return c


def smoke():
    """4 steps on ``colour_digits`` with NCE over 64 noise rows (both Zs estimated on step
    0)."""
    c = _cmc()
    config_base.use_smoke(c, recipes.recipe("digits"))
    _one_view(c, recipes.recipe("digits"))
    c.input.dataset = "colour_digits"
    c.cmc.update(num_negatives=64, temperature=0.1)
    c.schedule.milestones = (0.6, 0.8, 0.9)
    return c


PRESETS = dict(digits=digits, cifar10=cifar10, imagenet=imagenet, smoke=smoke)


def get_config(arg=None):
    return config_base.select_preset(arg, PRESETS)
