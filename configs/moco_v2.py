"""MoCo v2 (arXiv:2003.04297; facebookresearch/moco main_moco.py --mlp --aug-plus --cos).

Usage: --config=configs/moco_v2.py:<preset> with preset in digits, cifar10, imagenet, smoke,
then any override, e.g. --config.optim.lr=0.06 --config.moco.symmetric=True.
"""

from ssl_jax import config_base
from ssl_jax.data import recipes
from ssl_jax.methods import moco


def _moco_v2() -> "config_base.ml_collections.ConfigDict":
    c = config_base.base_config()
    c.method = "moco"
    c.moco = moco.get_config()  # K 65536, m 0.999, T 0.2, 8 BN groups (shuffle BN)
    # --mlp: fc -> Linear(D, D) + ReLU + Linear(D, 128), biases, no BN.
    c.model.head.update(num_layers=2, hidden_dim=2048, out_dim=128, use_bn=False, last_bn="none")
    # SGD 0.03 x bs/256, momentum 0.9, wd 1e-4 on every parameter, 200 epochs, cosine.
    c.optim.update(name="sgd", lr=0.03, lr_scaling="linear", momentum=0.9, weight_decay=1e-4)
    c.schedule.update(epochs=200.0, warmup_epochs=0.0, decay="cosine")
    return c


def imagenet():
    c = _moco_v2()
    config_base.use_imagenet(c, recipes.recipe("moco_v2"))
    c.input.global_batch_size = 256  # 8 GPUs x 32
    return c


def cifar10():
    """MoCo CIFAR-10 demo (colab/moco_cifar10_demo.ipynb) with the v2 MLP head."""
    c = _moco_v2()
    config_base.use_cifar10(c, recipes.recipe("moco_cifar"))
    c.input.global_batch_size = 512
    c.model.head.hidden_dim = 512  # the MLP's hidden width is the backbone's feature dim
    c.moco.update(queue_size=4096, momentum=0.99, temperature=0.1, bn_groups=8)
    c.optim.update(lr=0.03, weight_decay=5e-4)  # 0.06 at batch 512
    c.schedule.update(epochs=200.0, decay="cosine")
    return c


def digits():
    """The CPU demo behind the README's first command (about 2 minutes on 2 cores)."""
    c = _moco_v2()
    config_base.use_digits(c, recipes.recipe("digits"))
    c.input.global_batch_size = 128
    c.model.head.update(hidden_dim=128, out_dim=64)
    c.moco.update(queue_size=1024, momentum=0.99, temperature=0.1, bn_groups=8)
    c.optim.update(lr=0.06, weight_decay=5e-4)
    c.schedule.update(epochs=60.0, decay="cosine")
    return c


def smoke():
    c = _moco_v2()
    config_base.use_smoke(c, recipes.recipe("digits"))
    c.moco.update(queue_size=64, momentum=0.99, temperature=0.1, bn_groups=2)
    return c


PRESETS = dict(digits=digits, cifar10=cifar10, imagenet=imagenet, smoke=smoke)


def get_config(arg=None):
    return config_base.select_preset(arg, PRESETS)
