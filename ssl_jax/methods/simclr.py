"""SimCLR: contrastive learning with the other views of the batch as negatives.

Paper: Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations", arXiv:2002.05709. Reference code: google-research/simclr.

Objective (NT-Xent), with z the projection of each of the 2N views, sim the cosine
similarity and T the temperature, for the positive pair (i, j):

    l(i, j) = -log  exp(sim(z_i, z_j) / T) / sum_{k != i} exp(sim(z_i, z_k) / T)

summed over both directions of every pair of the global batch. Both views go through
one forward pass with global BatchNorm (SimCLR's `global_bn` on TPU), and the negatives
of an anchor are the other 2N - 2 views of the whole global batch.

Differences from the reference implementation:
- The loss value is the reference's loss_a + loss_b (twice the paper's mean over 2N
  anchors), kept so that the reference's learning rates and weight decay carry over.
- N * epochs // B + 1 steps as the reference, over epochs of N // B batches (remainder
  dropped); an explicit schedule.total_steps compresses the warm-up too, where the
  reference's --train_steps keeps it at floor(warmup_epochs N / B).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections
from einops import rearrange
from flax import linen as nn

from ssl_jax import losses
from ssl_jax.methods import primitives
from ssl_jax.models.encoder import make_encoder


def get_config() -> ml_collections.ConfigDict:
    """SimCLR defaults (google-research/simclr run.py, ImageNet)."""
    return ml_collections.ConfigDict(dict(temperature=0.1))  # 0.5 for CIFAR-10


def make_model(config: ml_collections.ConfigDict) -> nn.Module:
    return make_encoder(config.model, bn_groups=1, image_size=config.input.image_size)


def init_extra(params: Any, batch_stats: Any, config: ml_collections.ConfigDict) -> dict:
    del params, batch_stats, config
    return {}


def loss_fn(params, state, batch, rng, *, model, config):
    del rng
    views = batch["views"]  # [B, 2, H, W, C]
    b = views.shape[0]
    x = rearrange(views[:, :2], "b v h w c -> (v b) h w c")  # [2B, H, W, C], view-major
    out, batch_stats = primitives.apply_train(model, params, state.batch_stats, x)
    z = out["projection"]  # [2B, d]
    loss, logits_ab = losses.nt_xent(z[:b], z[b:], config.simclr.temperature)
    aux = dict(
        batch_stats=batch_stats,
        embeddings=losses.l2_normalize(z[:b]),
        # Both views, as the reference's linear head trained while pretraining.
        features=out["embedding"],  # [2B, D]
        metrics=dict(contrast_acc=losses.top1_accuracy(logits_ab, jnp.arange(b))),
        extra={},
    )
    return loss, aux


def update_extra(extra, *, params, aux, step, config):
    del params, aux, step, config
    return extra
