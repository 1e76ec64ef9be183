"""Mixup / CutMix with label smoothing, in JAX, for the fine-tuning step.

Semantics of timm's ``Mixup`` in ``mode='batch'`` (timm/data/mixup.py, used by
facebookresearch/mae main_finetune.py with ``--mixup 0.8 --cutmix 1.0 --mixup_prob 1.0
--mixup_switch_prob 0.5 --smoothing 0.1``):

- one draw per batch: with probability ``mix_prob`` the batch is mixed, else left alone;
- when both alphas are > 0, CutMix is picked with probability ``switch_prob``, else Mixup;
  with only one alpha > 0 that one is used; lam ~ Beta(alpha, alpha) of the picked one;
- the batch is mixed with its own reverse (``x.flip(0)``): Mixup
  ``x = lam * x + (1 - lam) * x[::-1]``; CutMix pastes the box ``[yl, yh) x [xl, xh)`` of
  ``x[::-1]`` into ``x``, the box from ``rand_bbox``: cut side ``int(side * sqrt(1 - lam))``,
  centre uniform over the image, ``clip(centre -+ cut // 2, 0, side)``, and lam is
  corrected to ``1 - box area / image area`` (``correct_lam=True``);
- targets ``lam * smooth(y) + (1 - lam) * smooth(y[::-1])`` with ``smooth`` the one-hot of
  ``mixup_target``: off = eps / K, on = 1 - eps + off.

Differences from timm: the random numbers come from ``jax.random`` (so the draws differ
from NumPy's); the batch is the global one (timm mixes each GPU's local batch with its own
reverse); images are ``[B, H, W, C]`` (timm: ``[B, C, H, W]``).
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp


class MixConfig(NamedTuple):
    mixup_alpha: float = 0.0  # timm mixup_alpha (MAE --mixup 0.8); 0: off
    cutmix_alpha: float = 0.0  # timm cutmix_alpha (MAE --cutmix 1.0); 0: off
    mix_prob: float = 1.0  # timm prob (MAE --mixup_prob 1.0)
    switch_prob: float = 0.5  # timm switch_prob (MAE --mixup_switch_prob 0.5)
    smoothing: float = 0.0  # timm label_smoothing (MAE --smoothing 0.1)

    @property
    def active(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


def smooth_one_hot(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
    """timm's ``one_hot(..., on_value=1 - eps + eps / K, off_value=eps / K)``: [B, K]."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * (on - off) + off


def cutmix_box(
    lam: jax.Array, cy: jax.Array, cx: jax.Array, height: int, width: int
) -> tuple[jax.Array, ...]:
    """timm ``rand_bbox`` for a drawn centre ``(cy, cx)``: ``(yl, yh, xl, xh)`` and the
    corrected ``lam = 1 - box area / (height * width)``."""
    ratio = jnp.sqrt(1.0 - lam)
    cut_h = jnp.floor(height * ratio).astype(jnp.int32)  # int(img_h * ratio)
    cut_w = jnp.floor(width * ratio).astype(jnp.int32)
    yl = jnp.clip(cy - cut_h // 2, 0, height)
    yh = jnp.clip(cy + cut_h // 2, 0, height)
    xl = jnp.clip(cx - cut_w // 2, 0, width)
    xh = jnp.clip(cx + cut_w // 2, 0, width)
    area = (yh - yl) * (xh - xl)
    return yl, yh, xl, xh, 1.0 - area.astype(jnp.float32) / (height * width)


def mix_batch(
    rng: jax.Array, images: jax.Array, labels: jax.Array, num_classes: int, cfg: MixConfig
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mixed images ``[B, H, W, C]``, soft targets ``[B, K]`` (rows sum to 1) and the lam
    used (1.0 when not mixed). With both alphas 0 only the label smoothing applies."""
    chex.assert_rank(images, 4)
    chex.assert_shape(labels, (images.shape[0],))
    targets = smooth_one_hot(labels, num_classes, cfg.smoothing)  # [B, K]
    if not cfg.active:
        return images, targets, jnp.ones((), jnp.float32)
    b, h, w = images.shape[:3]
    if b % 2:
        # timm asserts this too: the flipped batch pairs every example with another one.
        raise ValueError(f"mixup/cutmix need an even batch, got {b} examples.")
    k_apply, k_switch, k_mix, k_cut, k_y, k_x = jax.random.split(rng, 6)
    apply = jax.random.uniform(k_apply) < cfg.mix_prob
    if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(k_switch) < cfg.switch_prob
    else:
        use_cutmix = jnp.asarray(cfg.cutmix_alpha > 0)
    lam_mix = (
        jax.random.beta(k_mix, cfg.mixup_alpha, cfg.mixup_alpha) if cfg.mixup_alpha > 0 else 1.0
    )
    lam_cut = (
        jax.random.beta(k_cut, cfg.cutmix_alpha, cfg.cutmix_alpha) if cfg.cutmix_alpha > 0 else 1.0
    )
    cy = jax.random.randint(k_y, (), 0, h)  # np.random.randint(0, img_h)
    cx = jax.random.randint(k_x, (), 0, w)
    yl, yh, xl, xh, lam_box = cutmix_box(jnp.asarray(lam_cut, jnp.float32), cy, cx, h, w)

    flipped = images[::-1]  # [B, H, W, C], example i paired with B - 1 - i
    rows = jnp.arange(h)[:, None]  # [H, 1]
    cols = jnp.arange(w)[None, :]  # [1, W]
    box = (rows >= yl) & (rows < yh) & (cols >= xl) & (cols < xh)  # [H, W]
    cut = jnp.where(box[None, :, :, None], flipped, images)
    lam_mix = jnp.asarray(lam_mix, jnp.float32)
    mixed = lam_mix * images + (1.0 - lam_mix) * flipped
    out = jnp.where(apply, jnp.where(use_cutmix, cut, mixed.astype(images.dtype)), images)
    lam = jnp.where(apply, jnp.where(use_cutmix, lam_box, lam_mix), 1.0)  # []
    targets = lam * targets + (1.0 - lam) * targets[::-1]  # [B, K]
    return out, targets, lam
