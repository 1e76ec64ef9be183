"""DINO's self-attention maps: the class token's attention over the patches, per head.

As facebookresearch/dino ``visualize_attention.py`` (Caron et al., arXiv:2104.14294,
Fig. 1 and Fig. 3): the last block's attention probabilities of the class token (query
row 0) to the patch tokens (key columns 1..N), one ``gh x gw`` map per head, upsampled to
the image by repeating each patch (``F.interpolate(..., mode="nearest")``). The
thresholded mask keeps, per head, the most-attended patches that together hold ``keep``
(0.6 in the paper's figures) of the head's attention mass: sort the patches' attention,
normalise it to sum 1, take the cumulative sum and keep the patches above ``1 - keep``.

The ViT (``ssl_jax.models.vit``) sows that attention into the ``'intermediates'``
collection; any module containing exactly one such ViT works (a bare backbone from
``ssl_jax.export.load_exported`` or an ``Encoder``).

Differences from the reference script:

- The reference renormalises the sorted values over the patches only (the class token's
  attention to itself is dropped), and so does ``mass_threshold_mask``; the raw maps
  returned by ``class_token_attention`` are the probabilities as the softmax gave them
  (they sum to 1 minus the class-to-class weight).
- The reference processes one image; these functions take a batch.
"""

from __future__ import annotations

import math
from typing import Any

import einops
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

KEEP_MASS = 0.6  # visualize_attention.py --threshold, the paper's figures


def _sown_attention(intermediates: Any) -> jax.Array:
    """The one ``.../attention`` entry of the 'intermediates' collection."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(intermediates))
    found = [(path, value) for path, value in flat.items() if path[-1] == "attention"]
    if len(found) != 1:
        paths = ["/".join(p) for p, _ in found]
        raise ValueError(
            f"expected one ViT attention map in the 'intermediates' collection, found "
            f"{len(found)} ({paths}); the model must contain exactly one ssl_jax ViT."
        )
    (_, value) = found[0]
    return value[-1] if isinstance(value, tuple) else value  # sow stores a tuple


def patch_grid(image_shape: tuple[int, int], num_patches: int) -> tuple[int, int, int]:
    """``(gh, gw, patch_size)`` of square patches tiling ``H x W`` with ``num_patches``."""
    height, width = image_shape
    patch = math.isqrt(height * width // num_patches) if num_patches else 0
    if (
        patch < 1
        or height % patch
        or width % patch
        or (height // patch) * (width // patch) != num_patches
    ):
        raise ValueError(
            f"{num_patches} patch tokens do not tile a {height}x{width} image with square patches."
        )
    return height // patch, width // patch, patch


def class_token_attention(model: nn.Module, variables: dict, images: Any) -> np.ndarray:
    """The class token's last-block attention to the patches, ``[B, heads, gh, gw]`` float32.

    ``images``: normalised ``[B, H, W, 3]`` as the model was trained on; ``variables`` of
    ``model`` in eval mode (for DINO: the teacher's, as the paper visualises).
    """
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}.")

    @jax.jit
    def attention(variables, images):
        _, state = model.apply(variables, images, train=False, mutable=["intermediates"])
        return _sown_attention(state.get("intermediates", {}))  # [B, heads, 1+N, 1+N]

    probs = np.asarray(attention(variables, images), np.float32)
    gh, gw, _ = patch_grid(images.shape[1:3], probs.shape[-1] - 1)
    cls_to_patches = probs[:, :, 0, 1:]  # [B, heads, N]: query = class token
    return einops.rearrange(cls_to_patches, "b h (gh gw) -> b h gh gw", gh=gh, gw=gw)


def mass_threshold_mask(attention: Any, keep: float = KEEP_MASS) -> np.ndarray:
    """Boolean mask of ``attention [..., gh, gw]``'s largest patches holding ``keep`` of
    each map's mass (visualize_attention.py ``--threshold``): ascending sort, normalise to
    sum 1, cumulative sum, keep the patches whose cumulative sum exceeds ``1 - keep``."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep={keep} must be in (0, 1].")
    attention = np.asarray(attention, np.float32)
    if attention.ndim < 2:
        raise ValueError(f"attention must be [..., gh, gw], got shape {attention.shape}.")
    flat = attention.reshape(*attention.shape[:-2], -1)  # [..., N]
    order = np.argsort(flat, axis=-1, kind="stable")
    values = np.take_along_axis(flat, order, axis=-1)
    values = values / values.sum(axis=-1, keepdims=True)
    kept_sorted = np.cumsum(values, axis=-1) > 1.0 - keep
    mask = np.empty_like(kept_sorted)
    np.put_along_axis(mask, order, kept_sorted, axis=-1)  # back to patch order
    return mask.reshape(attention.shape)


