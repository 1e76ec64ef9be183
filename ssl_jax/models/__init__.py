"""Backbone registry: ``model.backbone`` name -> Linen module.

ResNets (``RESNETS``) read ``model.width_multiplier`` (every conv widened, as SimCLR's,
SwAV's and BYOL's wide ResNets are) and ``model.padding`` (``resnet.PADDINGS``: PyTorch's,
or TensorFlow's 'SAME' for the TF and Haiku releases). ``resnet_tiny`` is our CPU variant
for tests and smoke runs: the torchvision layout with one BasicBlock per stage and widths
16-32-64-128 (D=128; 307,536 parameters with the cifar stem). ViTs (``VITS``:
vit_tiny/small/base/large) read ``model.vit``: patch_size, pos_embed, drop_path,
frozen_patch_embed, pool, remat (see ``ssl_jax/models/vit.py``).
``model.dtype`` is the compute dtype of every backbone and head ("float32" or
"bfloat16"); parameters and BatchNorm statistics are float32 either way.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.models.resnet import ResNet
from ssl_jax.models.vit import POOLS, POS_EMBEDS, VITS, ViT

# name -> (block, stage_sizes, width); stage sizes from torchvision's resnet.py.
RESNETS: dict[str, tuple[str, tuple[int, ...], int]] = {
    "resnet_tiny": ("basic", (1, 1, 1, 1), 16),
    "resnet18": ("basic", (2, 2, 2, 2), 64),
    "resnet34": ("basic", (3, 4, 6, 3), 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 64),
    "resnet101": ("bottleneck", (3, 4, 23, 3), 64),
    "resnet152": ("bottleneck", (3, 8, 36, 3), 64),
    "resnet200": ("bottleneck", (3, 24, 36, 3), 64),  # BYOL's ResNet-200 (Haiku's sizes)
}


def make_backbone(model_cfg: Any, *, bn_groups: int = 1, image_size: int = 224) -> nn.Module:
    """Builds the backbone named by ``model_cfg.backbone``; fails listing the valid names.
    ``image_size`` is the training resolution (a ViT's position-embedding grid)."""
    name = model_cfg.backbone
    if name in RESNETS:
        return _make_resnet(model_cfg, bn_groups)
    if name in VITS:
        return _make_vit(model_cfg, image_size)
    raise ValueError(
        f"Unknown model.backbone {name!r}; valid names: ResNets {sorted(RESNETS)}, "
        f"ViTs {sorted(VITS)}."
    )


def _make_resnet(model_cfg: Any, bn_groups: int) -> ResNet:
    block, stage_sizes, width = RESNETS[model_cfg.backbone]
    return ResNet(
        stage_sizes=stage_sizes,
        block=block,
        # SimCLR's, SwAV's and BYOL's wide ResNets (2x, 4x, w2...) widen every conv;
        # both keys are absent from the config.json of runs made before them.
        width=width * model_cfg.get("width_multiplier", 1),
        stem=model_cfg.stem,
        bn_momentum=model_cfg.bn_momentum,
        bn_epsilon=model_cfg.bn_epsilon,
        bn_groups=bn_groups,
        zero_init_residual=model_cfg.zero_init_residual,
        padding=model_cfg.get("padding", "torch"),
        dtype=jnp.dtype(model_cfg.dtype),
    )


def _make_vit(model_cfg: Any, image_size: int) -> ViT:
    # ViTs have no BatchNorm, so bn_groups does not apply.
    vit_cfg = model_cfg.vit
    if vit_cfg.pos_embed not in POS_EMBEDS:
        raise ValueError(
            f"Unknown model.vit.pos_embed {vit_cfg.pos_embed!r}; valid values: {POS_EMBEDS}."
        )
    if vit_cfg.pool not in POOLS:
        raise ValueError(f"Unknown model.vit.pool {vit_cfg.pool!r}; valid values: {POOLS}.")
    width, depth, heads = VITS[model_cfg.backbone]
    heads = vit_cfg.get("num_heads", 0) or heads  # MoCo v3's ViT-S has 12 heads, not 6
    return ViT(
        width=width,
        depth=depth,
        heads=heads,
        patch_size=vit_cfg.patch_size,
        image_size=image_size,
        pos_embed=vit_cfg.pos_embed,
        drop_path=vit_cfg.drop_path,
        frozen_patch_embed=vit_cfg.frozen_patch_embed,
        pool=vit_cfg.pool,
        dtype=jnp.dtype(model_cfg.dtype),
        remat=vit_cfg.get("remat", False),
    )
