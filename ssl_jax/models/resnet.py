"""ResNet backbones (torchvision v1.5 layout) and a BatchNorm with per-group statistics.

The ResNet follows torchvision's ``resnet.py``: the stride of a down-sampling bottleneck
sits on the 3x3 conv ("ResNet v1.5"), convs have no bias, conv kernels use Kaiming-normal
fan-out init, BN starts at gamma=1 / beta=0, and the 1x1 projection shortcut appears
whenever the stride or the width changes. The classifier ``fc`` is left out: the backbone
returns globally average-pooled features ``[B, D]`` in float32 (D=512 for ResNet-18/34,
2048 for ResNet-50).

``BatchNorm`` adds ``groups``: in training the batch is split into ``groups`` contiguous
chunks, each normalised with its own statistics. Under ``jit`` the code runs in the global
view, so ``groups=1`` is SyncBN over the whole global batch, while ``groups=8`` reproduces
PyTorch's per-GPU BN on "8 GPUs x 32 images" (MoCo's shuffle BN) on any device count.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import einops
import flax.linen as nn
import jax.numpy as jnp

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), i.e. an untruncated
# normal with variance 2 / (k_h * k_w * out_channels).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class BatchNorm(nn.Module):
    """BatchNorm over all axes but the last, with optional per-group batch statistics.

    Attributes:
      groups: number of contiguous chunks of the batch axis normalised independently in
        training (1 = statistics of the whole batch).
      momentum: flax convention, ``running = momentum * running + (1 - momentum) * batch``;
        0.9 is PyTorch's ``momentum=0.1``.
      epsilon: added to the variance.
      use_scale / use_bias: learn gamma / beta (heads need scale-only and affine-free BN).
      scale_init: gamma's init; zeros for the last BN of a residual block when
        ``zero_init_residual``.
      dtype: output dtype (statistics and normalisation are always computed in float32).
    """

    groups: int = 1
    momentum: float = 0.9
    epsilon: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    scale_init: nn.initializers.Initializer = nn.initializers.ones
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        x32 = x.astype(jnp.float32)
        if train:
            y = self._normalise_by_groups(x32, ra_mean, ra_var)
        else:
            y = (x32 - ra_mean.value) * jnp.reciprocal(jnp.sqrt(ra_var.value + self.epsilon))
        if self.use_scale:
            y = y * self.param("scale", self.scale_init, (features,), jnp.float32)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        return y.astype(self.dtype or x.dtype)

    def _normalise_by_groups(
        self, x: jnp.ndarray, ra_mean: nn.Variable, ra_var: nn.Variable
    ) -> jnp.ndarray:
        batch = x.shape[0]
        if batch % self.groups:
            raise ValueError(
                f"BatchNorm: batch size {batch} is not divisible by groups={self.groups}."
            )
        xg = einops.rearrange(x, "(g n) ... -> g n ...", g=self.groups)  # [G, B/G, ..., C]
        reduce_axes = tuple(range(1, xg.ndim - 1))
        mean = jnp.mean(xg, axis=reduce_axes, keepdims=True)  # [G, 1, ..., 1, C]
        # Two-pass variance: E[(x - mean)^2] does not cancel catastrophically like
        # E[x^2] - E[x]^2 does for large activations.
        var = jnp.mean(jnp.square(xg - mean), axis=reduce_axes, keepdims=True)
        y = (xg - mean) * jnp.reciprocal(jnp.sqrt(var + self.epsilon))
        # Like flax, init must not move the running statistics away from (0, 1).
        if not self.is_initializing():
            count = xg[0].size // xg.shape[-1]  # elements per channel in one group
            # PyTorch (per-GPU BN and SyncBN alike) stores the unbiased variance.
            unbiased = var * (count / max(count - 1, 1))
            group_mean = jnp.mean(mean.reshape(self.groups, -1), axis=0)  # [C]
            group_var = jnp.mean(unbiased.reshape(self.groups, -1), axis=0)  # [C]
            m = self.momentum
            ra_mean.value = m * ra_mean.value + (1.0 - m) * group_mean
            ra_var.value = m * ra_var.value + (1.0 - m) * group_var
        return einops.rearrange(y, "g n ... -> (g n) ...")


# Where the convs and the stem's max-pool pad, as each release's framework did:
# - "torch": k // 2 on both sides (PyTorch; MoCo, SimSiam, DINO, SwAV, torchvision).
# - "same": XLA / TensorFlow "SAME", which on an even input to a strided conv or pool pads
#   one pixel less before than after, shifting every window (Haiku's ResNet: BYOL).
# - "same_pool": "torch" in the convs, "SAME" in the max-pool (SimCLR's TF ResNet pads its
#   strided convs explicitly by (k - 1) // 2, as PyTorch does, but not its max-pool).
PADDINGS = ("torch", "same", "same_pool")


def _pad(kernel: int, padding: str = "torch") -> str | tuple[tuple[int, int], tuple[int, int]]:
    if padding == "same":
        return "SAME"
    return ((kernel // 2, kernel // 2), (kernel // 2, kernel // 2))


class _ResidualBlock(nn.Module):
    """Shared attributes of the residual blocks."""

    features: int
    strides: int = 1
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_groups: int = 1
    zero_init_residual: bool = False
    padding: str = "torch"
    dtype: Any = jnp.float32

    def conv(self, features: int, kernel: int, strides: int, name: str) -> nn.Conv:
        return nn.Conv(
            features,
            (kernel, kernel),
            strides=(strides, strides),
            padding=_pad(kernel, self.padding),
            use_bias=False,
            kernel_init=conv_kernel_init,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name=name,
        )

    def bn(self, name: str, last: bool = False) -> BatchNorm:
        zero = last and self.zero_init_residual
        return BatchNorm(
            groups=self.bn_groups,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            scale_init=nn.initializers.zeros if zero else nn.initializers.ones,
            dtype=self.dtype,
            name=name,
        )

    def shortcut(self, x: jnp.ndarray, out_features: int, train: bool) -> jnp.ndarray:
        if self.strides == 1 and x.shape[-1] == out_features:
            return x
        x = self.conv(out_features, 1, self.strides, "downsample_conv")(x)
        return self.bn("downsample_bn")(x, train)


class BasicBlock(_ResidualBlock):
    """Two 3x3 convs (ResNet-18/34); output width = ``features``."""

    expansion = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        residual = self.shortcut(x, self.features, train)
        y = self.conv(self.features, 3, self.strides, "conv1")(x)
        y = nn.relu(self.bn("bn1")(y, train))
        y = self.conv(self.features, 3, 1, "conv2")(y)
        y = self.bn("bn2", last=True)(y, train)
        return nn.relu(y + residual)


class Bottleneck(_ResidualBlock):
    """1x1 -> 3x3 (strided, v1.5) -> 1x1 convs (ResNet-50); output width = 4 * features."""

    expansion = 4

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        out = self.features * self.expansion
        residual = self.shortcut(x, out, train)
        y = self.conv(self.features, 1, 1, "conv1")(x)
        y = nn.relu(self.bn("bn1")(y, train))
        y = self.conv(self.features, 3, self.strides, "conv2")(y)
        y = nn.relu(self.bn("bn2")(y, train))
        y = self.conv(out, 1, 1, "conv3")(y)
        y = self.bn("bn3", last=True)(y, train)
        return nn.relu(y + residual)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}
STEMS = ("imagenet", "cifar")


class ResNet(nn.Module):
    """ResNet backbone returning pooled features ``[B, width * 8 * expansion]`` in float32.

    Attributes:
      stage_sizes: residual blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
      block: 'basic' or 'bottleneck'.
      width: channels of the stem and the first stage (64 in torchvision); stage i uses
        ``width * 2**i``.
      stem: 'imagenet' (7x7/2 conv + 3x3/2 max-pool) or 'cifar' (3x3/1 conv, no pool).
      bn_groups: passed to every BatchNorm (see ``BatchNorm.groups``).
      zero_init_residual: gamma=0 in the last BN of each block, so every block starts as
        the identity (SimCLR's TF ResNet; torchvision's default is False).
      padding: one of ``PADDINGS`` (how the release's framework padded).
      dtype: compute dtype; parameters and BN statistics stay float32.
    """

    stage_sizes: Sequence[int]
    block: str = "basic"
    width: int = 64
    stem: str = "imagenet"
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_groups: int = 1
    zero_init_residual: bool = False
    padding: str = "torch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        x = self._stem(x.astype(self.dtype), train)
        block_cls = BLOCKS[self.block]
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                x = block_cls(
                    features=self.width * 2**i,
                    # torchvision: stage 1 keeps the resolution (the stem already pooled).
                    strides=2 if i > 0 and j == 0 else 1,
                    bn_momentum=self.bn_momentum,
                    bn_epsilon=self.bn_epsilon,
                    bn_groups=self.bn_groups,
                    zero_init_residual=self.zero_init_residual,
                    padding=self.padding,
                    dtype=self.dtype,
                    name=f"layer{i + 1}_{j}",
                )(x, train)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # [B, D]

    def _stem(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        if self.stem not in STEMS:
            raise ValueError(f"Unknown stem {self.stem!r}; valid stems: {list(STEMS)}.")
        if self.padding not in PADDINGS:
            raise ValueError(f"Unknown padding {self.padding!r}; valid values: {PADDINGS}.")
        kernel, strides = (7, 2) if self.stem == "imagenet" else (3, 1)
        x = nn.Conv(
            self.width,
            (kernel, kernel),
            strides=(strides, strides),
            padding=_pad(kernel, self.padding),
            use_bias=False,
            kernel_init=conv_kernel_init,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="conv1",
        )(x)
        x = BatchNorm(
            groups=self.bn_groups,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            dtype=self.dtype,
            name="bn1",
        )(x, train)
        x = nn.relu(x)
        if self.stem == "imagenet":
            pool = "SAME" if self.padding in ("same", "same_pool") else ((1, 1), (1, 1))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=pool)
        return x