def upsample(maps: Any, patch_size: int) -> np.ndarray:
    """``[..., gh, gw]`` -> ``[..., gh * p, gw * p]``, each patch's value repeated over its
    pixels (the reference's nearest-neighbour interpolation by ``scale_factor=p``)."""
    if patch_size < 1:
        raise ValueError(f"patch_size={patch_size} must be >= 1.")
    maps = np.asarray(maps)
    return np.repeat(np.repeat(maps, patch_size, axis=-2), patch_size, axis=-1)


def attention_figure(images: np.ndarray, attention: np.ndarray, keep: float = KEEP_MASS) -> Any:
    """A matplotlib ``Figure``: per image row, the image, one upsampled map per head with
    the outline of its ``keep``-mass mask (cyan), and the image with the outline of the
    ``keep``-mass mask of the heads' mean map.

    The reference's ``display_instances`` fills and outlines each head's mask in its own
    colour on the image; with several heads on a 16-px digit that hides the digit, so the
    per-head masks are drawn on their maps and the image gets the mean map's mask.
    ``images``: uint8 ``[B, H, W, 3]``; ``attention``: ``[B, heads, gh, gw]``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    images = np.asarray(images)
    attention = np.asarray(attention, np.float32)
    if images.ndim != 4 or attention.ndim != 4 or images.shape[0] != attention.shape[0]:
        raise ValueError(
            f"images [B, H, W, 3] and attention [B, heads, gh, gw] must share B; got "
            f"{images.shape} and {attention.shape}."
        )
    batch, heads = attention.shape[:2]
    _, _, patch = patch_grid(images.shape[1:3], attention.shape[2] * attention.shape[3])
    # Drawn at >= 64 px a side, so the outlines follow the patch edges.
    scale = max(1, 64 // images.shape[1])
    pictures = np.repeat(np.repeat(images, scale, axis=1), scale, axis=2)
    maps = upsample(attention, patch * scale)  # [B, heads, H', W']
    masks = upsample(mass_threshold_mask(attention, keep), patch * scale)
    mean_masks = upsample(mass_threshold_mask(attention.mean(axis=1), keep), patch * scale)
    fig = Figure(figsize=(1.25 * (heads + 2), 1.3 * batch + 0.3))
    FigureCanvasAgg(fig)
    axes = fig.subplots(batch, heads + 2, squeeze=False)

    def outline(ax, mask, colour):
        if mask.any() and not mask.all():  # contour needs both levels present
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=colour, linewidths=1.0)

    for b in range(batch):
        axes[b, 0].imshow(pictures[b])
        for h in range(heads):
            axes[b, h + 1].imshow(maps[b, h], cmap="inferno")
            outline(axes[b, h + 1], masks[b, h], "cyan")
        axes[b, heads + 1].imshow(pictures[b])
        outline(axes[b, heads + 1], mean_masks[b], "cyan")
    titles = ["image"] + [f"head {h}" for h in range(heads)] + [f"{keep:.0%} mass, mean"]
    for col, title in enumerate(titles):
        axes[0, col].set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig
