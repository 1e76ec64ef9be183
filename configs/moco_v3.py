"""MoCo v3 (arXiv:2104.02057; facebookresearch/moco-v3 main_moco.py, README and CONFIG.md).

Usage: --config=configs/moco_v3.py:<preset> with preset in digits, cifar10, cifar10_vit,
imagenet (ResNet-50), imagenet_vit_small, imagenet_vit_base, smoke, smoke_vit, then any
override. ResNet-50 300 epochs (CONFIG.md): --config.optim.lr=0.3
--config.schedule.epochs=300; 1000 epochs: add --config.optim.weight_decay=1.5e-6
--config.moco_v3.momentum=0.996.
"""

from ssl_jax import config_base
from ssl_jax.data import recipes
from ssl_jax.methods import moco_v3


def _byol_views(crop_min: float, blur: bool = True):
    """main_moco.py's two views "follow BYOL's augmentation recipe": blur p 1.0 / 0.1,
    solarize p 0 / 0.2, crop scale (--crop-min, 1)."""
    extra = {} if blur else dict(blur_p=0.0)
    return (
        recipes.recipe("byol_view1", crop_scale=(crop_min, 1.0), **extra),
        recipes.recipe("byol_view2", crop_scale=(crop_min, 1.0), **extra),
    )


def _resnet():
    c = config_base.base_config()
    c.method = "moco_v3"
    c.moco_v3 = moco_v3.get_config()  # m 0.99 -> 1 (cosine), T 1.0
    c.model.zero_init_residual = True  # torchvision resnet(zero_init_residual=True)
    # builder.py MoCo_ResNet: projector _build_mlp(2, 2048, 4096, 256): bias-free Linear +
    # BN + ReLU, bias-free Linear + BN(affine=False); predictor _build_mlp(2, 256, 4096,
    # 256, last_bn=False): bias-free Linear + BN + ReLU, bias-free Linear.
    c.model.head.update(
        num_layers=2,
        hidden_dim=4096,
        out_dim=256,
        use_bn=True,
        last_bn="no_affine",
        last_bias=False,
    )
    c.model.predictor.update(
        num_layers=2, hidden_dim=4096, out_dim=256, use_bn=True, last_bn="none", last_bias=False
    )
    # LARS (moco/optimizer.py: momentum 0.9, eta 1e-3, 1-D params get neither weight decay
    # nor trust-ratio scaling, the lr applied after the momentum: mu = m mu + trust u;
    # w -= lr mu), lr 0.6 x bs/256, wd 1e-6, 10 warm-up epochs, cosine.
    c.optim.update(
        name="lars",
        lr=0.6,
        lr_scaling="linear",
        momentum=0.9,
        weight_decay=1e-6,
        exclude_bias_and_norm=True,
        trust_coefficient=1e-3,
        lars_lr_in_momentum=False,
    )
    c.schedule.update(epochs=100.0, warmup_epochs=10.0, decay="cosine")
    return c


def _vit(backbone: str):
    c = _resnet()
    c.model.update(backbone=backbone, zero_init_residual=False)
    # --stop-grad-conv1: random, frozen patch projection; vits.py: fixed 2-D sin-cos
    # position embedding, class token features (timm), no stochastic depth.
    c.model.vit.update(
        patch_size=16, pos_embed="sincos", drop_path=0.0, frozen_patch_embed=True, pool="cls"
    )
    # builder.py MoCo_ViT: projector _build_mlp(3, D, 4096, 256), predictor
    # _build_mlp(2, 256, 4096, 256): both end in BN(affine=False), all Linears bias-free.
    c.model.head.update(num_layers=3, hidden_dim=4096, out_dim=256, last_bn="no_affine")
    c.model.predictor.update(num_layers=2, hidden_dim=4096, out_dim=256, last_bn="no_affine")
    c.moco_v3.temperature = 0.2  # --moco-t=.2
    # torch.optim.AdamW(model.parameters(), lr, weight_decay=.1): default betas (0.9,
    # 0.999), eps 1e-8, decay on every trainable tensor; lr 1.5e-4 x bs/256.
    c.optim.update(
        name="adamw",
        lr=1.5e-4,
        lr_scaling="linear",
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=0.1,
        exclude_bias_and_norm=False,
        frozen_params=("patch_embed",),
    )
    c.schedule.update(epochs=300.0, warmup_epochs=40.0, decay="cosine")
    return c


def imagenet():
    """ResNet-50, 100 epochs, batch 4096 (README: --moco-m-cos --crop-min=.2), 68.9% linear."""
    c = _resnet()
    config_base.use_imagenet(c, recipes.recipe("byol_view1"))
    config_base.set_views(c, *_byol_views(0.2))
    c.input.global_batch_size = 4096
    return c


