"""MoCo v3: momentum contrast without a queue, keys from the whole global batch.

Paper: Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision
Transformers", arXiv:2104.02057. Reference code: facebookresearch/moco-v3
(moco/builder.py, main_moco.py, vits.py).

Objective, for two views x1, x2 of each image, queries q = predictor(projector(f(x)))
of the online encoder and keys k = projector_m(f_m(x)) of the momentum encoder:

    ctr(q, k) = 2T * mean_i -log( exp(q_i.k_i / T) / sum_{j in global batch} exp(q_i.k_j / T) )
    L = ctr(q1, k2) + ctr(q2, k1)
    theta_m <- m theta_m + (1 - m) theta        (backbone + projector, before the keys)
    m = 1 - (1 - m0) (cos(pi t / T_total) + 1) / 2   (--moco-m-cos, t the step)

q and k are L2-normalised; the predictor is online only. BatchNorm is global (the
reference converts every BN to SyncBN) and per view (the reference runs one forward pass
per view): both views go through one pass as two BN groups, [x1; x2].

Differences from the reference implementation:
- The momentum and the lr are scheduled per step from the step counter; the reference
  computes the same curves from epoch + i / iters_per_epoch.
- BN running statistics move once per step, towards the mean of the two views'
  statistics; the reference's two forward passes move them once per view. Training is
  unaffected (it normalises with batch statistics); only evaluation reads them.
- ViT-Small is the registry's vit_small with timm's 6 heads of width 64; the reference's
  vits.py uses 12 heads of width 32 (same parameters, different attention).
- Mixed precision is chosen with model.dtype (bfloat16 on TPU); the reference uses AMP.
  The loss is always float32.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import ml_collections
from einops import rearrange
from flax import linen as nn

from ssl_jax import losses, schedules
from ssl_jax.methods import primitives
from ssl_jax.models.encoder import make_encoder


def get_config() -> ml_collections.ConfigDict:
    """MoCo v3 defaults (facebookresearch/moco-v3 main_moco.py, ResNet-50 README command)."""
    return ml_collections.ConfigDict(
        dict(
            momentum=0.99,  # --moco-m (0.996 for the 1000-epoch ResNet-50)
            cosine_momentum=True,  # --moco-m-cos: m0 -> 1 with a half cosine (every command)
            temperature=1.0,  # --moco-t (0.2 for ViTs)
        )
    )


def make_model(config: ml_collections.ConfigDict) -> nn.Module:
    # SyncBN over every GPU, and one forward pass per view in the reference: the two
    # views go through one pass as two BN groups, each the view's whole global batch.
    return make_encoder(config.model, bn_groups=2, image_size=config.input.image_size)


def momentum(step: Any, config: ml_collections.ConfigDict) -> jnp.ndarray:
    """EMA momentum at ``step``: m0 at step 0, 1 at ``schedule.total_steps``
    (main_moco.py adjust_moco_momentum with epoch + i / iters = step / steps_per_epoch)."""
    cfg = config.moco_v3
    if not cfg.cosine_momentum:
        return jnp.asarray(cfg.momentum, jnp.float32)
    return schedules.cosine_increase(cfg.momentum, 1.0, step, config.schedule.total_steps)


def validate(config: ml_collections.ConfigDict) -> None:
    """Fails early, naming the values, when the model cannot produce MoCo v3 queries."""
    pred, head = config.model.predictor, config.model.head
    if pred.num_layers < 1:
        raise ValueError(
            f"model.predictor.num_layers={pred.num_layers}: MoCo v3 queries are the outputs "
            "of an online predictor (2 layers in the reference builder)."
        )
    if pred.out_dim != head.out_dim:
        raise ValueError(
            f"model.predictor.out_dim={pred.out_dim} must equal model.head.out_dim="
            f"{head.out_dim}: queries and keys share the contrastive space."
        )
    if not 0.0 <= config.moco_v3.momentum <= 1.0:
        raise ValueError(f"moco_v3.momentum={config.moco_v3.momentum} must be in [0, 1].")


def init_extra(params: Any, batch_stats: Any, config: ml_collections.ConfigDict) -> dict:
    """The momentum encoder: a copy of the online backbone + projector (no predictor)."""
    del config
    if primitives.PREDICTOR not in params:
        raise ValueError(
            f"the online params have no 'predictor' (top-level keys: {sorted(params)}); "
            "build the model with moco_v3.make_model."
        )
    return dict(
        target_params=jax.tree.map(jnp.copy, primitives.without(params)),
        target_batch_stats=jax.tree.map(jnp.copy, primitives.without(batch_stats)),
    )


def _forward(model, params, batch_stats, views, rng, predict):
    """Both views in one pass: [(v b), ...] with BN group v, so each view is normalised
    with its own global-batch statistics as in the reference's two forward calls."""
    x = rearrange(views[:, :2], "b v h w c -> (v b) h w c")  # [2B, H, W, C], view-major
    out, batch_stats = primitives.apply_train(model, params, batch_stats, x, rng, predict=predict)
    y = out["prediction" if predict else "projection"]
    return rearrange(y, "(v b) d -> v b d", v=2), out["embedding"], batch_stats  # [2, B, d]


def loss_fn(params, state, batch, rng, *, model, config):
    cfg, extra = config.moco_v3, state.extra
    views = batch["views"]  # [B, V, H, W, C]
    chex.assert_rank(views, 5)
    if views.shape[1] < 2:
        raise ValueError(f"MoCo v3 needs 2 views per image, got views of shape {views.shape}.")
    # The reference updates the momentum encoder inside forward, before the keys, with
    # the online weights of this step (before the optimizer changes them).
    m = momentum(state.step, config)
    target_params = jax.lax.stop_gradient(
        primitives.ema(extra["target_params"], primitives.without(params), m)
    )
    rng_q, rng_k = jax.random.split(rng)
    queries, features, batch_stats = _forward(  # online predictions q1, q2: [2, B, d]
        model, params, state.batch_stats, views, rng_q, True
    )
    # The momentum encoder also runs in train mode (its own BN statistics), no predictor.
    keys, _, target_stats = _forward(
        model, target_params, extra["target_batch_stats"], views, rng_k, False
    )
    keys = jax.lax.stop_gradient(keys)  # k1, k2

    t = cfg.temperature
    loss_12, logits_12 = losses.moco_v3_contrastive(queries[0], keys[1], t)  # [B, B]
    loss_21, logits_21 = losses.moco_v3_contrastive(queries[1], keys[0], t)
    labels = jnp.arange(views.shape[0])
    metrics = dict(
        acc_12=losses.top1_accuracy(logits_12, labels),
        acc_21=losses.top1_accuracy(logits_21, labels),
        moco_m=m,
    )
    aux = dict(
        batch_stats=batch_stats,
        embeddings=losses.l2_normalize(queries[0]),
        features=features,  # [2B, D], view-major
        metrics=metrics,
        # queries and keys ([2, B, d], unnormalised) are kept for inspection only.
        extra=dict(
            target_params=target_params,
            target_batch_stats=target_stats,
            queries=queries,
            keys=keys,
        ),
    )
    return loss_12 + loss_21, aux


def update_extra(extra, *, params, aux, step, config):
    """Keeps the momentum encoder that produced this step's keys."""
    del extra, params, step, config
    new = aux["extra"]
    return dict(target_params=new["target_params"], target_batch_stats=new["target_batch_stats"])
