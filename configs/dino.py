"""DINO (arXiv:2104.14294; facebookresearch/dino main_dino.py and README commands).

Usage: --config=configs/dino.py:<preset> with preset in digits, cifar10 (ViT-Tiny/4),
cifar10_resnet18, imagenet (ViT-S/16), imagenet_resnet50, smoke, smoke_vit, then any override, e.g.
--config.dino.norm_last_layer=False --config.model.head.out_dim=4096.
"""

from ssl_jax import config_base
from ssl_jax.data import recipes
from ssl_jax.methods import dino


def _dino():
    c = config_base.base_config()
    c.method = "dino"
    # tau_s 0.1, tau_t 0.04 -> 0.07 over 30 epochs, center m 0.9, teacher m 0.996 -> 1,
    # bottleneck 256, weight-normalised last layer with g fixed to 1.
    c.dino = dino.get_config()
    # DINOHead: Linear(2048)+GELU, Linear(2048)+GELU, Linear(256), L2-normalise, then the
    # last layer to --out_dim 65536; --use_bn_in_head False is model.head.use_bn.
    c.model.head.update(num_layers=3, hidden_dim=2048, out_dim=65536, use_bn=False, last_bn="none")
    # ViT-S/16 (--arch vit_small --patch_size 16), learned position embedding, stochastic
    # depth 0.1 (--drop_path_rate, student only).
    c.model.update(backbone="vit_small")
    c.model.vit.update(patch_size=16, pos_embed="learned", drop_path=0.1, pool="cls")
    # AdamW (PyTorch defaults b1 0.9, b2 0.999, eps 1e-8), lr 5e-4 x bs/256 after 10 linear
    # warm-up epochs, cosine to --min_lr 1e-6; weight decay cosine 0.04 -> 0.4 on all but
    # biases and 1-D (norm) params (utils.get_params_groups); each gradient tensor clipped
    # to norm 3.0 (--clip_grad); the head's last layer frozen during the first epoch
    # (--freeze_last_layer 1).
    c.optim.update(
        name="adamw",
        lr=5e-4,
        lr_scaling="linear",
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=0.04,
        weight_decay_end=0.4,
        exclude_bias_and_norm=True,
        clip_grad_per_param=3.0,
        delayed_params=("last_layer",),
        delay_epochs=1.0,
    )
    # utils.cosine_scheduler: np.linspace(0, peak, W) warm-up, at the peak on step W - 1.
    c.schedule.update(
        epochs=100.0, warmup_epochs=10.0, decay="cosine", final_lr=1e-6, warmup_end_inclusive=True
    )
    return c


def _dino_crops(c, num_local: int, local_size: int, global_scale=None, local_scale=None):
    """DataAugmentationDINO: 2 global crops (blur 1.0 / blur 0.1 + solarize 0.2) and
    ``num_local`` local crops (blur 0.5) at ``local_size`` px."""
    g = {} if global_scale is None else dict(crop_scale=global_scale)
    lo = {} if local_scale is None else dict(crop_scale=local_scale)
    config_base.set_multicrop(
        c,
        [recipes.recipe("dino_global1", **g), recipes.recipe("dino_global2", **g)],
        recipes.recipe("dino_local", **lo),
        num_local=num_local,
        local_size=local_size,
    )


def imagenet():
    """The paper's ViT-S/16 setting (Sec. 4 "Implementation details"): batch 1024, 100
    epochs (the README's vanilla run), 2 x 224 + 8 x 96 crops (--local_crops_number 8)."""
    c = _dino()
    config_base.use_imagenet(c, recipes.recipe("dino_global1"))
    c.model.update(backbone="vit_small")  # use_imagenet installs resnet50
    _dino_crops(c, num_local=8, local_size=96)
    c.input.global_batch_size = 1024
    return c


def imagenet_resnet50():
    """The README's ResNet-50 command: --arch resnet50 --optimizer sgd --lr 0.03
    --weight_decay 1e-4 --weight_decay_end 1e-4 --global_crops_scale 0.14 1
    --local_crops_scale 0.05 0.14, on 8 GPUs x 64 (--batch_size_per_gpu default)."""
    c = _dino()
    config_base.use_imagenet(c, recipes.recipe("dino_global1"))
    c.model.update(backbone="resnet50", stem="imagenet")
    _dino_crops(c, num_local=8, local_size=96, global_scale=(0.14, 1.0), local_scale=(0.05, 0.14))
    c.input.global_batch_size = 512
    # SGD momentum 0.9 with constant wd 1e-4 (not on biases / BN), lr 0.03 x bs/256; the
    # warm-up, min_lr, clip_grad and freeze_last_layer defaults stay.
    c.optim.update(name="sgd", lr=0.03, momentum=0.9, weight_decay=1e-4, weight_decay_end=None)
    # main_dino's defaults (the command sets no temperature): tau_t 0.04 throughout.
    c.dino.update(teacher_temp=0.04, warmup_teacher_temp_epochs=0)
    return c


def cifar10():
    """Not in the paper (it only fine-tunes on CIFAR). Our scaling of the ImageNet recipe:
    ViT-Tiny with 4-px patches at 32 px gives an 8 x 8 token grid (ViT-S/16 at 224: 14 x
    14), local crops at 16 px (the reference's 96/224 ~ 0.43 of the global side) give
    4 x 4; 6 local crops; 4096 prototypes (solo-learn's CIFAR DINO, scripts/pretrain/cifar/
    dino.yaml, num_prototypes 4096) since 65,536 is sized for ImageNet; batch 256, 200
    epochs. Blur stays as in the reference recipes (3 taps at 32 px, 1 at 16 px)."""
    c = _dino()
    config_base.use_cifar10(c, recipes.recipe("dino_global1"))
    c.model.update(backbone="vit_tiny")
    c.model.vit.update(patch_size=4, pos_embed="learned", drop_path=0.1)
    _dino_crops(c, num_local=6, local_size=16)
    c.model.head.out_dim = 4096
    c.input.global_batch_size = 256
    c.schedule.update(epochs=200.0, warmup_epochs=10.0)
    return c


