"""SimSiam (arXiv:2011.10566; facebookresearch/simsiam main_simsiam.py, README command).

Usage: --config=configs/simsiam.py:<preset> with preset in digits, cifar10, imagenet, smoke,
then any override, e.g. --config.optim.lr=0.1. The collapse ablation of the paper's
Fig. 2: --config.simsiam.stop_gradient=False.
"""

from ssl_jax import config_base
from ssl_jax.data import recipes
from ssl_jax.methods import simsiam

# --fix-pred-lr (the README's command, paper Table 1 "lr not decayed"): the predictor
# keeps the peak lr while everything else follows the cosine.
PREDICTOR_PARAMS = ("^predictor/",)


def _simsiam():
    c = config_base.base_config()
    c.method = "simsiam"
    c.simsiam = simsiam.get_config()  # global (Sync) BN, stop-gradient on
    # builder.py: torchvision ResNet with zero_init_residual=True.
    c.model.zero_init_residual = True
    # Projector: 3 x (Linear no bias, BN), ReLU after the hidden two, the output BN without
    # affine; hidden = output = 2048 (the ResNet-50 feature dim in builder.py).
    c.model.head.update(
        num_layers=3, hidden_dim=2048, out_dim=2048, use_bn=True, last_bn="no_affine"
    )
    # Predictor: Linear(2048, 512, no bias) + BN + ReLU, Linear(512, 2048) with bias.
    c.model.predictor.update(
        num_layers=2, hidden_dim=512, out_dim=2048, use_bn=True, last_bn="none", last_bias=True
    )
    # SGD lr 0.05 x bs/256, momentum 0.9, wd 1e-4 on every parameter, cosine, no warm-up.
    c.optim.update(
        name="sgd",
        lr=0.05,
        lr_scaling="linear",
        momentum=0.9,
        weight_decay=1e-4,
        exclude_bias_and_norm=False,
        constant_lr_params=PREDICTOR_PARAMS,
    )
    c.schedule.update(epochs=100.0, warmup_epochs=0.0, decay="cosine")
    return c


def imagenet():
    """The README's 100-epoch run (68.1% linear top-1): ResNet-50, batch 512."""
    c = _simsiam()
    config_base.use_imagenet(c, recipes.recipe("moco_v2"))  # MoCo v2's augmentation
    c.input.global_batch_size = 512
    return c


def cifar10():
    """Paper appendix "CIFAR Experiments": ResNet-18 with the CIFAR stem, a 2-layer
    projector (hidden and output 2048), batch 512, lr 0.03 x bs/256, wd 5e-4, 800 epochs,
    MoCo v2's augmentation without blur."""
    c = _simsiam()
    config_base.use_cifar10(c, recipes.recipe("simsiam_cifar"))
    c.input.global_batch_size = 512
    c.model.head.num_layers = 2
    c.optim.update(lr=0.03, weight_decay=5e-4)
    c.schedule.update(epochs=800.0)
    return c


def digits():
    """The CPU demo: 60 epochs (660 steps) on the 1,437 sklearn digits."""
    c = _simsiam()
    config_base.use_digits(c, recipes.recipe("digits"))
    c.input.global_batch_size = 128
    c.model.head.update(num_layers=2, hidden_dim=128, out_dim=128)
    c.model.predictor.update(hidden_dim=32, out_dim=128)  # the paper's 4x bottleneck
    # Tuned for the 660-step budget (kNN top-1 at lr 0.05 / 0.3 / 0.6 / 1.0: 72.8 / 84.7 /
    # 92.2 / 93.1): the paper's 0.05 x bs/256 barely moves the loss in so few steps.
    c.optim.update(lr=1.0, weight_decay=5e-4)
    c.schedule.update(epochs=60.0)
    return c


def smoke():
    c = _simsiam()
    config_base.use_smoke(c, recipes.recipe("digits"))
    c.model.predictor.update(hidden_dim=8)  # bottleneck below the head's out_dim 16
    return c


PRESETS = dict(digits=digits, cifar10=cifar10, imagenet=imagenet, smoke=smoke)


def get_config(arg=None):
    return config_base.select_preset(arg, PRESETS)
