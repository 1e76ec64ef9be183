"""MoCo v1 / v2: momentum contrast with a queue of negatives.

Papers: He et al., "Momentum Contrast for Unsupervised Visual Representation Learning",
arXiv:1911.05722 (v1); Chen et al., "Improved Baselines with Momentum Contrastive
Learning", arXiv:2003.04297 (v2). Reference code: facebookresearch/moco.

Objective, for a query q (view 1, online encoder) and its key k+ (view 2, momentum
encoder), with the queue's K keys as negatives:

    L = -log  exp(q.k+ / T) / ( exp(q.k+ / T) + sum_{k- in queue} exp(q.k- / T) )
    theta_k <- m theta_k + (1 - m) theta_q          (before this step's keys are computed)

then the global batch's keys are enqueued and the oldest K-slice is dequeued.
Shuffle BN: the key batch is permuted, normalised in BN groups ("8 GPUs x 32"), and
restored, so a key cannot cheat through batch statistics shared with its query.
v1 vs v2 is configuration: fc vs 2-layer MLP head, T 0.07 vs 0.2, augmentation, schedule.
`symmetric=True` is the MoCo CIFAR demo's symmetric loss: both crops serve as query,
the two losses are summed, and both key batches (2B) are enqueued.

`loss="nce"` is the momentum-encoder form of CMC's repository (HobbitLong/CMC
train_moco_ins.py --moco without --softmax: MemoryMoCo + NCECriterion): the same
positive and queue scores s_j = exp(q.k_j / T), as probabilities s_j / Z with Z set once,
on the first step, to N mean(s) over the training set's N examples, and InstDisc's NCE
(``losses.nce``) in place of the cross-entropy. Its queue starts as that repository's
U(-1/sqrt(D/3), 1/sqrt(D/3)) rows.

Differences from the reference implementation:
- BatchNorm "per GPU" is emulated with `bn_groups` contiguous groups of the global batch,
  so the semantics do not depend on the number of devices (docs/ARCHITECTURE.md).
- The queue is stored [K, D] (the reference stores [D, K]).
- The cosine schedule is evaluated per step; the reference updates the lr once per epoch.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from ssl_jax import losses
from ssl_jax.methods import primitives
from ssl_jax.models.encoder import make_encoder


def get_config() -> ml_collections.ConfigDict:
    """MoCo v2 defaults (facebookresearch/moco main_moco.py with --mlp --moco-t 0.2)."""
    return ml_collections.ConfigDict(
        dict(
            queue_size=65536,  # --moco-k
            momentum=0.999,  # --moco-m
            temperature=0.2,  # --moco-t (0.07 for v1)
            bn_groups=8,  # per-GPU BN of 8 GPUs; 1 = global (SyncBN) and no shuffle effect
            shuffle_keys=True,  # shuffle BN for the key encoder
            symmetric=False,  # CIFAR demo's --symmetric
            loss="softmax",  # "nce": CMC repository's MoCo without --softmax (see above)
        )
    )


def make_model(config: ml_collections.ConfigDict) -> nn.Module:
    return make_encoder(
        config.model, bn_groups=config.moco.bn_groups, image_size=config.input.image_size
    )


LOSSES = ("softmax", "nce")


def _loss(config: ml_collections.ConfigDict) -> str:
    return config.moco.get("loss", "softmax")  # absent from runs made before the option


def keys_per_step(config: ml_collections.ConfigDict) -> int:
    return config.input.global_batch_size * (2 if config.moco.symmetric else 1)


def validate(config: ml_collections.ConfigDict) -> None:
    """Fails early, naming the numbers, when the queue or BN groups cannot work."""
    cfg, batch = config.moco, config.input.global_batch_size
    per_step = keys_per_step(config)
    if cfg.queue_size % per_step:
        raise ValueError(
            f"moco.queue_size={cfg.queue_size} must be a multiple of the keys enqueued per "
            f"step ({per_step} = global batch {batch}"
            + (" x 2 for the symmetric loss" if cfg.symmetric else "")
            + "), so every enqueue is one contiguous slice."
        )
    if _loss(config) not in LOSSES:
        raise ValueError(f"moco.loss={_loss(config)!r} is none of {LOSSES}.")
    if batch % cfg.bn_groups:
        raise ValueError(
            f"input.global_batch_size={batch} is not divisible by moco.bn_groups="
            f"{cfg.bn_groups} (the emulated per-GPU BatchNorm groups)."
        )


def init_extra(params: Any, batch_stats: Any, config: ml_collections.ConfigDict) -> dict:
    """Momentum encoder copy, and a queue of random unit vectors as in the reference."""
    dim, size = config.model.head.out_dim, config.moco.queue_size
    key = jax.random.fold_in(jax.random.key(config.seed), 0x70C0)
    extra = dict(
        target_params=jax.tree.map(jnp.copy, params),
        target_batch_stats=jax.tree.map(jnp.copy, batch_stats),
        queue_ptr=jnp.zeros((), jnp.int32),
    )
    if _loss(config) == "nce":
        extra.update(queue=primitives.init_bank(key, size, dim), nce_z=jnp.full((), -1.0))
    else:
        extra["queue"] = losses.l2_normalize(jax.random.normal(key, (size, dim)))  # [K, D]
    return extra


def _key(model, params, batch_stats, x, rng, shuffle: bool):
    """Keys of the momentum encoder, with the batch shuffled across BN groups."""
    perm = jax.random.permutation(rng, x.shape[0]) if shuffle else jnp.arange(x.shape[0])
    out, batch_stats = primitives.apply_train(model, params, batch_stats, x[perm])
    k = losses.l2_normalize(out["projection"])[jnp.argsort(perm)]  # restore order, [B, D]
    return jax.lax.stop_gradient(k), batch_stats


def loss_fn(params, state, batch, rng, *, model, config):
    cfg, extra = config.moco, state.extra
    target_params = primitives.ema(extra["target_params"], params, cfg.momentum)
    queue = jax.lax.stop_gradient(extra["queue"])
    views = batch["views"]  # [B, V, H, W, C]
    pairs = [(0, 1), (1, 0)] if cfg.symmetric else [(0, 1)]

    batch_stats, target_stats = state.batch_stats, extra["target_batch_stats"]
    loss, keys, features, metrics = 0.0, [], [], {}
    z = extra.get("nce_z")
    for i, (qi, ki) in enumerate(pairs):
        out, batch_stats = primitives.apply_train(model, params, batch_stats, views[:, qi])
        q = losses.l2_normalize(out["projection"])  # [B, D]
        k, target_stats = _key(
            model,
            target_params,
            target_stats,
            views[:, ki],
            jax.random.fold_in(rng, i),
            cfg.shuffle_keys,
        )
        pair_loss, logits = losses.info_nce(q, k, queue, cfg.temperature)
        if _loss(config) == "nce":
            scores = jnp.exp(logits)  # [B, 1 + K]
            rows = primitives.bank_rows(config)
            z = primitives.nce_normaliser(z, scores, rows)
            pair_loss = losses.nce(scores / z, rows)
            metrics["positive_prob"] = jnp.mean(scores[:, 0] / z)
        loss += pair_loss
        keys.append(k)
        features.append(out["embedding"])
        metrics[f"acc_{qi + 1}{ki + 1}"] = losses.top1_accuracy(
            logits, jnp.zeros(logits.shape[0], jnp.int32)
        )
    # The reference enqueues cat([k1, k2]) for the symmetric loss: k1 is the key of view 1.
    keys = jnp.concatenate(keys[::-1], axis=0)
    aux = dict(
        batch_stats=batch_stats,
        embeddings=q,
        features=jnp.concatenate(features),  # the query encoder's, view-major
        metrics=metrics,
        extra=dict(target_params=target_params, target_batch_stats=target_stats, keys=keys),
    )
    if z is not None:
        aux["extra"]["nce_z"] = z
    return loss, aux


def update_extra(extra, *, params, aux, step, config):
    """Stores the momentum encoder and replaces the oldest queue slice with the new keys."""
    del params, step, config
    new = aux["extra"]
    queue, ptr = primitives.enqueue(extra["queue"], extra["queue_ptr"], new["keys"])
    updated = dict(
        target_params=new["target_params"],
        target_batch_stats=new["target_batch_stats"],
        queue=queue,
        queue_ptr=ptr,
    )
    if "nce_z" in extra:
        updated["nce_z"] = new["nce_z"]
    return updated
