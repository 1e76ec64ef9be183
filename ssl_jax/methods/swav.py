"""SwAV: swapped prediction of online cluster assignments, with multi-crop.

Paper: Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments", arXiv:2006.09882. Reference code: facebookresearch/swav (main_swav.py,
src/resnet50.py, src/multicropdataset.py).

Objective. Every crop x_v (2 assignment crops at 224 px, then the low-resolution ones) is
projected and L2-normalised, z_v = normalize(head(backbone(x_v))), and scored against K
unit prototypes C: s_v = z_v . C (cosines). For each assignment crop a, the codes are
the Sinkhorn-Knopp equipartition of the global batch's scores (no gradient):

    Q_a = sinkhorn(exp(s_a / epsilon)),   3 iterations, epsilon 0.05
          (rows: each sample's code sums to 1; columns: each prototype gets 1/K of the mass)
    L = mean_a mean_{v != a} mean_b  -sum_k Q_a[b, k] log softmax(s_v[b] / tau)[k],  tau 0.1

The prototypes are renormalised to unit length after every update and receive no update
during the first epoch (``optim.delayed_params``). With ``queue_length`` L > 0, from epoch
``epoch_queue_starts`` on, the z of the assignment crops of the last L / B global batches
are kept per assignment crop; once full, their scores against today's prototypes join
the Sinkhorn problem (N = L + B samples) and only the batch's rows are used as codes. The
queue is stored in the train state, so it is exact on resume and on any device count.

Sinkhorn runs in the global view: its sums are over the whole global batch, which is
what main_swav.py's all_reduce computes, so 1 and 8 devices solve the same problem.

Metrics: ``code_entropy`` (the mean entropy of a code; log K when spread over every
prototype), ``prototypes_used`` (the fraction of prototypes that are some sample's
argmax code: a collapse to few clusters shows here first), ``queue_in_use``.

Differences from the reference implementation:
- The reference normalises the prototypes before each forward pass; we normalise at init
  and after each update, which gives the same weights at every forward pass.
- BatchNorm is global over the batch (main_swav's --sync_bn pytorch, the bs256 scripts);
  the 800-epoch script syncs BN over groups of 8 GPUs (512 examples) with apex.
- The prototype freeze lasts ``optim.delay_epochs`` = 1 epoch of steps; the scripts'
  --freeze_prototypes_niters 313 (batch 4096) and 5005 (batch 256) are one epoch plus
  one step (len(train_loader) is 312 and 5004 there).
- The queue is a ring buffer ([A, L, d], oldest slice overwritten); the reference shifts
  its rows. Sinkhorn is invariant to the order of its samples, so the codes are the same.
  ``queue_length`` must be a multiple of the global batch (the reference rounds it down).
- The scores, Sinkhorn and the loss run in float32 (the reference runs in fp16 autocast).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from ssl_jax import losses, schedules
from ssl_jax.methods import primitives
from ssl_jax.models import make_backbone
from ssl_jax.models.encoder import Encoder, make_head
from ssl_jax.models.heads import SwAVHead


def get_config() -> ml_collections.ConfigDict:
    """SwAV defaults: main_swav.py's flags as set by scripts/swav_800ep_pretrain.sh."""
    return ml_collections.ConfigDict(
        dict(
            num_prototypes=3000,  # --nmb_prototypes
            temperature=0.1,  # --temperature
            epsilon=0.05,  # --epsilon
            sinkhorn_iterations=3,  # --sinkhorn_iterations
            crops_for_assign=(0, 1),  # --crops_for_assign
            queue_length=0,  # --queue_length (3840 in the batch-256 scripts)
            epoch_queue_starts=15,  # --epoch_queue_starts
        )
    )


def make_model(config: ml_collections.ConfigDict) -> nn.Module:
    """Backbone + SwAVHead: ``model.head`` is the projection MLP (Linear(2048) -> BN ->
    ReLU -> Linear(128), --hidden_mlp / --feat_dim), then the prototypes."""
    return Encoder(
        backbone=make_backbone(config.model, bn_groups=1, image_size=config.input.image_size),
        head=SwAVHead(projector=make_head(config.model), num_prototypes=config.swav.num_prototypes),
    )


def _queue_rows(config: ml_collections.ConfigDict) -> int:
    return int(config.swav.queue_length)


def validate(config: ml_collections.ConfigDict) -> None:
    cfg, batch = config.swav, config.input.global_batch_size
    num_crops = len(config.input.views)
    crops = tuple(cfg.crops_for_assign)
    if not crops or len(set(crops)) != len(crops) or not all(0 <= c < num_crops for c in crops):
        raise ValueError(
            f"swav.crops_for_assign={crops} must be distinct crop indices below the "
            f"{num_crops} crops of input.views."
        )
    if num_crops < 2:
        raise ValueError(
            f"SwAV predicts one crop's code from another: needs >= 2 crops, got {num_crops}."
        )
    for name in ("num_prototypes", "sinkhorn_iterations"):
        if cfg[name] < 1:
            raise ValueError(f"swav.{name}={cfg[name]} must be >= 1.")
    if cfg.epsilon <= 0:
        raise ValueError(
            f"swav.epsilon={cfg.epsilon} must be > 0: the codes are exp(scores / epsilon)."
        )
    if cfg.queue_length < 0 or cfg.queue_length % batch:
        raise ValueError(
            f"swav.queue_length={cfg.queue_length} must be 0 (no queue) or a positive "
            f"multiple of input.global_batch_size={batch}, so every enqueue is one slice."
        )
    if cfg.epoch_queue_starts < 0:
        raise ValueError(f"swav.epoch_queue_starts={cfg.epoch_queue_starts} must be >= 0.")


