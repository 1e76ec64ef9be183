"""Vision Transformer backbone shared by MoCo v3, DINO and (later) MAE.

The architecture is the ViT of Dosovitskiy et al. (arXiv:2010.11929) as written in timm's
``vision_transformer.py`` and used by MoCo v3 (``vits.py``, arXiv:2104.02057), DINO
(``vision_transformer.py``, arXiv:2104.14294) and MAE (``models_vit.py``,
arXiv:2111.06377): a patch projection (conv with kernel = stride = patch, here einops
patchify + matmul with the same ``(p, p, 3, D)`` kernel), a class token, a position
embedding, ``depth`` pre-norm blocks ``x += DropPath(MHSA(LN(x)))``,
``x += DropPath(MLP(LN(x)))`` (LayerNorm eps 1e-6, qkv bias, MLP ratio 4, exact erf GELU as
PyTorch ``nn.GELU``), and a final LayerNorm. No classifier: ``__call__`` returns pooled
features ``[B, D]`` in float32, ``tokens`` the normalised class and patch tokens,
``encode_visible`` MAE's encoder on a subset of the patch tokens (``ids_keep``).

Position embeddings (``pos_embed``):

- ``"sincos"``: MoCo v3's ``build_2d_sincos_position_embedding`` (temperature 10000, a zero
  vector for the class token), computed for whatever patch grid the input has; not a
  parameter. Token ``r * W + c`` (row-major, as the conv output is flattened) gets
  ``[sin(r w), cos(r w), sin(c w), cos(c w)]`` with ``w_k = 10000^(-k / (D/4))``: MoCo v3's
  ``torch.meshgrid(grid_w, grid_h)`` ('ij' indexing) puts the slow (row) index in the first
  half. MAE's ``get_2d_sincos_pos_embed`` has the same frequencies with the halves swapped
  (column first).
- ``"sincos_mae"``: that MAE layout, ``[sin(c w), cos(c w), sin(r w), cos(r w)]``; what
  MAE's released weights were trained with (``ssl-jax import`` picks it for them), and then
  also the MAE decoder's table (``models/mae.py``).
- ``"learned"``: DINO's parameter ``[1 + N, D]`` for the ``image_size`` grid, trunc-normal
  std 0.02; another grid (DINO's 96-px local crops) gets the patch part resized bicubically
  like DINO's ``interpolate_pos_encoding``.

Initialisation follows MoCo v3's ``VisionTransformerMoCo.__init__``: Dense layers
xavier-uniform with zero bias, qkv xavier-uniform as if q, k, v were three ``D x D``
matrices (limit ``sqrt(6 / (3D/3 + D))``), patch kernel xavier-uniform over its flattened
``(p*p*3, D)`` view with zero bias, class token normal std 1e-6, LayerNorm ones / zeros.

Stochastic depth: per-sample drop of each residual branch, rate linear from 0 at the first
block to ``drop_path`` at the last (timm / DINO ``torch.linspace(0, drop_path_rate,
depth)``), scaled by ``1 / keep`` in training; it draws from the ``'dropout'`` RNG only
when ``train`` and the block's rate is > 0.

``frozen_patch_embed`` is MoCo v3's ``stop_grad_conv1``: the patch projection stays at its
random init. Here ``stop_gradient`` on its params gives them zero gradient, and the
optimizer never updates params matching ``optim.frozen_params=('patch_embed',)`` (so even
weight decay leaves them alone).

The last block's attention probabilities ``[B, heads, 1+N, 1+N]`` (float32) are sown into
the ``'intermediates'`` collection as ``'attention'`` for DINO-style attention maps:
``model.apply(variables, x, train=False, mutable=['intermediates'])``.

Differences from the reference implementations:

- ``vit_small`` has 6 heads (DINO, timm); MoCo v3's ``vits.py`` uses 12 heads of width 32
  (same parameter count). Build ``ViT(width=384, depth=12, heads=12)`` for that variant.
- DINO initialises Dense kernels and the class token with trunc-normal std 0.02 and MAE the
  class token with normal std 0.02; every variant here uses MoCo v3's init.
- ``pool="gap"`` averages the patch tokens before the final norm, as MAE's
  ``global_pool``, but reuses the final ``norm`` instead of MAE's separate ``fc_norm``
  (freshly initialised for fine-tuning), so both pools share one parameter tree.
- The learned-embedding resize is ``jax.image.resize(method='bicubic', antialias=False)``:
  Keys' cubic with a=-0.5 sampled at the exact size ratio, where DINO's ``F.interpolate``
  uses a=-0.75 and ``scale_factor = (grid + 0.1) / N**0.5``; values differ slightly.
- Class token and learned position embedding are stored as ``[1, D]`` and ``[1 + N, D]``
  (timm: ``[1, 1, D]``, ``[1, 1 + N, D]``); being 2-D they get weight decay under the
  rank-based ``optim.decay_mask``, as in DINO (whose rule is ``ndim == 1``).
"""

