"""MoCo v1 (arXiv:1911.05722; facebookresearch/moco main_moco.py defaults).

Usage: --config=configs/moco_v1.py:<preset> with preset in digits, cifar10, imagenet,
imagenet_cmc, smoke. ``imagenet_cmc`` is the momentum-encoder form of CMC's repository
(HobbitLong/CMC train_moco_ins.py --moco); ``--config.moco.loss=nce`` its NCE variant.
"""

from ssl_jax import config_base
from ssl_jax.data import recipes
from ssl_jax.methods import moco


def _moco_v1():
    c = config_base.base_config()
    c.method = "moco"
    c.moco = moco.get_config()
    c.moco.temperature = 0.07  # --moco-t default
    c.model.head.update(num_layers=1, out_dim=128, use_bn=False, last_bn="none")  # fc head
    # SGD 0.03 x bs/256, wd 1e-4, 200 epochs, lr x0.1 at epochs 120 and 160.
    c.optim.update(name="sgd", lr=0.03, lr_scaling="linear", momentum=0.9, weight_decay=1e-4)
    c.schedule.update(epochs=200.0, warmup_epochs=0.0, decay="step", milestones=(120, 160))
    return c


def imagenet():
    c = _moco_v1()
    config_base.use_imagenet(c, recipes.recipe("moco_v1"))
    c.input.global_batch_size = 256
    return c


def imagenet_cmc():
    """HobbitLong/CMC's MoCo (README: train_moco_ins.py --batch_size 128 --nce_k 16384
    --softmax --moco on 4 GPUs, "the same hyperparameters as in MoCo": 200 epochs, lr 0.03,
    x0.1 at 120 and 160, wd 1e-4; --alpha 0.999, --nce_t 0.07, crop 0.2 with colour jitter).
    Without --softmax it is the NCE form: --config.moco.loss=nce."""
    c = imagenet()
    c.input.global_batch_size = 128
    c.moco.update(queue_size=16384, momentum=0.999, temperature=0.07, bn_groups=4)
    c.optim.lr = 0.06  # 0.03 at batch 128 under the linear scaling
    return c


def cifar10():
    """Exactly the MoCo CIFAR-10 demo: fc head, K 4096, m 0.99, T 0.1, cosine, bs 512."""
    c = _moco_v1()
    config_base.use_cifar10(c, recipes.recipe("moco_cifar"))
    c.input.global_batch_size = 512
    c.moco.update(queue_size=4096, momentum=0.99, temperature=0.1, bn_groups=8)
    c.optim.update(lr=0.03, weight_decay=5e-4)  # 0.06 at batch 512
    c.schedule.update(epochs=200.0, decay="cosine")
    return c


def digits():
    c = _moco_v1()
    config_base.use_digits(c, recipes.recipe("digits"))
    c.input.global_batch_size = 128
    c.model.head.out_dim = 64
    c.moco.update(queue_size=1024, momentum=0.99, temperature=0.1, bn_groups=8)
    c.optim.update(lr=0.06, weight_decay=5e-4)
    c.schedule.update(epochs=60.0, decay="cosine")
    return c


def smoke():
    c = _moco_v1()
    config_base.use_smoke(c, recipes.recipe("digits"))
    c.schedule.decay = "cosine"
    c.moco.update(queue_size=64, momentum=0.99, temperature=0.1, bn_groups=2)
    return c


PRESETS = dict(
    digits=digits,
    cifar10=cifar10,
    imagenet=imagenet,
    imagenet_cmc=imagenet_cmc,
    smoke=smoke,
)


def get_config(arg=None):
    return config_base.select_preset(arg, PRESETS)
