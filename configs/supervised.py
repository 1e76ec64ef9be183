"""Fine-tuning and linear probing of a (pretrained) encoder: MAE's protocols
(arXiv:2111.06377 App. A.1 / A.2; facebookresearch/mae main_finetune.py, main_linprobe.py,
FINETUNE.md, LINPROBE.md).

Usage: --config=configs/supervised.py:<preset> --config.supervised.init_from=<workdir of a
pretraining run>, preset in smoke, smoke_linear, finetune_digits, linear_digits,
finetune_cifar10, linear_cifar10, finetune_imagenet_vit_base, finetune_imagenet_vit_large,
linear_imagenet_vit_base. The backbone settings (model.backbone, model.vit.patch_size,
pos_embed) must be those of the pretraining run; without init_from the encoder starts
from random init (a supervised-from-scratch baseline).
"""

from ssl_jax import config_base
from ssl_jax.data import recipes
from ssl_jax.methods import supervised


def _base(protocol: str):
    c = config_base.base_config()
    c.method = "supervised"
    c.supervised = supervised.get_config()
    c.supervised.protocol = protocol
    # Optimizer keys only the supervised configs carry (ssl_jax/optim.py reads them with
    # defaults 1.0 and ()): MAE's layer-wise lr decay and extra no-weight-decay names.
    c.optim.layer_decay = 1.0
    c.optim.no_decay_params = ()
    c.model.update(backbone="vit_base")
    # MAE's encoder: fixed 2-D sin-cos position embedding (models_mae.py), patch 16.
    c.model.vit.update(patch_size=16, pos_embed="sincos", frozen_patch_embed=False)
    if protocol == "finetune":
        _finetune(c)
    else:
        _linear(c)
    return c


def _finetune(c):
    """main_finetune.py + FINETUNE.md (ViT-B): AdamW (torch.optim.AdamW defaults b1 0.9,
    b2 0.999, eps 1e-8), --blr 5e-4 x bs/256, --layer_decay 0.65, --weight_decay 0.05 on
    all but biases, norms, pos_embed and cls_token (util/lr_decay.py param_groups_lrd,
    no_weight_decay_list), --warmup_epochs 5 then half-cycle cosine to --min_lr 1e-6
    (util/lr_sched.py), --drop_path 0.1, --global_pool (default True), --smoothing 0.1,
    --mixup 0.8, --cutmix 1.0, --mixup_prob 1.0, --mixup_switch_prob 0.5, 100 epochs."""
    c.supervised.update(smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0)
    c.model.vit.update(drop_path=0.1, pool="gap")
    c.optim.update(
        name="adamw",
        lr=5e-4,
        lr_scaling="linear",
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=0.05,
        exclude_bias_and_norm=True,
        layer_decay=0.65,
        no_decay_params=("cls_token", "pos_embed"),
    )
    c.schedule.update(epochs=100.0, warmup_epochs=5.0, decay="cosine", final_lr=1e-6)


def _linear(c):
    """main_linprobe.py + LINPROBE.md (ViT-B): LARS (util/lars.py: momentum 0.9, trust
    coefficient 0.001, no wd / trust ratio on 1-D params), --blr 0.1 x bs/256,
    --weight_decay 0, --warmup_epochs 10 then cosine to --min_lr 0, 90 epochs,
    --cls_token, the backbone frozen (requires_grad False on all but the head)."""
    c.supervised.update(smoothing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0)
    c.model.vit.update(drop_path=0.0, pool="cls")
    c.optim.update(
        name="lars",
        lr=0.1,
        lr_scaling="linear",
        momentum=0.9,
        nesterov=False,
        weight_decay=0.0,
        trust_coefficient=1e-3,
        exclude_bias_and_norm=True,
        lars_lr_in_momentum=False,  # util/lars.py (MoCo v3's): p -= lr * mu
        frozen_params=("^backbone/",),
    )
    c.schedule.update(epochs=90.0, warmup_epochs=10.0, decay="cosine", final_lr=0.0)


def _single_view(c, recipe):
    """Fine-tuning and linear probing train on one augmented view per image."""
    config_base.set_views(c, recipe)