from __future__ import annotations

import math
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.models.pos_embed import SINCOS_LAYOUTS, interpolate_pos_embed, sincos_pos_embed

# name -> (width D, depth, heads); timm / DINO sizes, MLP ratio 4 for all.
VITS: dict[str, tuple[int, int, int]] = {
    "vit_micro": (32, 2, 2),  # ours: CPU smoke tests and end-to-end checks only
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
    "vit_huge": (1280, 32, 16),  # MAE's ViT-H/14
}
POS_EMBEDS = ("sincos", "sincos_mae", "learned")
POOLS = ("cls", "gap")
LN_EPSILON = 1e-6

dense_kernel_init = nn.initializers.xavier_uniform()
# xavier-uniform over the flattened (p*p*3, D) kernel: fan_in = p*p*3, fan_out = D (flax's
# conv default would count the receptive field in fan_out too).
patch_kernel_init = nn.initializers.variance_scaling(
    1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=3
)
# timm's trunc_normal_(std=.02) cuts at +-2 absolute, i.e. +-100 std: effectively normal.
pos_embed_init = nn.initializers.truncated_normal(0.02, lower=-2.0 / 0.02, upper=2.0 / 0.02)
cls_token_init = nn.initializers.normal(1e-6)


def qkv_kernel_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """MoCo v3: xavier-uniform of each of q, k, v on its own, limit sqrt(6 / (D + 3D/3))."""
    fan_in, fan_out = shape  # [D, 3D]
    limit = math.sqrt(6.0 / (fan_in + fan_out // 3))
    return jax.random.uniform(key, shape, dtype, -limit, limit)


def _dense(features: int, dtype: Any, name: str, kernel_init=dense_kernel_init) -> nn.Dense:
    return nn.Dense(
        features,
        kernel_init=kernel_init,
        bias_init=nn.initializers.zeros,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


def _layer_norm(dtype: Any, name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LN_EPSILON, dtype=dtype, param_dtype=jnp.float32, name=name)


class PatchEmbed(nn.Module):
    """Non-overlapping ``p x p`` patches -> ``[B, H/p, W/p, D]``; the kernel has a conv's
    ``(p, p, C, D)`` layout. ``frozen`` stops the gradient to kernel and bias."""

    patch_size: int
    width: int
    frozen: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        p = self.patch_size
        shape = (p, p, x.shape[-1], self.width)
        kernel = self.param("kernel", patch_kernel_init, shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.width,), jnp.float32)
        if self.frozen:
            kernel, bias = jax.lax.stop_gradient(kernel), jax.lax.stop_gradient(bias)
        patches = einops.rearrange(x, "b (gh p1) (gw p2) c -> b gh gw (p1 p2 c)", p1=p, p2=p)
        kernel = einops.rearrange(kernel, "p1 p2 c d -> (p1 p2 c) d").astype(self.dtype)
        return patches.astype(self.dtype) @ kernel + bias.astype(self.dtype)  # [B, gh, gw, D]


class DropPath(nn.Module):
    """Stochastic depth: in training each sample's branch is zeroed with probability
    ``rate`` and kept ones are scaled by ``1 / (1 - rate)`` (DINO / timm ``drop_path``)."""

    rate: float

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        if not train or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # one draw per sample
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        return x * (mask / keep).astype(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention; returns ``(out [B, T, D], probs [B, heads, T, T] f32)``."""

    heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        width = x.shape[-1]
        qkv = _dense(3 * width, self.dtype, "qkv", qkv_kernel_init)(x)  # [B, T, 3D]
        # timm's reshape(B, N, 3, heads, D/heads): q, k, v blocks, then heads.
        q, k, v = einops.rearrange(qkv, "b t (three h e) -> three b h t e", three=3, h=self.heads)
        # Logits accumulate and stay in float32 under bfloat16 compute (a bfloat16 logit of
        # magnitude ~30 is only known to +-0.06 before the softmax); the softmax is float32 too,
        # so rows sum to 1. Float32 compute is unchanged.
        logits = jnp.einsum("bhqe,bhke->bhqk", q, k, preferred_element_type=jnp.float32)
        probs = jax.nn.softmax(logits * (width // self.heads) ** -0.5, axis=-1)  # [B, h, T, T]
        out = jnp.einsum("bhqk,bhke->bhqe", probs.astype(self.dtype), v)
        out = einops.rearrange(out, "b h t e -> b t (h e)")  # [B, T, D]
        return _dense(width, self.dtype, "proj")(out), probs


class Mlp(nn.Module):
    """Dense(ratio * D) -> exact GELU -> Dense(D)."""

    mlp_ratio: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        width = x.shape[-1]
        x = _dense(self.mlp_ratio * width, self.dtype, "fc1")(x)
        x = nn.gelu(x, approximate=False)  # PyTorch nn.GELU() is the erf form
        return _dense(width, self.dtype, "fc2")(x)


class Block(nn.Module):
    """Pre-norm transformer block; returns ``(x, attention probabilities)``."""

    heads: int
    mlp_ratio: int = 4
    drop_path: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
        # One DropPath module called twice: each call draws its own mask, as DINO's.
        drop = DropPath(self.drop_path, name="drop")
        y, probs = Attention(self.heads, self.dtype, name="attn")(
            _layer_norm(self.dtype, "norm1")(x)
        )
        x = x + drop(y, train)
        y = Mlp(self.mlp_ratio, self.dtype, name="mlp")(_layer_norm(self.dtype, "norm2")(x))
        return x + drop(y, train), probs


def block_class(remat: bool) -> type[Block]:
    """``Block``, or with ``remat`` its rematerialised version (``nn.remat``): only each
    block's input is kept for the backward pass and the block's activations (qkv, the
    ``[B, heads, T, T]`` attention, the 4D-wide MLP hidden layer) are recomputed, trading
    about one more forward pass for activation memory that no longer grows with depth.
    ``train`` (argument 2, ``self`` counted) is static: it selects Python branches.
    Parameter names are unchanged: modules built in ``setup`` are named by attribute."""
    return nn.remat(Block, static_argnums=(2,)) if remat else Block


class ViT(nn.Module):
    """Vision Transformer returning float32 pooled features ``[B, width]``.

    Attributes:
      width, depth, heads: embedding dim D, number of blocks, attention heads (``VITS``).
      patch_size: side of the square patches; must divide the input's height and width.
      image_size: training resolution; sizes the ``"learned"`` position-embedding grid.
      mlp_ratio: MLP hidden width / D.
      pos_embed: ``"sincos"`` / ``"sincos_mae"`` (fixed, any grid; MoCo v3's or MAE's
        layout) or ``"learned"`` (interpolated to the grid).
      drop_path: stochastic-depth rate of the last block (linear from 0 at the first).
      frozen_patch_embed: stop the gradient to the ``patch_embed`` params (MoCo v3).
      pool: ``"cls"`` (class token after the final norm) or ``"gap"`` (final norm of the
        mean patch token, MAE's global pool).
      dtype: compute dtype; params are float32.
      remat: rematerialise every block in the backward pass (``block_class``); same
        values and gradients, less activation memory, more compute.
    """

    width: int
    depth: int
    heads: int
    patch_size: int = 16
    image_size: int = 224
    mlp_ratio: int = 4
    pos_embed: str = "sincos"
    drop_path: float = 0.0
    frozen_patch_embed: bool = False
    pool: str = "cls"
    dtype: Any = jnp.float32
    remat: bool = False

    def __post_init__(self) -> None:
        # Validate at construction so a bad config fails before any tracing.
        if self.pos_embed not in POS_EMBEDS:
            raise ValueError(f"Unknown ViT pos_embed {self.pos_embed!r}; valid: {POS_EMBEDS}.")
        if self.pool not in POOLS:
            raise ValueError(f"Unknown ViT pool {self.pool!r}; valid: {POOLS}.")
        if self.depth < 1:
            raise ValueError(f"ViT depth={self.depth} must be >= 1.")
        if self.width % self.heads:
            raise ValueError(f"ViT width={self.width} is not divisible by heads={self.heads}.")
        if self.pos_embed in SINCOS_LAYOUTS and self.width % 4:
            raise ValueError(f"sin-cos pos_embed needs width % 4 == 0, got width={self.width}.")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"ViT drop_path={self.drop_path} must be in [0, 1).")
        if self.pos_embed == "learned" and self.image_size % self.patch_size:
            raise ValueError(
                f"ViT image_size={self.image_size} is not divisible by "
                f"patch_size={self.patch_size} (learned pos_embed grid)."
            )
        super().__post_init__()

    def setup(self) -> None:
        self.patch_embed = PatchEmbed(
            self.patch_size, self.width, frozen=self.frozen_patch_embed, dtype=self.dtype
        )
        self.cls_token = self.param("cls_token", cls_token_init, (1, self.width), jnp.float32)
        if self.pos_embed == "learned":
            num_patches = (self.image_size // self.patch_size) ** 2
            shape = (1 + num_patches, self.width)
            self.learned_pos_embed = self.param("pos_embed", pos_embed_init, shape, jnp.float32)
        rates = np.linspace(0.0, self.drop_path, self.depth)  # torch.linspace(0, r, depth)
        block = block_class(self.remat)
        self.blocks = [block(self.heads, self.mlp_ratio, float(rate), self.dtype) for rate in rates]
        self.norm = _layer_norm(self.dtype)

    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        tokens = self._encode(x, train)  # [B, 1+N, D], before the final norm
        if self.pool == "cls":
            pooled = tokens[:, 0]  # LayerNorm is per token: norm(x)[:, 0] == norm(x[:, 0])
        else:
            pooled = jnp.mean(tokens[:, 1:].astype(jnp.float32), axis=1)  # [B, D]
        return self.norm(pooled).astype(jnp.float32)  # [B, D]

    def tokens(self, x: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
        """``{'cls': [B, D], 'patch_tokens': [B, N, D]}``, float32, after the final norm;
        ``model.apply(variables, x, method=ViT.tokens)``."""
        tokens = self.norm(self._encode(x, train)).astype(jnp.float32)  # [B, 1+N, D]
        return {"cls": tokens[:, 0], "patch_tokens": tokens[:, 1:]}

    def encode_visible(
        self, x: jnp.ndarray, ids_keep: jnp.ndarray, train: bool = False
    ) -> jnp.ndarray:
        """MAE's ``forward_encoder`` after the masking: the normalised class token and the
        ``K`` visible patch tokens ``ids_keep [B, K]`` (indices into the row-major patch
        grid), ``[B, 1+K, D]`` float32.

        As models_mae.py (He et al., arXiv:2111.06377): every patch is embedded and gets
        its position row *before* the masking (``x + pos_embed[:, 1:]``), the kept tokens
        are gathered, and the class token (plus its position row) is prepended; the blocks
        then run on 1 + K tokens only, which is where MAE's ~(1 - r) encoder cost comes
        from. Same parameters as ``__call__``.
        """
        patches = self._patchify_embed(x)  # [B, gh, gw, D]
        grid = patches.shape[1:3]
        tokens = einops.rearrange(patches, "b gh gw d -> b (gh gw) d")  # [B, N, D]
        pos = self._position_embedding(grid).astype(self.dtype)  # [1+N, D]
        tokens = tokens + pos[1:]
        if ids_keep.ndim != 2 or ids_keep.shape[0] != tokens.shape[0]:
            raise ValueError(
                f"ids_keep must be [B, K] with B={tokens.shape[0]}, got shape {ids_keep.shape}."
            )
        tokens = jnp.take_along_axis(tokens, ids_keep[..., None], axis=1)  # [B, K, D]
        cls = self.cls_token.astype(self.dtype) + pos[:1]  # [1, D]
        cls = jnp.broadcast_to(cls, (tokens.shape[0], 1, self.width))
        tokens = jnp.concatenate([cls, tokens], axis=1)  # [B, 1+K, D]
        for block in self.blocks:
            tokens, _ = block(tokens, train)
        return self.norm(tokens).astype(jnp.float32)  # [B, 1+K, D]

    def _patchify_embed(self, x: jnp.ndarray) -> jnp.ndarray:
        height, width = x.shape[1:3]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"ViT: image size {height}x{width} is not divisible by "
                f"patch_size={self.patch_size}."
            )
        return self.patch_embed(x)  # [B, gh, gw, D]

    def _encode(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        batch = x.shape[0]
        patches = self._patchify_embed(x)  # [B, gh, gw, D]
        grid = patches.shape[1:3]
        x = einops.rearrange(patches, "b gh gw d -> b (gh gw) d")  # [B, N, D]
        cls = jnp.broadcast_to(self.cls_token.astype(self.dtype), (batch, 1, self.width))
        x = jnp.concatenate([cls, x], axis=1)  # [B, 1+N, D]
        x = x + self._position_embedding(grid).astype(self.dtype)
        probs = None
        for block in self.blocks:
            x, probs = block(x, train)
        # Only the last block's map: DINO's get_last_selfattention, and memory stays small.
        self.sow("intermediates", "attention", probs)  # [B, heads, 1+N, 1+N]
        return x

    def _position_embedding(self, grid: tuple[int, int]) -> jnp.ndarray:
        if self.pos_embed in SINCOS_LAYOUTS:
            table = sincos_pos_embed(self.width, *grid, layout=SINCOS_LAYOUTS[self.pos_embed])
            return jnp.asarray(table)  # [1+N, D]
        return interpolate_pos_embed(self.learned_pos_embed, grid)  # [1+N, D]
