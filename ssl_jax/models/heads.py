"""MLP projection / prediction heads.

``MLPHead`` covers the heads of the supported methods:

- MoCo v1: ``num_layers=1`` -> one Dense (the re-purposed fc layer).
- MoCo v2: ``num_layers=2, use_bn=False, last_bn='none'`` -> Dense(2048)+ReLU+Dense(128),
  both with biases (moco/builder.py's ``mlp`` option).
- SimCLR: ``use_bn=True, last_bn='scale'`` -> hidden Dense(no bias)+BN+ReLU, last
  Dense(no bias)+BN(gamma only) (simclr model_util.py ``projection_head``: the last
  ``batch_norm_relu`` has ``center=False``).
- SimSiam / MoCo v3 projectors: ``last_bn='no_affine'``.

Dense layers carry a bias only when no BN follows (BN's beta, or its mean subtraction,
makes it redundant); ``last_bias=False`` also drops it from a last Dense without BN (MoCo
v3's ResNet predictor is bias-free throughout).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.models.resnet import BatchNorm

# last_bn -> (use_scale, use_bias) of the final BatchNorm; 'none' means no final BN.
LAST_BN = {
    "none": None,
    "affine": (True, True),
    "scale": (True, False),
    "no_affine": (False, False),
}

# PyTorch nn.Linear's default kernel init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), which the
# MoCo / SimSiam / BYOL-PyTorch heads use.
torch_linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class MLPHead(nn.Module):
    """``num_layers`` Dense layers: hidden ones Dense -> (BN) -> ReLU, the last one plain
    Dense -> optional BN (``last_bn``). Returns float32 ``[B, out_dim]``."""

    num_layers: int
    hidden_dim: int
    out_dim: int
    use_bn: bool = False
    last_bn: str = "none"
    last_bias: bool = True
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_groups: int = 1
    kernel_init: nn.initializers.Initializer = torch_linear_init
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        if self.last_bn not in LAST_BN:
            raise ValueError(f"Unknown last_bn {self.last_bn!r}; valid values: {list(LAST_BN)}.")
        if self.num_layers < 1:
            raise ValueError(f"MLPHead needs num_layers >= 1, got {self.num_layers}.")
        x = x.astype(self.dtype)
        for i in range(self.num_layers - 1):
            x = self._dense(self.hidden_dim, not self.use_bn, f"dense{i}")(x)
            if self.use_bn:
                x = self._bn(True, True, f"bn{i}")(x, train)
            x = nn.relu(x)
        last = self.num_layers - 1
        affine = LAST_BN[self.last_bn]
        x = self._dense(self.out_dim, affine is None and self.last_bias, f"dense{last}")(x)
        if affine is not None:
            x = self._bn(*affine, f"bn{last}")(x, train)
        return x.astype(jnp.float32)

    def _dense(self, features: int, use_bias: bool, name: str) -> nn.Dense:
        return nn.Dense(
            features,
            use_bias=use_bias,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name=name,
        )

    def _bn(self, use_scale: bool, use_bias: bool, name: str) -> BatchNorm:
        return BatchNorm(
            groups=self.bn_groups,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            use_scale=use_scale,
            use_bias=use_bias,
            dtype=self.dtype,
            name=name,
        )


# DINO's _init_weights: trunc_normal_(std=.02) with the default cut at +-2 in absolute
# value, i.e. +-100 std: in effect an untruncated normal.
dino_dense_init = nn.initializers.normal(0.02)


class DINOHead(nn.Module):
    """DINO's projection head (facebookresearch/dino vision_transformer.py ``DINOHead``).

    ``num_layers - 1`` hidden Dense(hidden_dim) -> (BN if ``use_bn``) -> GELU, a
    Dense(bottleneck_dim), L2 normalisation, then the weight-normalised prototypes layer
    ``last_layer``: logits = z @ (g * v / ||v||), columns normalised over the input axis,
    no bias. ``v`` keeps PyTorch nn.Linear's default init (the reference creates the layer
    after ``_init_weights`` ran); the gain ``g`` starts at 1 and, with ``norm_last_layer``,
    stays 1 (it is then no parameter at all, so only the directions are learned).

    Both ``last_layer/kernel`` and ``last_layer/scale`` live under ``last_layer`` so a
    "last_layer" regex selects them (DINO freezes them during the first epoch). ``scale``
    is stored [1, out_dim] like PyTorch's weight_g [out_dim, 1], so the rank-based weight
    decay mask decays it, as the reference's ``get_params_groups`` does.

    ``__call__`` returns float32 logits [B, out_dim], or ``(logits, bottleneck)`` with
    ``return_bottleneck`` (the L2-normalised [B, bottleneck_dim] features). The prototypes
    layer runs in float32 whatever ``dtype``: its logits are divided by temperatures down
    to 0.04.
    """

    out_dim: int
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    num_layers: int = 3
    use_bn: bool = False
    norm_last_layer: bool = True
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_groups: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool, return_bottleneck: bool = False):
        if self.num_layers < 1:
            raise ValueError(f"DINOHead needs num_layers >= 1, got {self.num_layers}.")
        x = x.astype(self.dtype)
        for i in range(self.num_layers - 1):
            # The reference's hidden Linear keeps its bias even when BN follows.
            x = self._dense(self.hidden_dim, f"dense{i}")(x)
            if self.use_bn:
                x = BatchNorm(
                    groups=self.bn_groups,
                    momentum=self.bn_momentum,
                    epsilon=self.bn_epsilon,
                    dtype=self.dtype,
                    name=f"bn{i}",
                )(x, train)
            x = nn.gelu(x, approximate=False)  # torch.nn.GELU is the exact (erf) form
        x = self._dense(self.bottleneck_dim, f"dense{self.num_layers - 1}")(x)
        x = x.astype(jnp.float32)
        z = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # [B, b]
        logits = WeightNormDense(
            self.out_dim, trainable_scale=not self.norm_last_layer, name="last_layer"
        )(z)  # [B, out_dim]
        return (logits, z) if return_bottleneck else logits

    def _dense(self, features: int, name: str) -> nn.Dense:
        return nn.Dense(
            features,
            kernel_init=dino_dense_init,
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name=name,
        )


class WeightNormDense(nn.Module):
    """Bias-free Dense with PyTorch ``weight_norm(dim=0)``: W = g * v / ||v||, each output
    column normalised over the input axis. Float32 throughout. Without
    ``trainable_scale`` g is the constant 1 (DINO's ``norm_last_layer``)."""

    features: int
    trainable_scale: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        v = self.param("kernel", torch_linear_init, (x.shape[-1], self.features), jnp.float32)
        w = v / jnp.linalg.norm(v, axis=0, keepdims=True)  # [in, out], unit columns
        if self.trainable_scale:
            w = w * self.param("scale", nn.initializers.ones, (1, self.features), jnp.float32)
        return x.astype(jnp.float32) @ w


def unit_columns(init: nn.initializers.Initializer) -> nn.initializers.Initializer:
    """``init``, then each output column scaled to unit L2 norm over the input axis."""

    def unit_init(key, shape, dtype=jnp.float32):
        w = init(key, shape, dtype)
        return w / jnp.linalg.norm(w, axis=0, keepdims=True)

    return unit_init


class SwAVHead(nn.Module):
    """SwAV's head (facebookresearch/swav src/resnet50.py ``forward_head``): the projection
    MLP, L2 normalisation, then the prototypes, a bias-free Dense named ``prototypes``
    whose columns (one per prototype, kernel [d, K]) are unit vectors: the scores are
    cosines. The reference renormalises them before every step; the method's
    ``after_update`` does it after every update and the init starts them normalised
    (PyTorch nn.Linear's default init, then normalised), which is the same sequence.

    ``__call__`` returns float32 scores [B, K], or ``(scores, z)`` with
    ``return_embedding`` (z: the L2-normalised [B, d] projection the queue stores). The
    prototypes run in float32 whatever ``dtype``: the codes take exp(scores / 0.05).
    """

    projector: nn.Module
    num_prototypes: int

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool, return_embedding: bool = False):
        z = self.projector(x, train).astype(jnp.float32)
        z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)  # [B, d]
        scores = nn.Dense(
            self.num_prototypes,
            use_bias=False,
            kernel_init=unit_columns(torch_linear_init),
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            name="prototypes",
        )(z)  # [B, K]
        return (scores, z) if return_embedding else scores
