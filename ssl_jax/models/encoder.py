"""Encoder = backbone + projection head (+ predictor), the network most methods train.

Parameters live under ``params['backbone']``, ``params['head']`` and, for methods with a
predictor (SimSiam, BYOL, MoCo v3), ``params['predictor']``, so the backbone can be
exported, loaded for linear evaluation, or copied to an EMA target on its own. A target
network is the same module applied with ``predict=False`` to params without a predictor.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.models import make_backbone
from ssl_jax.models.heads import MLPHead


class Encoder(nn.Module):
    """``__call__`` -> ``{'embedding': [B, D], 'projection': [B, d]}`` and, with a predictor
    and ``predict=True``, ``'prediction': [B, d]``; all float32."""

    backbone: nn.Module
    head: nn.Module
    predictor: nn.Module | None = None

    def __call__(self, x: jnp.ndarray, train: bool, predict: bool = True) -> dict[str, jnp.ndarray]:
        embedding = self.backbone(x, train).astype(jnp.float32)  # [B, D]
        projection = self.head(embedding, train).astype(jnp.float32)  # [B, d]
        out = {"embedding": embedding, "projection": projection}
        if self.predictor is not None and predict:
            out["prediction"] = self.predictor(projection, train).astype(jnp.float32)  # [B, d]
        return out

    def embed(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """Backbone features only (kNN monitor, linear probe):
        ``model.apply(variables, x, method=Encoder.embed)``."""
        return self.backbone(x, train).astype(jnp.float32)  # [B, D]


def make_mlp(mlp_cfg: Any, model_cfg: Any, *, bn_groups: int = 1) -> MLPHead:
    """The MLP described by ``mlp_cfg`` (``model.head`` or ``model.predictor``)."""
    return MLPHead(
        num_layers=mlp_cfg.num_layers,
        hidden_dim=mlp_cfg.hidden_dim,
        out_dim=mlp_cfg.out_dim,
        use_bn=mlp_cfg.use_bn,
        last_bn=mlp_cfg.last_bn,
        last_bias=mlp_cfg.get("last_bias", True),
        bn_momentum=model_cfg.bn_momentum,
        bn_epsilon=model_cfg.bn_epsilon,
        bn_groups=bn_groups,
        dtype=jnp.dtype(model_cfg.dtype),
    )


def make_head(model_cfg: Any, *, bn_groups: int = 1) -> MLPHead:
    """The projection head described by ``model_cfg.head``."""
    return make_mlp(model_cfg.head, model_cfg, bn_groups=bn_groups)


def make_encoder(model_cfg: Any, *, bn_groups: int = 1, image_size: int = 224) -> Encoder:
    """Backbone + head (+ predictor when ``model.predictor.num_layers > 0``) from
    ``model_cfg``; ``bn_groups`` reaches every BatchNorm, ``image_size`` sizes a ViT's
    learned position embedding."""
    predictor_cfg = model_cfg.get("predictor")
    predictor = None
    if predictor_cfg is not None and predictor_cfg.num_layers > 0:
        if predictor_cfg.out_dim != model_cfg.head.out_dim:
            raise ValueError(
                f"model.predictor.out_dim={predictor_cfg.out_dim} must equal "
                f"model.head.out_dim={model_cfg.head.out_dim}: the prediction regresses the "
                "other view's projection."
            )
        predictor = make_mlp(predictor_cfg, model_cfg, bn_groups=bn_groups)
    return Encoder(
        backbone=make_backbone(model_cfg, bn_groups=bn_groups, image_size=image_size),
        head=make_head(model_cfg, bn_groups=bn_groups),
        predictor=predictor,
    )
