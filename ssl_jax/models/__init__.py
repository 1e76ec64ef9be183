"""Backbone registry: ``model.backbone`` name -> Linen module.

``resnet_tiny`` is our CPU variant for tests and smoke runs: the torchvision layout with
one BasicBlock per stage and widths 16-32-64-128 (D=128; 307,536 parameters with the
cifar stem).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.models.resnet import ResNet

# name -> (block, stage_sizes, width); stage sizes from torchvision's resnet.py.
RESNETS: dict[str, tuple[str, tuple[int, ...], int]] = {
    "resnet_tiny": ("basic", (1, 1, 1, 1), 16),
    "resnet18": ("basic", (2, 2, 2, 2), 64),
    "resnet34": ("basic", (3, 4, 6, 3), 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 64),
}


def make_backbone(model_cfg: Any, *, bn_groups: int = 1, image_size: int = 224) -> nn.Module:
    """Builds the backbone named by ``model_cfg.backbone``; fails listing the valid names.
    ``image_size`` is the training resolution (a ViT's position-embedding grid)."""
    del image_size  # used by ViTs
    name = model_cfg.backbone
    if name not in RESNETS:
        raise ValueError(f"Unknown model.backbone {name!r}; valid names: {sorted(RESNETS)}.")
    block, stage_sizes, width = RESNETS[name]
    return ResNet(
        stage_sizes=stage_sizes,
        block=block,
        width=width,
        stem=model_cfg.stem,
        bn_momentum=model_cfg.bn_momentum,
        bn_epsilon=model_cfg.bn_epsilon,
        bn_groups=bn_groups,
        zero_init_residual=model_cfg.zero_init_residual,
        dtype=jnp.dtype(model_cfg.dtype),
    )
