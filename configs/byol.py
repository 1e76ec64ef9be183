"""BYOL (arXiv:2006.07733; deepmind-research byol/configs/byol.py, byol_experiment.py).

Usage: --config=configs/byol.py:<preset> with preset in digits, cifar10, imagenet
(1000 epochs), imagenet300, imagenet100, smoke, then any override, e.g.
--config.byol.tau_base=0.99.
"""

from ssl_jax import config_base
from ssl_jax.data import recipes
from ssl_jax.methods import byol

# byol/configs/byol.py _LR_PRESETS, _WD_PRESETS, _EMA_PRESETS by epoch budget:
# epochs -> (base lr, weight decay, tau_base).
IMAGENET_PRESETS = {100: (0.45, 1e-6, 0.99), 300: (0.3, 1e-6, 0.99), 1000: (0.2, 1.5e-6, 0.996)}


def _byol():
    c = config_base.base_config()
    c.method = "byol"
    c.byol = byol.get_config()  # tau_base 0.996, global BN
    # haiku's ResNet v1 blocks zero-init the scale of each block's last BN.
    c.model.zero_init_residual = True
    # networks.MLP: Linear(4096) + BN + ReLU + Linear(256, no bias), for both the projector
    # and the predictor (the hidden Linear's bias is dropped: BN follows it).
    mlp = dict(
        num_layers=2, hidden_dim=4096, out_dim=256, use_bn=True, last_bn="none", last_bias=False
    )
    c.model.head.update(**mlp)
    c.model.predictor.update(**mlp)
    # LARS (eta 1e-3, momentum 0.9), biases and BN excluded from weight decay and trust
    # ratio, lr 0.2 x bs/256, wd 1.5e-6, 10 warm-up epochs then cosine to 0. The lr scales
    # the momentum buffer (utils/optimizers.py lars ends in optax.scale(-lr), rebuilt with
    # each step's lr by byol_experiment.py): mu = m mu + trust u; w -= lr mu.
    c.optim.update(
        name="lars",
        lr=0.2,
        lr_scaling="linear",
        momentum=0.9,
        weight_decay=1.5e-6,
        exclude_bias_and_norm=True,
        trust_coefficient=1e-3,
        lars_lr_in_momentum=False,
    )
    c.schedule.update(epochs=1000.0, warmup_epochs=10.0, decay="cosine")
    return c


def _imagenet(epochs: int):
    c = _byol()
    config_base.use_imagenet(c, recipes.recipe("byol_view1"))
    config_base.set_views(c, recipes.recipe("byol_view1"), recipes.recipe("byol_view2"))
    c.input.global_batch_size = 4096
    c.model.padding = "same"  # Haiku's ResNet pads its convs and max-pool 'SAME'
    lr, wd, tau = IMAGENET_PRESETS[epochs]
    c.optim.update(lr=lr, weight_decay=wd)
    c.byol.tau_base = tau
    # configs/byol.py: max_steps = num_epochs * N // B, warmup_steps = 10 * N // B.
    c.schedule.update(epochs=float(epochs), step_count="per_example")
    return c


def imagenet():
    """The paper's main run: 1000 epochs, batch 4096 (74.3% linear top-1)."""
    return _imagenet(1000)


def imagenet300():
    return _imagenet(300)


def imagenet100():
    return _imagenet(100)


def cifar10():
    """Not in the paper (its CIFAR numbers are transfer): solo-learn's BYOL CIFAR recipe
    (scripts/pretrain/cifar/byol.yaml): ResNet-18, batch 256, LARS lr 1.0 x bs/256, eta
    0.02, wd 1e-5, tau_base 0.99, 1000 epochs with 10 warm-up; BYOL's asymmetric views
    without blur (3 taps at 32 px)."""
    c = _byol()
    config_base.use_cifar10(c, recipes.recipe("byol_view1"))
    config_base.set_views(
        c,
        recipes.recipe("byol_view1", blur_p=0.0),
        recipes.recipe("byol_view2", blur_p=0.0),
    )
    c.input.global_batch_size = 256
    c.byol.tau_base = 0.99
    c.optim.update(lr=1.0, weight_decay=1e-5, trust_coefficient=0.02)
    c.schedule.update(epochs=1000.0, warmup_epochs=10.0)
    return c


def digits():
    """The CPU demo: 60 epochs (660 steps) on the 1,437 sklearn digits."""
    c = _byol()
    config_base.use_digits(c, recipes.recipe("digits"))
    c.input.global_batch_size = 128
    c.model.head.update(hidden_dim=256, out_dim=64)
    c.model.predictor.update(hidden_dim=256, out_dim=64)
    # The cifar10 preset's optimizer (kNN top-1 90.0; LARS lr 2.0: 86.7, tau_base 0.97: 90.3;
    # measured with the lr inside LARS's momentum, lars_lr_in_momentum=True).
    c.byol.tau_base = 0.99
    c.optim.update(lr=1.0, weight_decay=1e-5, trust_coefficient=0.02)
    c.schedule.update(epochs=60.0, warmup_epochs=5.0)
    return c


def smoke():
    c = _byol()
    config_base.use_smoke(c, recipes.recipe("digits"))
    c.byol.tau_base = 0.99
    return c


PRESETS = dict(
    digits=digits,
    cifar10=cifar10,
    imagenet=imagenet,
    imagenet300=imagenet300,
    imagenet100=imagenet100,
    smoke=smoke,
)


def get_config(arg=None):
    return config_base.select_preset(arg, PRESETS)
