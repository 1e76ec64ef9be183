"""CMC: contrastive multiview coding, the L and ab channels of an image as two views.

Paper: Tian et al., "Contrastive Multiview Coding", arXiv:1906.05849. Reference code:
HobbitLong/CMC (train_CMC.py, NCE/NCEAverage.py, NCE/NCECriterion.py, models/resnet.py).

Objective. An image in Lab is split into L and ab; each goes through its own encoder and
fc to unit 128-d features l and ab (``models/lab.py``). Each view is contrasted with the
other view's memory bank (V_l, V_ab [N, 128], one row per training example):

    NCE (the default, NCEAverage + NCECriterion per direction): with K rows drawn
      uniformly plus the example's own row i,
      P_ab(j | l) = exp(V_ab[j] . l / T) / Z_l,   P_l(j | ab) = exp(V_l[j] . ab / T) / Z_ab,
      L = NCE(P_ab(. | l)) + NCE(P_l(. | ab)) with InstDisc's NCE (losses.nce), each Z
      estimated once on the first step as N times the mean of its exp scores;
    softmax (--softmax, NCESoftmaxLoss): the cross-entropy of the [B, 1 + K] scores / T
      with the example's own row as the label, per direction, summed;
    bank update:  V_l[i] <- normalize(m V_l[i] + (1 - m) l), likewise V_ab, m = 0.5.

No gradient reaches the banks or the Zs; the banks are train state (2 N x 512 bytes per
device at 128-d), keyed by ``batch['index']``, so a run is exact on resume and on any
device count. The kNN monitor, the probes and the export read the concatenation of both
encoders' pooled features, the paper's evaluation protocol.

Differences from the reference implementation:
- The RGB -> Lab conversion runs on the device inside the model, after the uint8 image is
  cropped and flipped (the reference converts the augmented PIL image with skimage), so
  every pipeline, evaluation and export stays RGB.
- The Lab white point is the XYZ of RGB white (the matrix's row sums), not skimage's
  rounded D65 coordinates: gray is then exactly a = b = 0 (skimage: |a|, |b| < 4e-3).
- BatchNorm is over the global batch (the reference's per-GPU DataParallel BN).
- Only the memory-bank form; the reference's momentum-encoder form (train_moco_ins.py
  --moco) is for RGB instance discrimination and is not implemented for two views here.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from ssl_jax import losses
from ssl_jax.methods import primitives
from ssl_jax.models import RESNETS, make_backbone
from ssl_jax.models.encoder import Encoder, make_head
from ssl_jax.models.lab import LabBackbone, TwoViewHead

VIEWS = ("l", "ab")  # view 0: the L channel, view 1: the ab channels


def get_config() -> ml_collections.ConfigDict:
    """CMC defaults: train_CMC.py's flags; resnet50v1's half-width encoders."""
    return ml_collections.ConfigDict(
        dict(
            num_negatives=16384,  # --nce_k
            temperature=0.07,  # --nce_t
            bank_momentum=0.5,  # --nce_m
            softmax=False,  # --softmax: NCESoftmaxLoss instead of NCE
            width=0.5,  # MyResNetsCMC resnet50v1 (v2: 1.0, v3: 2.0) per view
        )
    )


def make_model(config: ml_collections.ConfigDict) -> nn.Module:
    """Two ResNets of ``cmc.width`` times the backbone's width (L: 1 input channel, ab: 2)
    and two ``model.head`` fcs to 128 (models/resnet.py: Linear(base * 8 * expansion,
    low_dim) then Normalize(2))."""
    base = make_backbone(config.model, image_size=config.input.image_size)
    tower = base.clone(width=round(base.width * config.cmc.width))
    return Encoder(
        backbone=LabBackbone(l_net=tower.clone(), ab_net=tower.clone()),
        head=TwoViewHead(l_head=make_head(config.model), ab_head=make_head(config.model)),
    )


def validate(config: ml_collections.ConfigDict) -> None:
    cfg = config.cmc
    if config.model.backbone not in RESNETS:
        raise ValueError(
            f"model.backbone={config.model.backbone!r}: CMC's two encoders are ResNets "
            f"({', '.join(sorted(RESNETS))})."
        )
    if cfg.num_negatives < 1:
        raise ValueError(f"cmc.num_negatives={cfg.num_negatives} must be >= 1.")
    if round(64 * cfg.width) < 1 or cfg.width <= 0:
        raise ValueError(f"cmc.width={cfg.width} must be > 0 (0.5: resnet50v1).")
    if tuple(config.input.mean) != (0.0, 0.0, 0.0) or tuple(config.input.std) != (1.0, 1.0, 1.0):
        raise ValueError(
            f"input.mean={tuple(config.input.mean)} / input.std={tuple(config.input.std)}: "
            "CMC's network converts RGB in [0, 1] to Lab itself; use mean (0, 0, 0), std (1, 1, 1)."
        )


def init_extra(params: Any, batch_stats: Any, config: ml_collections.ConfigDict) -> dict:
    """A bank per view (NCEAverage's memory_l / memory_ab) and a Z per direction, unset."""
    del params, batch_stats
    rows, dim = primitives.bank_rows(config), config.model.head.out_dim
    key = jax.random.fold_in(jax.random.key(config.seed), 0xC3C)
    keys = jax.random.split(key, len(VIEWS))
    extra = {
        f"bank_{v}": primitives.init_bank(k, rows, dim) for v, k in zip(VIEWS, keys, strict=True)
    }
    return {**extra, **{f"nce_z_{v}": jnp.full((), -1.0, jnp.float32) for v in VIEWS}}


def loss_fn(params, state, batch, rng, *, model, config):
    cfg, extra = config.cmc, state.extra
    out, batch_stats = primitives.apply_train(
        model, params, state.batch_stats, batch["views"][:, 0]
    )
    z = losses.l2_normalize(out["projection"])  # [B, 2, d]
    features = {"l": z[:, 0], "ab": z[:, 1]}
    index = batch["index"]
    rows_n = extra["bank_l"].shape[0]
    rows = primitives.bank_sample(rng, index, rows_n, cfg.num_negatives)  # [B, 1 + K]
    loss, metrics, new_z = 0.0, {}, {}
    # Each view against the other view's bank: l scored by V_ab (out_l), ab by V_l.
    for view, other in (("l", "ab"), ("ab", "l")):
        bank = jax.lax.stop_gradient(extra[f"bank_{other}"])
        logits = jnp.einsum("bkd,bd->bk", bank[rows], features[view]) / cfg.temperature
        if cfg.softmax:
            view_loss = losses.cross_entropy(logits, jnp.zeros(index.shape, jnp.int32))
            new_z[view] = extra[f"nce_z_{view}"]
        else:
            scores = jnp.exp(logits)
            new_z[view] = primitives.nce_normaliser(extra[f"nce_z_{view}"], scores, rows_n)
            view_loss = losses.nce(scores / new_z[view], rows_n)
        loss += view_loss
        metrics[f"loss_{view}"] = view_loss
    aux = dict(
        batch_stats=batch_stats,
        embeddings=z[:, 0],
        features=out["embedding"],  # both encoders, concatenated: what CMC evaluates
        metrics=metrics,
        extra=dict(features=features, index=index, nce_z=new_z),
    )
    return loss, aux


def update_extra(extra, *, params, aux, step, config):
    """Each view's bank rows of this batch move towards the view's new features."""
    del params, step
    new, m = aux["extra"], config.cmc.bank_momentum
    banks = {
        f"bank_{v}": primitives.update_bank(extra[f"bank_{v}"], new["index"], new["features"][v], m)
        for v in VIEWS
    }
    return {**banks, **{f"nce_z_{v}": new["nce_z"][v] for v in VIEWS}}