def _imagenet_vit(backbone: str):
    c = _vit(backbone)
    config_base.use_imagenet(c, recipes.recipe("byol_view1"))
    c.model.backbone = backbone  # use_imagenet installs resnet50
    config_base.set_views(c, *_byol_views(0.08))  # ViT commands keep --crop-min=0.08
    c.input.global_batch_size = 4096  # README: all reported models use batch 4096
    return c


def imagenet_vit_small():
    """ViT-S/16, 300 epochs, batch 4096 (CONFIG.md), 73.2% linear. The reference's
    ViT-Small has 12 heads of width 32 (moco-v3 vits.py, README note), unlike timm's 6."""
    c = _imagenet_vit("vit_small")
    c.model.vit.num_heads = 12
    return c


def imagenet_vit_base():
    """ViT-B/16, 300 epochs, batch 4096 (CONFIG.md), 76.7% linear."""
    return _imagenet_vit("vit_base")


def cifar10():
    """ResNet-18 on CIFAR-10. The paper has no CIFAR pre-training; this follows solo-learn's
    scripts/pretrain/cifar/mocov3.yaml (93.1% linear reported there): heads 4096-256, T
    0.2, m 0.99 -> 1, LARS lr 0.3 x bs/256 (also CONFIG.md's lr for >= 300 epochs), wd
    1e-6 with 1-D params excluded, batch 256, 1000 epochs, 10 warm-up epochs, BYOL's views
    at 32 px without blur (solo-learn's asymmetric.yaml: solarize 0.2 on view 2 only).
    solo-learn's LARS uses eta 0.02 with the trust ratio clipped at 1; ours has no
    clipping, so this keeps the reference's eta 1e-3."""
    c = _resnet()
    config_base.use_cifar10(c, recipes.recipe("byol_view1"))
    config_base.set_views(c, *_byol_views(0.08, blur=False))
    c.input.global_batch_size = 256
    c.moco_v3.temperature = 0.2
    c.optim.update(lr=0.3, weight_decay=1e-6)
    c.schedule.update(epochs=1000.0, warmup_epochs=10.0)
    return c


def cifar10_vit():
    """ViT-Tiny on CIFAR-10 (not in the paper, which only transfers ViTs to CIFAR): the
    paper's ViT recipe unchanged (AdamW 1.5e-4 x bs/256, wd 0.1, T 0.2, m 0.99 -> 1, frozen
    random patch projection, sin-cos positions, 3-layer projector, 300 epochs with 40 of
    warm-up), with 4-px patches so 32 px gives an 8 x 8 token grid (ViT-S/16 at 224: 14 x
    14), batch 512, and the cifar10 preset's views (BYOL's without blur)."""
    c = _vit("vit_tiny")
    config_base.use_cifar10(c, recipes.recipe("byol_view1"))
    c.model.backbone = "vit_tiny"  # use_cifar10 installs resnet18
    c.model.vit.patch_size = 4
    config_base.set_views(c, *_byol_views(0.08, blur=False))
    c.input.global_batch_size = 512
    return c


def digits():
    """The CPU demo: resnet_tiny on 16 px digits, 40 epochs (4 forward passes per step, so
    fewer epochs than MoCo v2's 60 for a similar wall time). Tuned on this preset only,
    40-epoch kNN top-1: T 0.2 / 0.5 / 1.0 -> 92.8 / 93.6 / 92.2 (T 0.5 as SimCLR's CIFAR
    setting); base lr 1.2 no better than 0.6. zero_init_residual is off: with it a 60-epoch
    run reached only 89.7 (and the random-init baseline fell to 63). These runs had the lr
    inside LARS's momentum (lars_lr_in_momentum=True)."""
    c = _resnet()
    config_base.use_digits(c, recipes.recipe("digits"))
    c.input.global_batch_size = 128
    c.model.zero_init_residual = False
    c.model.head.update(hidden_dim=128, out_dim=64)
    c.model.predictor.update(hidden_dim=128, out_dim=64)
    c.moco_v3.temperature = 0.5
    c.optim.update(lr=0.6, weight_decay=1e-6)
    c.schedule.update(epochs=40.0, warmup_epochs=5.0)
    return c


def smoke():
    c = _resnet()
    config_base.use_smoke(c, recipes.recipe("digits"))
    c.moco_v3.temperature = 0.2
    return c


def smoke_vit():
    """smoke with a 2-block ViT, 4-px patches (4 x 4 tokens at 16 px) and the ViT heads."""
    c = _vit("vit_micro")
    config_base.use_smoke(c, recipes.recipe("digits"))
    c.model.backbone = "vit_micro"  # use_smoke installs resnet_tiny
    c.model.vit.patch_size = 4
    return c


PRESETS = dict(
    digits=digits,
    cifar10=cifar10,
    cifar10_vit=cifar10_vit,
    imagenet=imagenet,
    imagenet_vit_small=imagenet_vit_small,
    imagenet_vit_base=imagenet_vit_base,
    smoke=smoke,
    smoke_vit=smoke_vit,
)


def get_config(arg=None):
    return config_base.select_preset(arg, PRESETS)
