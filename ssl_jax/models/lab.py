"""CMC's two-view network: RGB -> CIE Lab inside the model, the L channel and the ab
channels each through its own backbone, their features concatenated.

HobbitLong/CMC (train_CMC.py, dataset.py RGB2Lab, models/resnet.py MyResNetsCMC): the
image is converted with skimage's ``rgb2lab`` (sRGB, D65 white, 2-degree observer),
normalised per channel with the mean / std below, then split into L [.., 1] and ab
[.., 2]; ``resnet50v1`` encodes each with a ResNet-50 of half width. Converting in the
model (the input is RGB in [0, 1]: configs set ``input.mean`` 0 and ``input.std`` 1)
keeps every pipeline, evaluation and export RGB, so an exported CMC encoder embeds RGB
images like any other.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

# train_CMC.py: the Lab ranges' midpoints and half-widths (L in [0, 100]; a, b in the
# ranges of sRGB images).
LAB_MEAN = (50.0, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2)
LAB_STD = (50.0, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2)

# skimage.color's sRGB -> XYZ matrix (xyz_from_rgb). The white point is the XYZ of RGB
# white, the matrix's row sums (0.950456, 1, 1.088754): with skimage's rounded D65
# (0.95047, 1, 1.08883) a gray pixel gets |a|, |b| up to 4e-3 instead of 0, a colour cast
# that BatchNorm in the ab tower would amplify on gray images. The two differ by < 5e-3
# in a and b (tests/test_cmc.py), far below one 8-bit step (~0.4 in L).
_XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_WHITE = tuple(sum(row) for row in _XYZ_FROM_RGB)


def rgb_to_lab(rgb: jnp.ndarray) -> jnp.ndarray:
    """CIE L*a*b* of sRGB values in [0, 1], ``[..., 3]`` -> ``[..., 3]`` float32: the sRGB
    transfer curve removed, XYZ scaled by the white of RGB (1, 1, 1), then L = 116 f(Y) - 16,
    a = 500 (f(X) - f(Y)), b = 200 (f(Y) - f(Z)) with f(t) = t^(1/3) above (6/29)^3 and
    7.787 t + 16/116 below (skimage.color.rgb2lab's constants)."""
    rgb = jnp.clip(rgb.astype(jnp.float32), 0.0, 1.0)
    linear = jnp.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = linear @ jnp.asarray(_XYZ_FROM_RGB, jnp.float32).T / jnp.asarray(_WHITE, jnp.float32)
    f = jnp.where(xyz > 0.008856, jnp.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return jnp.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


class LabBackbone(nn.Module):
    """``[B, H, W, 3]`` RGB in [0, 1] -> ``[B, D_l + D_ab]``: normalised Lab, L through
    ``l_net`` and ab through ``ab_net``, features concatenated (L first), which is what
    the paper evaluates (its linear probes read both encoders)."""

    l_net: nn.Module
    ab_net: nn.Module

    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        lab = (rgb_to_lab(x) - jnp.asarray(LAB_MEAN)) / jnp.asarray(LAB_STD)
        features_l = self.l_net(lab[..., :1], train)
        features_ab = self.ab_net(lab[..., 1:], train)
        return jnp.concatenate([features_l, features_ab], axis=-1).astype(jnp.float32)


class TwoViewHead(nn.Module):
    """The concatenated features split in two equal halves, each through its own head:
    ``[B, 2 D]`` -> ``[B, 2, d]`` (view 0: L, view 1: ab)."""

    l_head: nn.Module
    ab_head: nn.Module

    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        features_l, features_ab = jnp.split(x, 2, axis=-1)
        return jnp.stack([self.l_head(features_l, train), self.ab_head(features_ab, train)], axis=1)
