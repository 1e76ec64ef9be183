"""Collapse diagnostics of a batch of embeddings, logged every step for every method.

- ``embedding_std``: the mean over dimensions of the per-dimension standard deviation of
  the L2-normalised outputs (SimSiam, arXiv:2011.10566, Fig. 2): about ``1/sqrt(d)`` for
  outputs spread over the unit sphere, 0 when every input maps to one vector.
- ``effective_rank``: ``exp(H(p))`` with ``p`` the normalised singular values of the batch
  of L2-normalised outputs (Roy & Vetterli 2007; RankMe, arXiv:2210.02885): up to
  ``min(B, d)`` when the outputs use many directions, 1 when they have collapsed onto one
  (complete collapse) and small when they span only a few (dimensional collapse).
"""

from __future__ import annotations

import jax.numpy as jnp

from ssl_jax.losses import l2_normalize

# Fewer than this many effective directions in a batch is a collapse worth a warning.
COLLAPSED_RANK = 2.0


def embedding_std(z: jnp.ndarray) -> jnp.ndarray:
    """Mean per-dimension std of the L2-normalised rows of ``z [B, d]``."""
    return jnp.mean(jnp.std(l2_normalize(z.astype(jnp.float32)), axis=0))


def effective_rank(z: jnp.ndarray, eps: float = 1e-7) -> jnp.ndarray:
    """``exp`` of the entropy of the normalised singular values of ``z [B, d]``'s
    L2-normalised rows. Singular values come from the smaller Gram matrix, so a wide
    head (DINO's 65,536 outputs) costs ``B^2 d``, not an SVD of ``[B, d]``."""
    z = l2_normalize(z.astype(jnp.float32))
    gram = z @ z.T if z.shape[0] <= z.shape[1] else z.T @ z  # [min(B, d)]^2
    s = jnp.sqrt(jnp.clip(jnp.linalg.eigvalsh(gram), 0.0))  # singular values
    p = s / (jnp.sum(s) + eps) + eps
    return jnp.exp(-jnp.sum(p * jnp.log(p)))


def collapse_warning(step: int, metrics: dict[str, float]) -> str | None:
    """A sentence when the logged diagnostics say the embeddings have collapsed."""
    rank = metrics.get("effective_rank")
    if rank is None or rank >= COLLAPSED_RANK:
        return None
    std = metrics.get("collapse_std", float("nan"))
    return (
        f"step {step}: the embeddings look collapsed: effective rank {rank:.2f} "
        f"(< {COLLAPSED_RANK}; a healthy batch spans many directions) and per-dimension "
        f"std {std:.4f} (about 1/sqrt(d) when healthy, 0 when collapsed). Check the "
        "stop-gradient / predictor / EMA settings, the learning rate and the augmentation."
    )
