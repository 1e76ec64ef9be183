"""BYOL: an online network predicts the projection of a slowly moving target network.

Paper: Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised
Learning", arXiv:2006.07733. Reference code: deepmind-research byol/ (byol_experiment.py,
configs/byol.py, utils/schedules.py, utils/optimizers.py, utils/networks.py).

Objective, with the online network (backbone, projector g, predictor q) of params theta,
the target network (backbone, projector) of params xi, views v1, v2, z' the target's
projections and sg the stop-gradient:

    l(a, b) = || a / ||a|| - b / ||b|| ||^2 = 2 - 2 cos(a, b)
    L = mean_i [ l(q(g(v1_i)), sg(z'(v2_i))) + l(q(g(v2_i)), sg(z'(v1_i))) ]
    xi <- tau_k xi + (1 - tau_k) theta,   tau_k = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2

The two view orders are summed and averaged over the global batch, exactly as the
reference (repr_loss = mean of the per-example sum; a value in [0, 8]). The target is
updated after the online step, with the updated online params and tau of the step k
being taken (0-based, K = total steps): tau_0 = tau_base, tau_K = 1 (reached after the
last update, whose tau is 1 - (1 - tau_base)(1 + cos(pi (K - 1) / K)) / 2). Both networks
run BatchNorm in train mode on each view over the global batch (the reference's
cross-replica BN), each with its own running statistics (target stats kept in extra).

Differences from the reference implementation:
- The target starts as a copy of the online network; the reference initialises it from a
  different random key ("no significant difference" in its comment).
- The target holds no predictor: the reference builds (and averages) one, but never uses
  its output.
- The MLPs' hidden Dense has no bias: BatchNorm follows it, whose offset makes a bias
  redundant (haiku's hk.Linear(with_bias=True) there). The last Dense has no bias, as in
  the reference. Dense kernels use PyTorch's default init, not haiku's truncated normal.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from ssl_jax import losses, schedules
from ssl_jax.methods import primitives
from ssl_jax.models.encoder import make_encoder


def get_config() -> ml_collections.ConfigDict:
    """BYOL defaults (deepmind-research byol/configs/byol.py, 1000 epochs)."""
    return ml_collections.ConfigDict(
        dict(
            tau_base=0.996,  # base_target_ema: 0.996 at 1000 epochs, 0.99 at 100/300
            bn_groups=1,  # cross_replica_axis: BN statistics over the global batch
        )
    )


def make_model(config: ml_collections.ConfigDict) -> nn.Module:
    return make_encoder(
        config.model, bn_groups=config.byol.bn_groups, image_size=config.input.image_size
    )


def validate(config: ml_collections.ConfigDict) -> None:
    """Fails early, naming the values, when the predictor, tau or BN groups cannot work."""
    pred, batch, cfg = config.model.predictor, config.input.global_batch_size, config.byol
    if pred.num_layers < 1:
        raise ValueError(
            f"model.predictor.num_layers={pred.num_layers}: BYOL needs the online predictor "
            "q (2 layers, 4096 hidden, 256 out in the paper)."
        )
    if not 0.0 <= cfg.tau_base <= 1.0:
        raise ValueError(f"byol.tau_base={cfg.tau_base} must lie in [0, 1].")
    if batch % cfg.bn_groups:
        raise ValueError(
            f"input.global_batch_size={batch} is not divisible by byol.bn_groups={cfg.bn_groups}."
        )


def init_extra(params: Any, batch_stats: Any, config: ml_collections.ConfigDict) -> dict:
    """The target network: a copy of the online backbone and projector."""
    del config
    return dict(
        target_params=jax.tree.map(jnp.copy, primitives.without(params)),
        target_batch_stats=jax.tree.map(jnp.copy, primitives.without(batch_stats)),
    )


def target_decay(step: Any, config: ml_collections.ConfigDict) -> jax.Array:
    """tau_k: tau_base at step 0, increasing along a half cosine to 1 at total_steps."""
    return schedules.cosine_increase(config.byol.tau_base, 1.0, step, config.schedule.total_steps)


def loss_fn(params, state, batch, rng, *, model, config):
    views = batch["views"]  # [B, V, H, W, C]
    extra = state.extra
    # No gradient reaches the target through the loss (its update is the EMA below).
    target_params = jax.lax.stop_gradient(extra["target_params"])
    online_stats, target_stats = state.batch_stats, extra["target_batch_stats"]
    q, z, zt, features = [], [], [], []
    for v in range(2):
        key = jax.random.fold_in(rng, v)
        out, online_stats = primitives.apply_train(
            model, params, online_stats, views[:, v], key, predict=True
        )
        q.append(out["prediction"])  # [B, d]
        z.append(out["projection"])
        features.append(out["embedding"])
        out_t, target_stats = primitives.apply_train(
            model,
            target_params,
            target_stats,
            views[:, v],
            jax.random.fold_in(key, 1),
            predict=False,
        )
        zt.append(jax.lax.stop_gradient(out_t["projection"]))  # [B, d]
    loss = losses.normalized_l2(q[0], zt[1]) + losses.normalized_l2(q[1], zt[0])
    metrics = dict(
        tau=target_decay(state.step, config),
        cos_q1_zt2=jnp.mean(losses.cosine_similarity(q[0], zt[1])),
        cos_q2_zt1=jnp.mean(losses.cosine_similarity(q[1], zt[0])),
    )
    aux = dict(
        batch_stats=online_stats,
        embeddings=jax.lax.stop_gradient(losses.l2_normalize(z[0])),
        # The reference's online classifier reads the online backbone's view-1 embedding.
        features=features[0],  # [B, D]
        metrics=jax.lax.stop_gradient(metrics),
        extra=dict(target_batch_stats=target_stats),
    )
    return loss, aux


def update_extra(extra, *, params, aux, step, config):
    """xi <- tau_k xi + (1 - tau_k) theta with the online params after this step's update
    (byol_experiment.py _update_fn)."""
    tau = target_decay(step, config)
    return dict(
        target_params=primitives.ema(extra["target_params"], primitives.without(params), tau),
        target_batch_stats=aux["extra"]["target_batch_stats"],
    )
