"""Encoder = backbone + projection head, the network most methods train.

Parameters live under ``params['backbone']`` and ``params['head']`` so the backbone can
be exported, loaded for linear evaluation, or copied to an EMA target on its own.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.models import make_backbone
from ssl_jax.models.heads import MLPHead


class Encoder(nn.Module):
    """``__call__`` -> ``{'embedding': [B, D], 'projection': [B, d]}``, both float32."""

    backbone: nn.Module
    head: nn.Module

    def __call__(self, x: jnp.ndarray, train: bool) -> dict[str, jnp.ndarray]:
        embedding = self.backbone(x, train).astype(jnp.float32)  # [B, D]
        projection = self.head(embedding, train).astype(jnp.float32)  # [B, d]
        return {"embedding": embedding, "projection": projection}

    def embed(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """Backbone features only (kNN monitor, linear probe):
        ``model.apply(variables, x, method=Encoder.embed)``."""
        return self.backbone(x, train).astype(jnp.float32)  # [B, D]


def make_head(model_cfg: Any, *, bn_groups: int = 1) -> MLPHead:
    """The projection head described by ``model_cfg.head``."""
    head_cfg = model_cfg.head
    return MLPHead(
        num_layers=head_cfg.num_layers,
        hidden_dim=head_cfg.hidden_dim,
        out_dim=head_cfg.out_dim,
        use_bn=head_cfg.use_bn,
        last_bn=head_cfg.last_bn,
        bn_momentum=model_cfg.bn_momentum,
        bn_epsilon=model_cfg.bn_epsilon,
        bn_groups=bn_groups,
        dtype=jnp.dtype(model_cfg.dtype),
    )


def make_encoder(model_cfg: Any, *, bn_groups: int = 1) -> Encoder:
    """Backbone + head from ``model_cfg``; ``bn_groups`` reaches every BatchNorm."""
    return Encoder(
        backbone=make_backbone(model_cfg, bn_groups=bn_groups),
        head=make_head(model_cfg, bn_groups=bn_groups),
    )
