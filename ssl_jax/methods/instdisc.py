"""InstDisc: instance discrimination against a memory bank of every example's feature.

Paper: Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination", arXiv:1805.01978. Reference code: zhirongw/lemniscate.pytorch (main.py,
cifar.py, lib/NCEAverage.py, lib/NCECriterion.py, lib/LinearAverage.py).

Objective. Each image i is its own class. Its feature v = normalize(fc(backbone(x))) (128-d)
is scored against the memory bank V [N, 128], one stored feature per training example:

    P(i|v) = exp(v_i . v / T) / Z
    NCE (num_negatives K > 0): K noise rows drawn uniformly from the bank, P_n = 1/N,
      h(i, v) = P(i|v) / (P(i|v) + K P_n),
      L = -(1/B) [ sum_b log h(i_b, v_b) + sum_{b, j} log(1 - h(n_bj, v_b)) ];
      Z is estimated once, on the first step, as N times the mean of exp(v_j . v / T) over
      the step's (1 + K) x B scores, and then kept (NCEAverage's params[2]);
    full softmax (num_negatives 0, LinearAverage, the CIFAR command): L = cross-entropy of
      v . V^T / T with the example's own row i as the label;
    bank update after the loss:  V[i] <- normalize(m V[i] + (1 - m) v),  m = 0.5.

No gradient flows into the bank or Z: the bank is state, not a parameter, and the
reference's backward treats both as constants. The bank (N x 128 float32, replicated, so
N x 512 bytes per device: about 0.66 GB for ImageNet's 1,281,167 images), Z and the step's
noise draw are in the train state or keyed by it, so a run is exact on resume and on any
device count. ``batch['index']`` is the example's row.

Differences from the reference implementation:
- The noise rows are drawn with ``jax.random.randint`` (uniform, with replacement, as the
  reference's AliasMethod over uniform probabilities); they may include the positive.
- The kNN monitor and the probes read the backbone's pooled features, as for every other
  method; the paper's kNN reads the 128-d embeddings (the bank).
- The lr schedule is per epoch like the reference's (milestones), counted in steps.
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
    """InstDisc defaults: lemniscate main.py's ImageNet flags."""
    return ml_collections.ConfigDict(
        dict(
            num_negatives=4096,  # --nce-k (0: full softmax over the bank)
            temperature=0.07,  # --nce-t (0.1 for CIFAR)
            bank_momentum=0.5,  # --nce-m
        )
    )


def make_model(config: ml_collections.ConfigDict) -> nn.Module:
    """Backbone + ``model.head`` (the fc to --low-dim 128 with its bias: one layer)."""
    return make_encoder(config.model, image_size=config.input.image_size)


def validate(config: ml_collections.ConfigDict) -> None:
    cfg = config.instdisc
    if cfg.num_negatives < 0:
        raise ValueError(
            f"instdisc.num_negatives={cfg.num_negatives} must be >= 0 (0: full softmax)."
        )


def init_extra(params: Any, batch_stats: Any, config: ml_collections.ConfigDict) -> dict:
    """NCEAverage's bank (rows of norm about 1) and Z unset (-1)."""
    del params, batch_stats
    key = jax.random.fold_in(jax.random.key(config.seed), 0xBA4C)
    bank = primitives.init_bank(key, primitives.bank_rows(config), config.model.head.out_dim)
    return dict(bank=bank, nce_z=jnp.full((), -1.0, jnp.float32))  # [N, D], scalar


def loss_fn(params, state, batch, rng, *, model, config):
    cfg, extra = config.instdisc, state.extra
    out, batch_stats = primitives.apply_train(
        model, params, state.batch_stats, batch["views"][:, 0]
    )
    v = losses.l2_normalize(out["projection"])  # [B, D]
    bank = jax.lax.stop_gradient(extra["bank"])  # [N, D]
    index = batch["index"]  # [B]
    n = bank.shape[0]
    metrics, z = {}, extra["nce_z"]
    if cfg.num_negatives > 0:
        rows = primitives.bank_sample(rng, index, n, cfg.num_negatives)  # [B, 1 + K]
        scores = jnp.exp(jnp.einsum("bkd,bd->bk", bank[rows], v) / cfg.temperature)
        z = primitives.nce_normaliser(z, scores, n)
        loss = losses.nce(scores / z, n)
        metrics["positive_prob"] = jnp.mean(scores[:, 0] / z)
    else:
        logits = v @ bank.T / cfg.temperature  # [B, N]
        loss = losses.cross_entropy(logits, index)
        metrics["instance_top1"] = losses.top1_accuracy(logits, index)
    aux = dict(
        batch_stats=batch_stats,
        embeddings=v,
        features=out["embedding"],
        metrics=metrics,
        extra=dict(features=jax.lax.stop_gradient(v), index=index, nce_z=z),
    )
    return loss, aux


def update_extra(extra, *, params, aux, step, config):
    """The bank rows of this batch move towards their new features; Z is kept."""
    del params, step
    new = aux["extra"]
    return dict(
        bank=primitives.update_bank(
            extra["bank"], new["index"], new["features"], config.instdisc.bank_momentum
        ),
        nce_z=new["nce_z"],
    )
