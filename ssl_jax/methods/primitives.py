"""Building blocks that several methods share, written once.

Scope: plumbing of the family's recurring mechanisms, no objective. An EMA of a target
tree (MoCo, BYOL, MoCo v3, DINO), a ring-buffer enqueue (MoCo's queue; SwAV's feature
queue), a memory bank keyed by the example's index with its rows sampled, updated and its
NCE normaliser fixed on the first step (InstDisc, CMC), one train-mode forward pass that
returns the updated BatchNorm statistics, the online-only sub-tree dropped from a tree
(the predictor, which targets lack), and the multi-crop forward (DINO, SwAV). Losses live
in ``ssl_jax/losses.py``; a method file holds the idea.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import linen as nn

PREDICTOR = "predictor"  # the online-only sub-tree of params and batch_stats


def ema(target: Any, online: Any, momentum: Any) -> Any:
    """``xi <- m xi + (1 - m) theta`` leaf by leaf.

    The stop-gradient on the online tree is redundant wherever the caller passes updated
    params outside the loss; it is written here to document that no gradient flows into
    a target through its update (DeepMind's BYOL does the same).
    """
    m = momentum
    return jax.tree.map(lambda t, p: m * t + (1.0 - m) * p, target, jax.lax.stop_gradient(online))


def enqueue(queue: jax.Array, ptr: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Writes ``keys [n, D]`` over the oldest rows of ``queue [K, D]`` at ``ptr`` and
    advances it modulo K (MoCo's _dequeue_and_enqueue; K a multiple of n, checked by the
    method's ``validate``). Returns ``(queue, ptr)``."""
    keys = jax.lax.stop_gradient(keys).astype(queue.dtype)
    queue = jax.lax.dynamic_update_slice(queue, keys, (ptr, 0))
    return queue, ((ptr + keys.shape[0]) % queue.shape[0]).astype(jnp.int32)


def bank_rows(config: Any) -> int:
    """N, the rows of a memory bank: the training split's size, which the trainer's
    resolved config carries (``schedule.num_examples``)."""
    n = config.schedule.get("num_examples")
    if not n:
        raise ValueError("a memory bank needs schedule.num_examples (train.build sets it).")
    return int(n)


def init_bank(key: jax.Array, rows: int, dim: int) -> jax.Array:
    """lemniscate's NCEAverage init, U(-s, s) with s = 1 / sqrt(dim / 3): rows of norm
    about 1, ``[rows, dim]`` float32."""
    stdv = 1.0 / (dim / 3) ** 0.5
    return jax.random.uniform(key, (rows, dim), jnp.float32, -stdv, stdv)


def bank_sample(rng: jax.Array, index: jax.Array, rows: int, num_noise: int) -> jax.Array:
    """``[B, 1 + K]`` bank rows to score: the example's own row, then K drawn uniformly
    with replacement (the reference's AliasMethod over uniform probabilities; a draw may
    hit the example itself)."""
    noise = jax.random.randint(rng, (index.shape[0], num_noise), 0, rows)
    return jnp.concatenate([index[:, None], noise], axis=1)


def update_bank(bank: jax.Array, index: jax.Array, v: jax.Array, momentum: float) -> jax.Array:
    """``V[i] <- normalize(m V[i] + (1 - m) v)`` at the batch's rows only, from the rows as
    they were before this step (the reference's proximal update)."""
    mixed = momentum * bank[index] + (1.0 - momentum) * jax.lax.stop_gradient(v)
    norm = jnp.sqrt(jnp.sum(mixed * mixed, axis=-1, keepdims=True))
    return bank.at[index].set(mixed / norm)


def nce_normaliser(z: jax.Array, scores: jax.Array, rows: int) -> jax.Array:
    """NCE's Z: ``z`` once set (> 0), else this step's estimate ``N * mean(exp scores)``,
    which the caller keeps in its state; a constant for the gradient either way."""
    return jax.lax.stop_gradient(jnp.where(z > 0, z, jnp.mean(scores) * rows))


def apply_train(
    model: nn.Module,
    params: Any,
    batch_stats: Any,
    x: Any,
    rng: jax.Array | None = None,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """``model.apply`` in train mode: BatchNorm on the batch's statistics, dropout and
    drop path keyed by ``rng``. Returns ``(output, updated batch_stats)`` (the input
    statistics when the model has none)."""
    rngs = {"dropout": rng} if rng is not None else {}
    kwargs.setdefault("train", True)
    out, updates = model.apply(
        {"params": params, "batch_stats": batch_stats},
        x,
        mutable=["batch_stats"],
        rngs=rngs,
        **kwargs,
    )
    return out, updates.get("batch_stats", batch_stats)


def without(tree: Mapping[str, Any], name: str = PREDICTOR) -> dict[str, Any]:
    """``tree`` without its top-level sub-tree ``name``: a target's share of the online
    params or statistics (all but the predictor)."""
    return {k: v for k, v in tree.items() if k != name}


def crop_groups(batch: Mapping[str, jax.Array], num_global: int) -> list[jax.Array]:
    """The batch's crops grouped by resolution, each ``[B, n, H, W, C]``: ``views``, or
    ``global_views`` then ``local_views``. The first ``num_global`` crops of the first
    group are the global crops (the teacher's or the assignment crops)."""
    groups = (
        [batch["global_views"], batch["local_views"]]
        if "global_views" in batch
        else [batch["views"]]
    )
    if groups[0].shape[1] < num_global:
        raise ValueError(
            f"the method needs {num_global} global crops per example, got "
            f"{groups[0].shape[1]} (batch shape {groups[0].shape})."
        )
    return [g for g in groups if g.shape[1] > 0]


def multicrop_forward(
    model: nn.Module,
    params: Any,
    batch_stats: Any,
    groups: Sequence[jax.Array],
    rng: jax.Array,
    head: Callable[[nn.Module, jax.Array, bool], Any],
) -> tuple[jax.Array, Any, Any]:
    """DINO's MultiCropWrapper: the backbone once per crop resolution, then ``head(module,
    features, train)`` once on the features of every crop together.

    Returns ``(features [V * B, D], head output with leaves [V, B, ...], batch_stats)``,
    crops in order (group by group, crop-major within a group), so crop v of example b is
    row ``[v, b]``.
    """
    features = []
    for i, crops in enumerate(groups):
        x = rearrange(crops, "b v h w c -> (v b) h w c")  # crop-major
        f, batch_stats = apply_train(
            model, params, batch_stats, x, jax.random.fold_in(rng, i), method="embed"
        )
        features.append(f)
    features = jnp.concatenate(features)  # [V * B, D]
    out, batch_stats = apply_train(
        model,
        params,
        batch_stats,
        features,
        jax.random.fold_in(rng, len(groups)),
        train=True,
        method=head,
    )
    b = groups[0].shape[0]
    out = jax.tree.map(lambda a: rearrange(a, "(v b) ... -> v b ...", b=b), out)
    return features, out, batch_stats
