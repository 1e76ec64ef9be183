"""Masked autoencoder: a ViT encoder on the visible patches and a light decoder.

He et al., "Masked Autoencoders Are Scalable Vision Learners", arXiv:2111.06377; reference
code facebookresearch/mae ``models_mae.py`` (``MaskedAutoencoderViT``). Symbols: N patches
of p x p x 3 pixels, mask ratio r, K = int(N (1 - r)) visible patches, encoder width D,
decoder width Dd.

- ``random_masking``: per-sample shuffle by uniform noise (``torch.rand(N, L)``), keep the
  first K of ``ids_shuffle = argsort(noise)``; ``ids_restore = argsort(ids_shuffle)``;
  binary mask with 0 = kept, 1 = removed, in the original patch order.
- Encoder (``forward_encoder``): ``ViT.encode_visible`` (patch embed, + position rows,
  gather the kept tokens, prepend the class token, blocks, norm) -> ``[B, 1+K, D]``.
- Decoder (``forward_decoder``): ``decoder_embed`` Linear(D -> Dd), one shared learned
  ``mask_token [1, Dd]`` appended N - K times, unshuffled with ``ids_restore``, fixed 2-D
  sin-cos ``decoder_pos_embed`` (class row zero), ``decoder_depth`` ViT blocks of
  ``decoder_heads`` heads, ``decoder_norm``, ``decoder_pred`` Linear(Dd -> p*p*3); the class
  token is dropped -> ``[B, N, p*p*3]`` in ``patchify`` order.
- ``patchify``: ``imgs.reshape(N, 3, h, p, w, p)``, ``einsum('nchpwq->nhwpqc')`` in the
  reference, i.e. ``b (h p) (w q) c -> b (h w) (p q c)`` for NHWC images.

Masking randomness: ``__call__`` takes ``noise [B, N]`` explicitly, or draws it from the
``'masking'`` RNG (``rngs={'masking': key}``). With neither, it fails, except under
``model.init`` (only the ``'params'`` RNG is given there), where zero noise keeps the
first K patches: the shapes, and so every parameter, are the same for any noise.

``embed(x)`` is the full, unmasked encoder's pooled feature ``[B, D]`` (``ViT.__call__``,
``model.vit.pool``): what the kNN monitor and the linear probe read. The encoder sits under
``params['backbone']`` as in every other method, so a supervised fine-tune loads it as is.

Initialisation as ``MaskedAutoencoderViT.initialize_weights``: decoder Linear layers
xavier-uniform with zero bias, LayerNorm ones / zeros, ``mask_token`` normal std 0.02.
Deliberate differences:

- The encoder is the project's ViT with MoCo v3's init (``vit.py``): class token normal std
  1e-6 (MAE: 0.02), and q, k, v initialised as three D x D matrices (MAE: xavier-uniform over
  the whole ``[3D, D]`` qkv Linear, also in the decoder blocks here, which reuse
  ``vit.Block``). Both are small changes of scale at init.
- The sin-cos tables come from ``vit.sincos_pos_embed`` (MoCo v3's), which puts the row
  half first; MAE's ``get_2d_sincos_pos_embed`` puts the column half first (same
  frequencies). ``model.vit.pos_embed="sincos_mae"`` uses MAE's layout in the encoder and
  the decoder (``ssl-jax import --format=mae`` sets it: MAE's weights need it).
"""

from __future__ import annotations

from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.models import vit as vit_lib

# models_mae.py: torch.nn.init.normal_(self.mask_token, std=.02)
mask_token_init = nn.initializers.normal(0.02)


def _dense(features: int, dtype: Any) -> nn.Dense:
    # models_mae._init_weights: xavier_uniform_ weight, zero bias, for every nn.Linear.
    return nn.Dense(
        features,
        kernel_init=vit_lib.dense_kernel_init,
        bias_init=nn.initializers.zeros,
        dtype=dtype,
        param_dtype=jnp.float32,
    )


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """``[B, H, W, 3] -> [B, N, p*p*3]``, N = (H/p)(W/p) row-major; models_mae.patchify's
    ``(p, q, c)`` order inside a patch."""
    p = patch_size
    if images.shape[1] % p or images.shape[2] % p:
        raise ValueError(f"image size {images.shape[1:3]} is not divisible by patch_size={p}.")
    return einops.rearrange(images, "b (h p) (w q) c -> b (h w) (p q c)", p=p, q=p)


def unpatchify(
    patches: jax.Array, patch_size: int, grid: tuple[int, int] | None = None
) -> jax.Array:
    """Inverse of ``patchify``: ``[B, N, p*p*3] -> [B, h*p, w*p, 3]``; a square grid unless
    ``grid = (h, w)`` is given (models_mae.unpatchify assumes square)."""
    p = patch_size
    n = patches.shape[1]
    if grid is None:
        h = int(round(n**0.5))
        if h * h != n:
            raise ValueError(f"{n} patches are not a square grid; pass grid=(h, w).")
        grid = (h, h)
    return einops.rearrange(
        patches, "b (h w) (p q c) -> b (h p) (w q) c", h=grid[0], w=grid[1], p=p, q=p
    )


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """K = int(N * (1 - r)), models_mae.random_masking's ``len_keep`` (truncation)."""
    return int(num_patches * (1 - mask_ratio))


