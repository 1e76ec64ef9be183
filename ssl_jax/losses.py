"""Pure loss math shared by the methods, always evaluated in float32.

Every function takes embeddings in the global view (the whole global batch), so the
negatives of a contrastive loss cover every device's examples whatever the device count.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

# Masks a logit out of a softmax; SimCLR's code subtracts the same constant (LARGE_NUM).
_LARGE_NUM = 1e9


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps), as torch.nn.functional.normalize."""
    x = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))
    return x / jnp.maximum(norm, eps)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy with integer labels."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def info_nce(
    q: jax.Array, k: jax.Array, queue: jax.Array, temperature: float
) -> tuple[jax.Array, jax.Array]:
    """MoCo's InfoNCE: the positive key k against the K queued negatives.

    L = -mean_i log( exp(q_i.k_i / T) / (exp(q_i.k_i / T) + sum_j exp(q_i.n_j / T)) )

    Args:
      q: queries [B, D], L2-normalised.
      k: positive keys [B, D], L2-normalised, already stop-gradient.
      queue: negatives [K, D], L2-normalised.
      temperature: T.

    Returns:
      (loss, logits [B, 1 + K]) where column 0 holds the positive.
    """
    chex.assert_rank([q, k, queue], 2)
    chex.assert_equal_shape([q, k])
    q, k, queue = (x.astype(jnp.float32) for x in (q, k, queue))
    l_pos = jnp.einsum("bd,bd->b", q, k)[:, None]  # [B, 1]
    l_neg = jnp.einsum("bd,kd->bk", q, queue)  # [B, K]
    logits = jnp.concatenate([l_pos, l_neg], axis=1) / temperature  # [B, 1+K]
    labels = jnp.zeros(q.shape[0], dtype=jnp.int32)
    return cross_entropy(logits, labels), logits


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
    """SimCLR's NT-Xent over the 2N views of the global batch.

    For anchor z1_i the positive is z2_i; the negatives are the other 2N - 2 views of
    the global batch. As in google-research/simclr the loss is the sum of the two
    directions' means, loss_a + loss_b, i.e. twice the paper's average over 2N anchors.

    Returns:
      (loss, logits_ab [N, N]) for the contrastive-accuracy metric.
    """
    chex.assert_rank([z1, z2], 2)
    chex.assert_equal_shape([z1, z2])
    z1, z2 = l2_normalize(z1), l2_normalize(z2)
    n = z1.shape[0]
    self_mask = jnp.eye(n, dtype=jnp.float32) * _LARGE_NUM
    logits_aa = z1 @ z1.T / temperature - self_mask  # [N, N]
    logits_bb = z2 @ z2.T / temperature - self_mask
    logits_ab = z1 @ z2.T / temperature
    logits_ba = z2 @ z1.T / temperature
    labels = jnp.arange(n)
    loss_a = cross_entropy(jnp.concatenate([logits_ab, logits_aa], axis=1), labels)
    loss_b = cross_entropy(jnp.concatenate([logits_ba, logits_bb], axis=1), labels)
    return loss_a + loss_b, logits_ab


def top1_accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of rows whose arg-max is the label (in %)."""
    return 100.0 * jnp.mean(jnp.argmax(logits, axis=-1) == labels)