def cifar10_resnet18():
    """solo-learn's CIFAR DINO (scripts/pretrain/cifar/dino.yaml with the method defaults of
    solo/methods/dino.py): ResNet-18, two 32-px crops with BYOL's asymmetric views (no
    local crops, no blur at 32 px), head 2048 -> 256, 4096 prototypes, normalised last
    layer frozen for 1 epoch, no gradient clipping, tau_s 0.1 and tau_t 0.07 throughout
    (warm-up epochs 0), teacher m 0.9995 -> 1, LARS lr 0.3 x bs/256 with eta 0.02 (their
    LARS also clips the local lr at the global one; ours does not), wd 1e-6 on all but
    biases and norms, batch 256, 1000 epochs with 10 warm-up."""
    c = _dino()
    config_base.use_cifar10(c, recipes.recipe("byol_view1"))
    config_base.set_views(
        c,
        recipes.recipe("byol_view1", blur_p=0.0),
        recipes.recipe("byol_view2", blur_p=0.0),
    )
    c.model.head.out_dim = 4096
    c.dino.update(momentum_teacher=0.9995, teacher_temp=0.07, warmup_teacher_temp_epochs=0)
    # solo/utils/lars.py is PyTorch SGD with LARS-scaled gradients: lr after the momentum.
    c.optim.update(
        name="lars",
        lr=0.3,
        weight_decay=1e-6,
        weight_decay_end=None,
        trust_coefficient=0.02,
        clip_grad_per_param=0.0,
        lars_lr_in_momentum=False,
    )
    c.input.global_batch_size = 256
    c.schedule.update(epochs=1000.0, warmup_epochs=10.0, final_lr=0.0)
    return c


def _digits_crops(c, num_local: int, local_size: int):
    """Multi-crop with our digits recipe made milder (see ``digits``): global crops cover
    (0.8, 1) of the digit, local crops (0.5, 0.9), no colour jitter."""
    mild = dict(jitter_p=0.0)
    config_base.set_multicrop(
        c,
        [recipes.recipe("digits", crop_scale=(0.8, 1.0), **mild)] * 2,
        recipes.recipe("digits", crop_scale=(0.5, 0.9), **mild),
        num_local=num_local,
        local_size=local_size,
    )


def digits():
    """The CPU demo: resnet_tiny, 2 global 16-px + 2 local 12-px crops, 40 epochs.

    Tuned, because DINO as configured for ImageNet collapses here. The student copies the
    part of the teacher's output that another crop of the image predicts, sharpened by
    tau_s / tau_t: directions whose two-crop correlation rho is below tau_t / tau_s shrink
    and, once the EMA teacher follows, vanish. On 8 x 8 digits the digits recipe leaves
    the random-init network a two-crop correlation of rho ~ 0.04 (0.2 in pixels), far
    below 0.04 / 0.1 = 0.4: every such run (AdamW or SGD, teacher temperature 0.04 or
    0.04 -> 0.07, BN in the head or not, m 0.99-0.999, 64-256-d bottleneck) reached the
    uniform output (teacher entropy log K, KL 0) within ~40 steps. Milder crops without
    jitter (rho ~ 0.3) and tau_t = 0.02 (threshold 0.2) train without collapse; local
    crops of (0.2, 0.5) at 8 px are nearly uncorrelated with the global ones and pulled
    the kNN below random init, (0.5, 0.9) at 12 px do not. The 10 warm-up epochs are the
    reference's; the head is narrowed to the 128-d features.
    """
    c = _dino()
    config_base.use_digits(c, recipes.recipe("digits"))
    _digits_crops(c, num_local=2, local_size=12)
    c.input.global_batch_size = 128
    c.model.head.update(hidden_dim=256, out_dim=256)
    c.dino.update(
        bottleneck_dim=64, warmup_teacher_temp=0.02, teacher_temp=0.02, warmup_teacher_temp_epochs=0
    )
    c.optim.lr = 2e-3  # 1e-3 at batch 128
    c.schedule.update(epochs=40.0, warmup_epochs=10.0)
    return c


def smoke():
    """resnet_tiny, 2 global 16-px + 2 local 8-px crops, 4 steps, the reference's
    temperatures."""
    c = _dino()
    config_base.use_smoke(c, recipes.recipe("digits"))  # head 32 -> 16 prototypes
    _digits_crops(c, num_local=2, local_size=8)
    c.dino.update(bottleneck_dim=16, warmup_teacher_temp_epochs=1)
    c.optim.delay_epochs = 0.25  # the last layer is frozen for the first step
    return c


def smoke_vit():
    """smoke with a 2-block ViT, 4-px patches: 4 x 4 tokens for global, 2 x 2 for local crops
    (the learned position embedding is interpolated)."""
    c = smoke()
    c.model.update(backbone="vit_micro")
    c.model.vit.update(patch_size=4, pos_embed="learned", drop_path=0.1)
    return c


PRESETS = dict(
    digits=digits,
    cifar10=cifar10,
    cifar10_resnet18=cifar10_resnet18,
    imagenet=imagenet,
    imagenet_resnet50=imagenet_resnet50,
    smoke=smoke,
    smoke_vit=smoke_vit,
)


def get_config(arg=None):
    return config_base.select_preset(arg, PRESETS)
