"""SimSiam: a Siamese network with a predictor and a stop-gradient, and nothing else.

Paper: Chen & He, "Exploring Simple Siamese Representation Learning", arXiv:2011.10566.
Reference code: facebookresearch/simsiam (simsiam/builder.py, main_simsiam.py).

Objective, for the two views x1, x2 of an image, the encoder f (backbone + projection
MLP) and the prediction MLP h, with z_i = f(x_i), p_i = h(z_i) and sg the stop-gradient:

    D(p, z) = - p / ||p|| . z / ||z||              (mean over the global batch)
    L = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2

No negatives, no momentum encoder: the stop-gradient is what prevents the collapse
(paper Fig. 2; `simsiam.stop_gradient=False` reproduces the collapse). Each view takes
its own forward pass, so BatchNorm normalises each view over the global batch, as the
reference's SyncBatchNorm (always applied under its DistributedDataParallel, the only
mode it supports) does with its two encoder calls. The predictor is trained at the
constant peak lr (--fix-pred-lr of the reference README's command, paper Table 1):
the configs set `optim.constant_lr_params=("^predictor/",)`.

Differences from the reference implementation:
- The cosine lr schedule is evaluated per step; the reference updates it once per epoch.
- The projector's last Dense has no bias at all; the reference keeps a frozen bias
  (requires_grad=False) that the following affine-free BatchNorm cancels anyway.
- Weight decay is coupled SGD decay on every parameter, as torch.optim.SGD in the
  reference (the predictor included).
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
    """SimSiam defaults (facebookresearch/simsiam main_simsiam.py, README command)."""
    return ml_collections.ConfigDict(
        dict(
            # SyncBatchNorm in the reference: BN statistics over the global batch of a view.
            bn_groups=1,
            # Paper Sec. 4.1 / Fig. 2: False removes the stop-gradient and collapses.
            stop_gradient=True,
        )
    )


def make_model(config: ml_collections.ConfigDict) -> nn.Module:
    return make_encoder(
        config.model, bn_groups=config.simsiam.bn_groups, image_size=config.input.image_size
    )


def validate(config: ml_collections.ConfigDict) -> None:
    """Fails early, naming the values, when the predictor or BN groups cannot work."""
    pred, batch = config.model.predictor, config.input.global_batch_size
    if pred.num_layers < 1:
        raise ValueError(
            f"model.predictor.num_layers={pred.num_layers}: SimSiam needs a prediction MLP "
            "(the paper's h: 2 layers, e.g. 2048 -> 512 -> 2048)."
        )
    if batch % config.simsiam.bn_groups:
        raise ValueError(
            f"input.global_batch_size={batch} is not divisible by simsiam.bn_groups="
            f"{config.simsiam.bn_groups}."
        )


def init_extra(params: Any, batch_stats: Any, config: ml_collections.ConfigDict) -> dict:
    """SimSiam keeps no state besides the network: both branches share its weights."""
    del params, batch_stats, config
    return {}


def loss_fn(params, state, batch, rng, *, model, config):
    views = batch["views"]  # [B, V, H, W, C]
    stats, outs = state.batch_stats, []
    for v in range(2):  # one forward pass per view, as the reference's two encoder calls
        out, stats = primitives.apply_train(
            model, params, stats, views[:, v], jax.random.fold_in(rng, v)
        )
        outs.append(out)
    (z1, p1), (z2, p2) = ((o["projection"], o["prediction"]) for o in outs)  # [B, d] each
    # The targets: the other view's projection, with no gradient (builder.py's detach).
    if config.simsiam.stop_gradient:
        t1, t2 = jax.lax.stop_gradient(z1), jax.lax.stop_gradient(z2)
    else:
        t1, t2 = z1, z2
    loss = 0.5 * losses.negative_cosine(p1, t2) + 0.5 * losses.negative_cosine(p2, t1)
    metrics = dict(
        cos_p1_z2=jnp.mean(losses.cosine_similarity(p1, z2)),
        cos_p2_z1=jnp.mean(losses.cosine_similarity(p2, z1)),
        cos_z1_z2=jnp.mean(losses.cosine_similarity(z1, z2)),  # alignment of the views
    )
    aux = dict(
        batch_stats=stats,
        # The projection is the output that collapses (paper Fig. 2, std of z/||z||).
        embeddings=jax.lax.stop_gradient(losses.l2_normalize(z1)),
        features=jnp.concatenate([o["embedding"] for o in outs]),  # [2B, D]
        metrics=jax.lax.stop_gradient(metrics),
        extra={},
    )
    return loss, aux


def update_extra(extra, *, params, aux, step, config):
    del params, aux, step, config
    return extra
