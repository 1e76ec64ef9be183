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
