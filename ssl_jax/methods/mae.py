"""MAE: masked autoencoders, reconstructing the pixels of randomly removed patches.

Paper: He, Chen, Xie, Li, Dollar, Girshick, "Masked Autoencoders Are Scalable Vision
Learners", arXiv:2111.06377. Reference code: facebookresearch/mae (models_mae.py,
main_pretrain.py, engine_pretrain.py).

Objective, for an image x cut into N patches x_n of P = p*p*3 pixels, a per-sample random
set M of rN removed patches (mask m_n = 1 for n in M), the encoder f on the visible
patches only and the decoder g predicting every patch, y = g(f(x_visible)):

    t_n = (x_n - mean(x_n)) / sqrt(var(x_n) + 1e-6)       (norm_pix_loss; else t_n = x_n)
    L = sum_n m_n ||y_n - t_n||^2 / P  /  sum_n m_n        (over the batch too)

var is the unbiased variance (torch.Tensor.var); the loss ignores the visible patches.
The model (masking, encoder, decoder) is ``ssl_jax/models/mae.py``. One view per image:
the first of ``batch['views']`` (the reference's single RandomResizedCrop + flip). The
masking noise is drawn per step from the step's rng (``'masking'``), as ``torch.rand``.

Collapse diagnostics read the L2-normalised class token of the visible-token encoder
output. Metrics: ``mse_pixels``, the masked-patch MSE against the raw (normalised-image)
pixels, with the prediction mapped back through each target patch's own mean and std when
norm_pix_loss is on (what the reconstruction figures show); ``loss_visible``, the same
loss on the visible patches (not trained; the paper notes the visible patches are not
reconstructed well when they are excluded from the loss).

The kNN monitor and the linear probe evaluate the full, unmasked encoder
(``MAE.embed``: ``model.vit.pool``, the class token by default as main_linprobe.py).

Differences from the reference implementation:
- Encoder init follows the project's ViT (MoCo v3's): class token std 1e-6 (MAE 0.02) and
  qkv initialised per q / k / v; the 2-D sin-cos tables put the row half first (MAE: the
  column half); see ``ssl_jax/models/mae.py``.
- The lr follows the project's per-step warm-up + cosine (the reference adjusts per
  iteration too: util/lr_sched.py, half-cycle cosine to min_lr 0).
- No gradient accumulation (--accum_iter); use a larger global batch across devices.
- The online linear probe reads the visible-patch encoder's class token (free), the
  kNN monitor and final probes the whole image's (one more encoder pass per step).
- Mixed precision with model.dtype (bfloat16 on TPU) instead of AMP fp16 + loss scaling;
  the loss is float32.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from ssl_jax import losses
from ssl_jax.models import VITS, make_backbone
from ssl_jax.models.mae import MAE, num_visible, patchify


def get_config() -> ml_collections.ConfigDict:
    """MAE defaults: main_pretrain.py / PRETRAIN.md and models_mae.py's ViT-B/L decoders."""
    return ml_collections.ConfigDict(
        dict(
            mask_ratio=0.75,  # --mask_ratio 0.75 (paper Sec. 4, Fig. 5)
            norm_pix_loss=True,  # --norm_pix_loss in every PRETRAIN.md command
            decoder_width=512,  # mae_vit_{base,large}_patch16_dec512d8b: decoder_embed_dim
            decoder_depth=8,  # decoder_depth
            decoder_heads=16,  # decoder_num_heads
        )
    )


def make_model(config: ml_collections.ConfigDict) -> nn.Module:
    cfg = config.mae
    return MAE(
        backbone=make_backbone(config.model, image_size=config.input.image_size),
        decoder_width=cfg.decoder_width,
        decoder_depth=cfg.decoder_depth,
        decoder_heads=cfg.decoder_heads,
        mask_ratio=cfg.mask_ratio,
        dtype=jnp.dtype(config.model.dtype),
    )


def validate(config: ml_collections.ConfigDict) -> None:
    """Fails early, naming the values, when MAE cannot be built or trained."""
    cfg, size = config.mae, config.input.image_size
    if config.model.backbone not in VITS:
        raise ValueError(
            f"model.backbone={config.model.backbone!r}: MAE needs a ViT encoder "
            f"(one of {sorted(VITS)}); it drops the masked tokens from the sequence."
        )
    if not 0.0 <= cfg.mask_ratio < 1.0:
        raise ValueError(f"mae.mask_ratio={cfg.mask_ratio} must be in [0, 1).")
    p = config.model.vit.patch_size
    if size % p:
        raise ValueError(f"input.image_size={size} is not divisible by model.vit.patch_size={p}.")
    n = (size // p) ** 2
    keep = num_visible(n, cfg.mask_ratio)
    if keep < 1 or keep == n:
        raise ValueError(
            f"mae.mask_ratio={cfg.mask_ratio} keeps {keep} of the {n} patches; the loss needs "
            "at least one visible and one removed patch."
        )
    if cfg.decoder_width % cfg.decoder_heads or cfg.decoder_width % 4:
        raise ValueError(
            f"mae.decoder_width={cfg.decoder_width} must be divisible by mae.decoder_heads="
            f"{cfg.decoder_heads} and by 4 (sin-cos position embedding)."
        )
    for name, view in config.input.views.items():
        if view.get("size", 0) not in (0, size):
            raise ValueError(
                f"input.views.{name}.size={view.size}: MAE uses one view at input.image_size."
            )


def init_extra(params: Any, batch_stats: Any, config: ml_collections.ConfigDict) -> dict:
    """MAE keeps no extra state."""
    del params, batch_stats, config
    return {}


def loss_fn(params, state, batch, rng, *, model, config):
    cfg = config.mae
    x = batch["views"][:, 0]  # [B, S, S, 3], the single view
    chex.assert_rank(x, 4)
    rng_mask, rng_drop = jax.random.split(rng)
    out = model.apply(
        {"params": params},
        x,
        train=True,
        rngs={"masking": rng_mask, "dropout": rng_drop},
    )
    pred, mask = out["pred"], out["mask"]  # [B, N, P], [B, N]
    raw = patchify(x.astype(jnp.float32), model.backbone.patch_size)  # [B, N, P]
    target = losses.normalize_patches(raw) if cfg.norm_pix_loss else raw
    target = jax.lax.stop_gradient(target)
    loss = losses.masked_patch_mse(pred, target, mask)
    pixels = losses.denormalize_patches(pred, raw) if cfg.norm_pix_loss else pred
    pixels = jax.lax.stop_gradient(pixels)
    metrics = dict(
        mse_pixels=losses.masked_patch_mse(pixels, raw, mask),
        loss_visible=jax.lax.stop_gradient(losses.masked_patch_mse(pred, target, 1.0 - mask)),
    )
    cls = out["latent"][:, 0]  # [B, D], the class token of the visible-patch encoder
    aux = dict(
        batch_stats=state.batch_stats,  # a ViT has no BatchNorm: {}
        embeddings=losses.l2_normalize(cls),
        features=cls,
        metrics=metrics,
        extra={},
    )
    return loss, aux


def update_extra(extra, *, params, aux, step, config):
    return extra