def random_masking(noise: jax.Array, mask_ratio: float):
    """models_mae.random_masking from its noise ``[B, N]``: small noise is kept.

    Returns ``(ids_keep [B, K], mask [B, N] float32 with 0 = kept / 1 = removed in the
    original order, ids_restore [B, N])``.
    """
    n = noise.shape[1]
    keep = num_visible(n, mask_ratio)
    ids_shuffle = jnp.argsort(noise, axis=1)  # ascend: small is keep
    ids_restore = jnp.argsort(ids_shuffle, axis=1)
    ids_keep = ids_shuffle[:, :keep]  # [B, K]
    # The binary mask in shuffled order (K zeros, then ones), unshuffled.
    shuffled = (jnp.arange(n) >= keep).astype(jnp.float32)  # [N]
    mask = jnp.take_along_axis(jnp.broadcast_to(shuffled, noise.shape), ids_restore, axis=1)
    return ids_keep, mask, ids_restore


class MAE(nn.Module):
    """``__call__(x, train, noise=None, mask_ratio=None)`` ->
    ``{'pred' [B, N, p*p*3], 'mask' [B, N], 'latent' [B, 1+K, D]}``, all float32.

    Attributes:
      backbone: the ViT encoder (params under ``'backbone'``).
      decoder_width, decoder_depth, decoder_heads: Dd, decoder blocks, their heads
        (ViT-B/L reference: 512, 8, 16).
      mask_ratio: r, the fraction of patches removed (0.75).
      mlp_ratio: the decoder blocks' MLP ratio (4 in the reference).
      dtype: the decoder's compute dtype (params float32; outputs float32).

    The decoder blocks are rematerialised when ``backbone.remat`` is set.
    """

    backbone: vit_lib.ViT
    decoder_width: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    mask_ratio: float = 0.75
    mlp_ratio: int = 4
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"MAE mask_ratio={self.mask_ratio} must be in [0, 1).")
        if self.decoder_depth < 1:
            raise ValueError(f"MAE decoder_depth={self.decoder_depth} must be >= 1.")
        if self.decoder_width % self.decoder_heads or self.decoder_width % 4:
            raise ValueError(
                f"MAE decoder_width={self.decoder_width} must be divisible by "
                f"decoder_heads={self.decoder_heads} and by 4 (sin-cos position embedding)."
            )
        super().__post_init__()

    def setup(self) -> None:
        self.decoder_embed = _dense(self.decoder_width, self.dtype)
        self.mask_token = self.param(
            "mask_token", mask_token_init, (1, self.decoder_width), jnp.float32
        )
        # Rematerialised when the encoder's blocks are (model.vit.remat).
        block = vit_lib.block_class(self.backbone.remat)
        self.decoder_blocks = [
            block(self.decoder_heads, self.mlp_ratio, 0.0, self.dtype)
            for _ in range(self.decoder_depth)
        ]
        self.decoder_norm = vit_lib._layer_norm(self.dtype)
        p = self.backbone.patch_size
        self.decoder_pred = _dense(p * p * 3, self.dtype)

    def __call__(
        self,
        x: jnp.ndarray,
        train: bool,
        noise: jnp.ndarray | None = None,
        mask_ratio: float | None = None,
    ) -> dict[str, jnp.ndarray]:
        p = self.backbone.patch_size
        grid = (x.shape[1] // p, x.shape[2] // p)
        n = grid[0] * grid[1]
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        if noise is None:
            noise = self._noise((x.shape[0], n))
        if noise.shape != (x.shape[0], n):
            raise ValueError(f"MAE noise must be [B, N] = {(x.shape[0], n)}, got {noise.shape}.")
        ids_keep, mask, ids_restore = random_masking(noise, ratio)
        latent = self.backbone.encode_visible(x, ids_keep, train)  # [B, 1+K, D]
        pred = self.decode(latent, ids_restore, grid, train)  # [B, N, p*p*3]
        return {"pred": pred, "mask": mask, "latent": latent}

    def decode(
        self, latent: jnp.ndarray, ids_restore: jnp.ndarray, grid: tuple[int, int], train: bool
    ) -> jnp.ndarray:
        """models_mae.forward_decoder: ``[B, 1+K, D]`` -> ``[B, N, p*p*3]`` float32."""
        y = self.decoder_embed(latent.astype(self.dtype))  # [B, 1+K, Dd]
        b, n = ids_restore.shape
        masked = jnp.broadcast_to(
            self.mask_token.astype(self.dtype), (b, n + 1 - y.shape[1], self.decoder_width)
        )  # [B, N-K, Dd]
        tokens = jnp.concatenate([y[:, 1:], masked], axis=1)  # [B, N, Dd], shuffled order
        tokens = jnp.take_along_axis(tokens, ids_restore[..., None], axis=1)  # unshuffle
        y = jnp.concatenate([y[:, :1], tokens], axis=1)  # [B, 1+N, Dd]
        # Fixed; in MAE's own layout when the encoder uses it (imported MAE weights).
        layout = "mae" if self.backbone.pos_embed == "sincos_mae" else "moco_v3"
        pos = vit_lib.sincos_pos_embed(self.decoder_width, *grid, layout=layout)  # [1+N, Dd]
        y = y + jnp.asarray(pos).astype(self.dtype)
        for block in self.decoder_blocks:
            y, _ = block(y, train)
        y = self.decoder_pred(self.decoder_norm(y))  # [B, 1+N, p*p*3]
        return y[:, 1:].astype(jnp.float32)  # drop the class token

    def embed(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """The full, unmasked encoder's pooled features ``[B, D]`` float32."""
        return self.backbone(x, train).astype(jnp.float32)

    def _noise(self, shape: tuple[int, int]) -> jnp.ndarray:
        if self.has_rng("masking"):
            return jax.random.uniform(self.make_rng("masking"), shape)  # torch.rand
        if self.is_initializing():
            return jnp.zeros(shape, jnp.float32)  # shapes only: keeps the first K patches
        raise ValueError(
            "MAE needs masking noise: pass noise=[B, N] or rngs={'masking': key} to apply."
        )
