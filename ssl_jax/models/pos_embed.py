"""The ViTs' position tables: fixed 2-D sin-cos (MoCo v3's and MAE's layouts) and the
resize of a learned table to another patch grid (see ``vit.py``'s docstring)."""

from __future__ import annotations

import math

import einops
import jax
import jax.numpy as jnp
import numpy as np

# model.vit.pos_embed -> sincos_pos_embed's layout.
SINCOS_LAYOUTS = {"sincos": "moco_v3", "sincos_mae": "mae"}


def sincos_pos_embed(
    width: int, grid_h: int, grid_w: int, temperature: float = 10000.0, layout: str = "moco_v3"
) -> np.ndarray:
    """MoCo v3's fixed 2-D sin-cos embedding ``[1 + grid_h * grid_w, width]`` (class token
    row zero); token ``r * grid_w + c`` encodes the row ``r`` in the first half, or, with
    ``layout="mae"``, the column ``c`` (MAE's ``get_2d_sincos_pos_embed``)."""
    if width % 4:
        raise ValueError(f"sin-cos position embedding needs width % 4 == 0, got width={width}.")
    omega = 1.0 / temperature ** (np.arange(width // 4, dtype=np.float64) / (width // 4))
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    out_r = np.outer(rows.reshape(-1), omega)  # [N, D/4]
    out_c = np.outer(cols.reshape(-1), omega)  # [N, D/4]
    row_half, col_half = [np.sin(out_r), np.cos(out_r)], [np.sin(out_c), np.cos(out_c)]
    if layout not in ("moco_v3", "mae"):
        raise ValueError(f"Unknown sin-cos layout {layout!r}; valid: 'moco_v3', 'mae'.")
    patch = np.concatenate(row_half + col_half if layout == "moco_v3" else col_half + row_half, 1)
    return np.concatenate([np.zeros((1, width)), patch]).astype(np.float32)  # [1+N, D]


def interpolate_pos_embed(pos_embed: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """A learned ``[1 + n*n, D]`` embedding for a ``grid = (h, w)`` patch grid: the class
    row kept, the ``n x n`` patch part resized bicubically (DINO's
    ``interpolate_pos_encoding``); returned unchanged when the grid already matches."""
    num_patches = pos_embed.shape[0] - 1
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"learned pos_embed has {num_patches} patch rows, not a square grid.")
    if tuple(grid) == (side, side):
        return pos_embed
    patch = einops.rearrange(pos_embed[1:], "(h w) d -> h w d", h=side)
    # antialias=False: PyTorch's F.interpolate does not low-pass filter when shrinking.
    patch = jax.image.resize(patch, (*grid, patch.shape[-1]), "bicubic", antialias=False)
    return jnp.concatenate([pos_embed[:1], einops.rearrange(patch, "h w d -> (h w) d")])
