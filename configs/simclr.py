"""SimCLR (arXiv:2002.05709; google-research/simclr run.py and README commands).

Usage: --config=configs/simclr.py:<preset> with preset in digits, cifar10, imagenet, smoke.
Square-root lr scaling (0.075 x sqrt(bs), better for small batches / long runs):
--config.optim.lr_scaling=sqrt --config.optim.lr=0.075.
"""

from ssl_jax import config_base
from ssl_jax.data import recipes
from ssl_jax.methods import simclr


def _simclr():
    c = config_base.base_config()
    c.method = "simclr"
    c.simclr = simclr.get_config()  # T 0.1
    # Projection head: Linear + BN + ReLU (hidden = feature dim), Linear(128) + BN (scale
    # only, center=False in the reference). --num_proj_layers=3 is SimCLR v2's head.
    c.model.head.update(num_layers=2, hidden_dim=2048, out_dim=128, use_bn=True, last_bn="scale")
    c.model.zero_init_residual = True  # the reference ResNet zero-inits each block's last BN
    # LARS (eta 1e-3, momentum 0.9), lr 0.3 x bs/256, wd 1e-6, biases and BN excluded from
    # weight decay and trust-ratio adaptation, 10 warm-up epochs then cosine.
    c.optim.update(
        name="lars",
        lr=0.3,
        lr_scaling="linear",
        momentum=0.9,
        weight_decay=1e-6,
        exclude_bias_and_norm=True,
        trust_coefficient=1e-3,
    )
    # tf2/model.py: N * epochs // B + 1 steps, floor(warmup_epochs * N / B) of warm-up.
    c.schedule.update(
        epochs=100.0, warmup_epochs=10.0, decay="cosine", step_count="per_example_plus_one"
    )
    return c


def imagenet():
    c = _simclr()
    config_base.use_imagenet(c, recipes.recipe("simclr"))
    c.input.global_batch_size = 4096
    # The reference feeds [0, 1] pixels unnormalised (data_util.preprocess_image), and its
    # TF ResNet's stem max-pool pads 'SAME' (resnet.py; its strided convs pad as PyTorch).
    c.input.update(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    c.model.padding = "same_pool"
    return c


def cifar10():
    """The reference README's CIFAR-10 command: r18, bs 512, lr 1.0, T 0.5, no blur."""
    c = _simclr()
    config_base.use_cifar10(c, recipes.recipe("simclr_cifar"))
    c.input.global_batch_size = 512
    c.model.head.hidden_dim = 512
    c.simclr.temperature = 0.5
    c.optim.update(lr=1.0, weight_decay=1e-6)
    c.schedule.update(epochs=1000.0, warmup_epochs=10.0)
    return c


def digits():
    c = _simclr()
    config_base.use_digits(c, recipes.recipe("digits"))
    c.input.global_batch_size = 128
    c.model.head.update(hidden_dim=128, out_dim=64)
    c.simclr.temperature = 0.5
    c.optim.update(lr=1.0, weight_decay=1e-6)
    c.schedule.update(epochs=60.0, warmup_epochs=5.0)
    return c


def smoke():
    c = _simclr()
    config_base.use_smoke(c, recipes.recipe("digits"))
    c.simclr.temperature = 0.5
    return c


PRESETS = dict(digits=digits, cifar10=cifar10, imagenet=imagenet, smoke=smoke)


def get_config(arg=None):
    return config_base.select_preset(arg, PRESETS)