def _digits(c):
    """ViT-Tiny/4 at 16 px on digits (a 4 x 4 token grid), as configs/mae.py's digits
    preset pretrains it. Our own CPU demo settings: the 'digits' recipe (no flip, crop
    (0.5, 1)) instead of the ImageNet crops, 10 classes."""
    protocol = c.supervised.protocol
    config_base.use_digits(c, recipes.recipe("digits"))
    _single_view(c, recipes.recipe("digits"))
    c.model.update(backbone="vit_tiny")
    c.model.vit.update(patch_size=4)
    c.supervised.num_classes = 10
    c.evals.update(knn_every_steps=0)
    if protocol == "finetune":
        # 20 epochs x 12 steps of batch 128: a few minutes on 2 CPU cores; warm-up 2
        # epochs (MAE's 5 of 100, rounded up). MAE's ImageNet regularisation is too much
        # for 220 steps: with mixup 0.8 + cutmix 1.0, layer decay 0.65 and blr 5e-4 the
        # fine-tuned top-1 was 46.9 (the frozen encoder's linear probe 81.4). So: no
        # mixup / cutmix (smoothing 0.1 stays), layer decay 0.75 (the ViT-L value), blr
        # 1e-3 (5e-4 at batch 128).
        c.input.global_batch_size = 128
        c.schedule.update(epochs=20.0, warmup_epochs=2.0)
        c.supervised.update(mixup_alpha=0.0, cutmix_alpha=0.0)
        c.optim.update(lr=1e-3, layer_decay=0.75)
    else:
        # The backbone only runs forward: 40 epochs x 6 steps of batch 256, warm-up 4
        # (MAE's 10 of 90, scaled). LARS moves each tensor by about lr x 1e-3 of its norm
        # per step, so 200 steps at the linearly scaled lr 0.1 x 256 / 256 left the head
        # near its init (top-1 24.4); lr 6.4, MAE's own (0.1 x 16384 / 256), gave 60.8.
        c.input.global_batch_size = 256
        c.schedule.update(epochs=40.0, warmup_epochs=4.0)
        c.optim.update(lr=6.4, lr_scaling="none")
    c.ckpt.every_steps = 100


def finetune_digits():
    c = _base("finetune")
    _digits(c)
    return c


def linear_digits():
    c = _base("linear")
    _digits(c)
    return c


def _cifar10(c, recipe_name: str):
    """ViT-Tiny/4 at 32 px (an 8 x 8 token grid, like MAE's ViT-B/16 at 224 has 14 x 14),
    10 classes; the ImageNet recipes otherwise, at batch 256 (not in the MAE paper)."""
    config_base.use_cifar10(c, recipes.recipe(recipe_name))
    _single_view(c, recipes.recipe(recipe_name))
    c.model.update(backbone="vit_tiny")
    c.model.vit.update(patch_size=4)
    c.supervised.num_classes = 10
    c.input.global_batch_size = 256


def finetune_cifar10():
    c = _base("finetune")
    _cifar10(c, "finetune")
    return c


def linear_cifar10():
    c = _base("linear")
    _cifar10(c, "linprobe")
    return c


def _imagenet(c, recipe_name: str, batch: int):
    config_base.use_imagenet(c, recipes.recipe(recipe_name))
    _single_view(c, recipes.recipe(recipe_name))
    # use_imagenet installs resnet50; eval: Resize(256) + CenterCrop(224) (crop 0.875).
    c.model.update(backbone="vit_base")
    c.supervised.num_classes = 1000  # --nb_classes
    c.input.global_batch_size = batch


def finetune_imagenet_vit_base():
    """FINETUNE.md ViT-Base: --batch_size 32 on 4 nodes x 8 GPUs (1024), 100 epochs."""
    c = _base("finetune")
    _imagenet(c, "finetune", 1024)
    return c


def finetune_imagenet_vit_large():
    """FINETUNE.md ViT-Large: --epochs 50 --blr 1e-3 --layer_decay 0.75 --drop_path 0.2,
    batch 1024 (32 x 4 nodes x 8 GPUs)."""
    c = finetune_imagenet_vit_base()
    c.model.update(backbone="vit_large")
    c.model.vit.drop_path = 0.2
    c.optim.update(lr=1e-3, layer_decay=0.75)
    c.schedule.epochs = 50.0
    return c


def linear_imagenet_vit_base():
    """LINPROBE.md ViT-Base: --batch_size 512 on 4 nodes x 8 GPUs (16384), --blr 0.1,
    --weight_decay 0.0, 90 epochs, --cls_token."""
    c = _base("linear")
    _imagenet(c, "linprobe", 16384)
    return c


def _smoke(protocol: str):
    c = _base(protocol)
    config_base.use_smoke(c, recipes.recipe("digits"))
    _single_view(c, recipes.recipe("digits"))
    c.model.update(backbone="vit_micro")
    c.model.vit.update(patch_size=4)
    c.supervised.num_classes = 10
    return c


def smoke():
    """vit_micro/4 on 16-px digits, fine-tuned 4 steps with mixup, cutmix and layer decay."""
    return _smoke("finetune")


def smoke_linear():
    """vit_micro/4 on 16-px digits, linear probe (frozen backbone, BN head, LARS), 4 steps."""
    return _smoke("linear")


PRESETS = dict(
    smoke=smoke,
    smoke_linear=smoke_linear,
    finetune_digits=finetune_digits,
    linear_digits=linear_digits,
    finetune_cifar10=finetune_cifar10,
    linear_cifar10=linear_cifar10,
    finetune_imagenet_vit_base=finetune_imagenet_vit_base,
    finetune_imagenet_vit_large=finetune_imagenet_vit_large,
    linear_imagenet_vit_base=linear_imagenet_vit_base,
)


def get_config(arg=None):
    return config_base.select_preset(arg, PRESETS, default="finetune_digits")
