"""MAE reconstruction figures: original | masked | reconstruction | visible patches pasted.

The layout of the paper's Figs. 2-4 and of the reference demo notebook
(facebookresearch/mae demo/mae_visualize.ipynb, ``run_one_image``): the masked image shows
the removed patches (gray here), the reconstruction is the decoder's output for every
patch, and the last column pastes the visible patches back, ``x (1 - m) + y m``.

With norm_pix_loss the decoder predicts each patch standardised by its own mean and
(unbiased) std, so for display each predicted patch is mapped back with the *target*
patch's mean and std (``losses.denormalize_patches``). That reads the ground truth's
per-patch mean colour and contrast of the removed patches, so the figure is only a
visualisation, not a measure of reconstruction. (The demo's ``mae_visualize_vit_large``
checkpoint was trained with raw-pixel targets, so its notebook needs no such step.)

Pure functions on arrays; ``reconstruction_figure`` reads a few evaluation images through
``ssl_jax.data.eval_pipeline.eval_iterator`` (it never imports ``ssl_jax.train``, so the
notebooks call it with whatever restored the variables); ``reconstruct_workdir`` (``ssl-jax
reconstruct``) reads the params of a run's latest checkpoint, and nothing else, read-only.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from ssl_jax import losses, methods, paths, plots, pretrained
from ssl_jax.data import eval_pipeline
from ssl_jax.models.mae import MAE, patchify, unpatchify

GRAY = 128  # the removed patches in the "masked" column
COLUMNS = ("original", "masked", "reconstruction", "reconstruction + visible")


def predict(
    model: nn.Module,
    variables: dict,
    images: jax.Array,
    rng: jax.Array,
    mask_ratio: float | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The MAE's output on normalised images ``[B, S, S, 3]``: ``(pred [B, N, p*p*3],
    mask [B, N])`` (mask 1 = removed), masking noise from ``rng``, eval mode."""
    out = model.apply(
        {"params": variables["params"]},
        jnp.asarray(images, jnp.float32),
        train=False,
        mask_ratio=mask_ratio,
        rngs={"masking": rng},
    )
    return out["pred"], out["mask"]


def reconstructed_images(
    images: jax.Array, pred: jax.Array, mask: jax.Array, patch_size: int, norm_pix_loss: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``(reconstruction, mask image)``, both ``[B, S, S, 3]`` float32 in the normalised
    input space: the prediction un-normalised with each target patch's statistics when
    ``norm_pix_loss``, and the patch mask broadcast to pixels (1 = removed)."""
    images = jnp.asarray(images, jnp.float32)
    grid = (images.shape[1] // patch_size, images.shape[2] // patch_size)
    target = patchify(images, patch_size)  # [B, N, P]
    pixels = jnp.asarray(pred, jnp.float32)
    if norm_pix_loss:
        pixels = losses.denormalize_patches(pixels, target)
    mask_patches = jnp.broadcast_to(jnp.asarray(mask, jnp.float32)[..., None], target.shape)
    recon = unpatchify(pixels, patch_size, grid)  # [B, S, S, 3]
    mask_image = unpatchify(mask_patches, patch_size, grid)  # [B, S, S, 3]
    return np.asarray(recon), np.asarray(mask_image)


def to_uint8(images: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """Undo ``(x - mean) / std`` (config.input.mean / std on the 0..1 scale) -> uint8."""
    x = np.asarray(images, np.float32) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def reconstruction_grid(
    images: Any,
    pred: Any,
    mask: Any,
    *,
    patch_size: int,
    mean: Any,
    std: Any,
    norm_pix_loss: bool,
) -> np.ndarray:
    """uint8 ``[B * S, 4 * S, 3]``: one row per image, the four ``COLUMNS``."""
    images = np.asarray(images, np.float32)
    recon, mask_image = reconstructed_images(images, pred, mask, patch_size, norm_pix_loss)
    removed = mask_image > 0.5
    original = to_uint8(images, mean, std)  # [B, S, S, 3]
    masked = np.where(removed, np.uint8(GRAY), original)
    reconstruction = to_uint8(recon, mean, std)
    pasted = np.where(removed, reconstruction, original)  # x (1 - m) + y m, exactly
    panels = np.stack([original, masked, reconstruction, pasted], axis=1)  # [B, 4, S, S, 3]
    b, c, s, w, ch = panels.shape
    return panels.transpose(0, 2, 1, 3, 4).reshape(b * s, c * w, ch)


def eval_images(config: ml_collections.ConfigDict, num_images: int, split: str) -> np.ndarray:
    """The first ``num_images`` normalised images ``[n, S, S, 3]`` of ``split`` (the eval
    preprocessing, fixed order)."""
    if num_images < 1:
        raise ValueError(f"num_images={num_images} must be >= 1.")
    available = eval_pipeline.num_eval_examples(config.input, split)
    if num_images > available:
        raise ValueError(f"num_images={num_images} but split {split!r} has {available} images.")
    batches = eval_pipeline.eval_iterator(config.input, split, global_batch_size=num_images)
    batch = next(iter(batches))
    return np.asarray(batch["image"][batch["mask"]], np.float32)[:num_images]


def reconstruction_figure(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    variables: dict,
    num_images: int = 8,
    split: str | None = None,
    seed: int = 0,
    out_path: str | None = None,
) -> np.ndarray:
    """The grid for the first ``num_images`` of ``split`` (default
    ``config.input.eval_test_split``), masked at ``config.mae.mask_ratio`` with noise from
    ``seed``; with ``out_path`` also written as a labelled PNG (``plots.labelled_grid``:
    column names and a title with the model, patch size, ratio and split). ``variables``
    holds the MAE's ``'params'`` (e.g. ``{'params': state.params}`` of a restored state)."""
    split = split or config.input.eval_test_split
    images = eval_images(config, num_images, split)
    params = jax.device_get(variables["params"])  # off the training mesh: plain host arrays
    pred, mask = jax.jit(lambda p, x, k: predict(model, {"params": p}, x, k))(
        params, images, jax.random.key(seed)
    )
    grid = reconstruction_grid(
        images,
        pred,
        mask,
        patch_size=model.backbone.patch_size,
        mean=config.input.mean,
        std=config.input.std,
        norm_pix_loss=config.mae.norm_pix_loss,
    )
    if out_path:
        ratio = config.mae.mask_ratio
        paths.makedirs(os.path.dirname(paths.absolute(out_path)))
        plots.labelled_grid(
            grid,
            COLUMNS,
            config.input.image_size,
            out_path,
            title=f"MAE {config.model.backbone}, patch {model.backbone.patch_size}, "
            f"{ratio:.0%} of the patches removed; {split}",
        )
    return grid


def reconstruct_workdir(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    num_images: int = 8,
    split: str | None = None,
    seed: int = 0,
) -> str:
    """The reconstruction grid of ``workdir``'s latest checkpoint, written to
    ``<workdir>/reconstruction.png`` (one row per image); returns the path."""
    model = methods.get_method(config.method).make_model(config)
    if not isinstance(model, MAE):
        raise ValueError(
            f"reconstruct needs a masked autoencoder; {workdir} holds method={config.method!r}."
        )
    if num_images < 1:
        raise ValueError(f"--num_images={num_images} must be >= 1.")
    params = pretrained.read_latest(workdir, ["params"])[0]["params"]
    path = paths.join(workdir, "reconstruction.png")
    if jax.process_index() == 0:
        reconstruction_figure(
            config, model, {"params": params}, num_images, split, seed, out_path=path
        )
        print(f"Wrote {path}")
    return path