def init_extra(params: Any, batch_stats: Any, config: ml_collections.ConfigDict) -> dict:
    """An empty queue per assignment crop (zeros, as the reference creates it), its write
    position and the number of rows filled; nothing without a queue."""
    del params, batch_stats
    rows = _queue_rows(config)
    if rows == 0:
        return {}
    crops, dim = len(config.swav.crops_for_assign), config.model.head.out_dim
    return dict(
        queue=jnp.zeros((crops, rows, dim), jnp.float32),  # [A, L, d]
        queue_ptr=jnp.zeros((), jnp.int32),
        queue_filled=jnp.zeros((), jnp.int32),
    )


def after_update(params: Any, config: ml_collections.ConfigDict) -> Any:
    """The prototypes back to unit length (main_swav.py normalises them every step)."""
    del config
    head = dict(params["head"])
    head["prototypes"] = {"kernel": losses.l2_normalize(head["prototypes"]["kernel"], axis=0)}
    return {**params, "head": head}


def queue_start_step(config: ml_collections.ConfigDict) -> int:
    """The first step that fills the queue: the start of epoch ``epoch_queue_starts``."""
    sched = config.schedule
    return schedules.epochs_to_steps(config.swav.epoch_queue_starts, sched, sched.steps_per_epoch)


def _head(module: Encoder, features: jax.Array, train: bool):
    return module.head(features, train, return_embedding=True)


def assignment_codes(scores: jax.Array, params: Any, extra: dict, i: int, config) -> jax.Array:
    """The [B, K] codes of assignment crop i from its [B, K] scores, with the queue's rows
    (scored against the current prototypes) in the problem once the queue is full."""
    cfg = config.swav
    scores = jax.lax.stop_gradient(scores)
    if "queue" not in extra:
        return losses.sinkhorn_knopp(scores, cfg.epsilon, cfg.sinkhorn_iterations)
    prototypes = jax.lax.stop_gradient(params["head"]["prototypes"]["kernel"])  # [d, K]
    queued = extra["queue"][i] @ prototypes  # [L, K]
    full = (extra["queue_filled"] >= queued.shape[0]).astype(jnp.float32)
    valid = jnp.concatenate([jnp.full(queued.shape[:1], full), jnp.ones(scores.shape[:1])])
    q = losses.sinkhorn_knopp(
        jnp.concatenate([queued, scores]), cfg.epsilon, cfg.sinkhorn_iterations, valid
    )
    return q[queued.shape[0] :]


def loss_fn(params, state, batch, rng, *, model, config):
    cfg, extra = config.swav, state.extra
    crops = tuple(cfg.crops_for_assign)
    groups = primitives.crop_groups(batch, max(crops) + 1)
    features, (scores, z), batch_stats = primitives.multicrop_forward(  # [V, B, K], [V, B, d]
        model, params, state.batch_stats, groups, rng, _head
    )
    q = jnp.stack(
        [assignment_codes(scores[c], params, extra, i, config) for i, c in enumerate(crops)]
    )
    log_p = jax.nn.log_softmax(scores / cfg.temperature, axis=-1)  # [V, B, K]
    loss = losses.cross_crop_entropy(q, log_p, jnp.asarray(crops))
    b, k = scores.shape[1], scores.shape[2]
    used = jnp.zeros((k,), jnp.float32).at[jnp.argmax(q, axis=-1).reshape(-1)].max(1.0)
    metrics = dict(
        code_entropy=-jnp.mean(jnp.sum(jax.scipy.special.xlogy(q, q), axis=-1)),
        prototypes_used=jnp.mean(used),
    )
    if "queue" in extra:
        metrics["queue_in_use"] = (extra["queue_filled"] >= _queue_rows(config)).astype(jnp.float32)
    aux = dict(
        batch_stats=batch_stats,
        embeddings=z[0],
        features=features[: 2 * b],  # the first two crops (the global ones with multi-crop)
        metrics=metrics,
        extra=dict(assigned=jax.lax.stop_gradient(z[jnp.asarray(crops)])),  # [A, B, d]
    )
    return loss, aux


def update_extra(extra, *, params, aux, step, config):
    """From epoch ``epoch_queue_starts`` on, the assignment crops' z replace the oldest
    queue slice (after the loss used the queue: its rows are from earlier steps)."""
    del params
    if "queue" not in extra:
        return {}
    z = aux["extra"]["assigned"]  # [A, B, d]
    filled = [
        primitives.enqueue(extra["queue"][i], extra["queue_ptr"], z[i]) for i in range(len(z))
    ]
    active = step >= queue_start_step(config)
    rows = _queue_rows(config)
    return dict(
        queue=jnp.where(active, jnp.stack([f[0] for f in filled]), extra["queue"]),
        queue_ptr=jnp.where(active, filled[0][1], extra["queue_ptr"]),
        queue_filled=jnp.where(
            active, jnp.minimum(extra["queue_filled"] + z.shape[1], rows), extra["queue_filled"]
        ),
    )
