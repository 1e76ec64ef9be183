"""Supervised training of a classifier on a (pretrained) encoder: MAE's fine-tuning and
linear-probe protocols.

Paper: He et al., "Masked Autoencoders Are Scalable Vision Learners", arXiv:2111.06377,
Sec. 4 and App. A.1-A.2. Reference code: facebookresearch/mae main_finetune.py,
main_linprobe.py, util/lr_decay.py, util/lars.py, FINETUNE.md, LINPROBE.md; timm's
``Mixup`` and ``SoftTargetCrossEntropy`` (timm/data/mixup.py, timm/loss/cross_entropy.py).

Model: ``backbone`` (``model.backbone``, any ssl_jax backbone) + ``head``; the encoder of
any ssl_jax run is loaded from ``supervised.init_from`` (a workdir, see
``ssl_jax/pretrained.py``) before the first step.

``supervised.protocol``:

- ``'finetune'`` (main_finetune.py): everything is trained. Head: Dense(K) with kernel
  trunc-normal std 2e-5 and zero bias (``trunc_normal_(model.head.weight, std=2e-5)``);
  the ViT pools with ``model.vit.pool`` ('gap', MAE's default ``--global_pool``) and uses
  stochastic depth ``model.vit.drop_path``. Mixup / CutMix and label smoothing eps
  (``ssl_jax/data/mix.py``, timm semantics) give soft targets y~, and the loss is
  timm's SoftTargetCrossEntropy

      L = mean_b  sum_k  -y~_bk log softmax(z_b)_k .

  With both alphas 0 this is LabelSmoothingCrossEntropy (eps > 0) or plain cross-entropy,
  the criteria main_finetune falls back to. Layer-wise lr decay is ``optim.layer_decay``.
- ``'linear'`` (main_linprobe.py): the backbone is frozen: applied in eval mode
  (``train=False``), ``stop_gradient`` on its features, and ``optim.frozen_params`` must
  cover ``backbone/`` so the optimizer neither updates it nor keeps state for it. Head:
  ``BatchNorm1d(D, affine=False, eps=1e-6)`` then Dense(K) with kernel trunc-normal std
  0.01 (main_linprobe's ``model.head = Sequential(BatchNorm1d(..., affine=False,
  eps=1e-6), model.head)``); features from the class token (``--cls_token``); plain
  cross-entropy (no mixup, no smoothing); LARS (util/lars.py).

Metrics: ``top1`` (train batch, against the hard labels, before mixing). The collapse
diagnostics get the L2-normalised backbone features. ``embed`` returns the backbone
features (kNN monitor, offline linear probe); ``classify`` the logits, whose top-1 on
``input.eval_test_split`` the final report lists beside them (``classifier_protocol``).

Differences from the reference implementation:
- No RandAugment (``--aa rand-m9-mstd0.5-inc1``) nor random erasing (``--reprob 0.25``) in
  fine-tuning: the views are one RandomResizedCrop + flip (``input.views.view1``).
- The ViT's 'gap' pool reuses the encoder's final LayerNorm where MAE adds a fresh
  ``fc_norm`` (see ``ssl_jax/models/vit.py``), and a sin-cos position embedding stays fixed
  where MAE's fine-tuned timm ViT learns its copy of it.
- Mixup pairs the global batch with its reverse (timm: each GPU's batch), and the linear
  head's BatchNorm normalises over the global batch (main_linprobe: per GPU).
- Evaluation is the top-1 of the final weights, not the best epoch's.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from ssl_jax import losses, optim, pretrained
from ssl_jax.data import mix
from ssl_jax.methods import primitives
from ssl_jax.models import make_backbone

PROTOCOLS = ("finetune", "linear")


def _trunc_normal(std: float):
    # timm trunc_normal_(std) cuts at +-2 absolute, i.e. effectively a normal at these stds.
    return nn.initializers.truncated_normal(std, lower=-2.0 / std, upper=2.0 / std)


def get_config() -> ml_collections.ConfigDict:
    """MAE main_finetune.py defaults (the linear presets change protocol and mixing)."""
    return ml_collections.ConfigDict(
        dict(
            protocol="finetune",
            num_classes=1000,  # --nb_classes
            init_from="",  # workdir of a pretraining run; '' = random init
            smoothing=0.1,  # --smoothing
            mixup_alpha=0.8,  # --mixup (FINETUNE.md)
            cutmix_alpha=1.0,  # --cutmix (FINETUNE.md)
            mix_prob=1.0,  # --mixup_prob
            switch_prob=0.5,  # --mixup_switch_prob
            finetune_head_std=2e-5,  # trunc_normal_(model.head.weight, std=2e-5)
            linear_head_std=0.01,  # main_linprobe: trunc_normal_(..., std=0.01)
            linear_bn_epsilon=1e-6,  # BatchNorm1d(affine=False, eps=1e-6)
        )
    )


class ClassifierHead(nn.Module):
    """Dense(K), optionally after a BatchNorm without scale and offset; float32 logits."""

    num_classes: int
    init_std: float
    batch_norm: bool = False
    bn_momentum: float = 0.9  # flax convention: PyTorch momentum 0.1
    bn_epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        x = x.astype(jnp.float32)
        if self.batch_norm:
            x = nn.BatchNorm(
                use_running_average=not train,
                use_scale=False,
                use_bias=False,
                momentum=self.bn_momentum,
                epsilon=self.bn_epsilon,
                name="bn",
            )(x)
        dense = nn.Dense(
            self.num_classes,
            kernel_init=_trunc_normal(self.init_std),
            bias_init=nn.initializers.zeros,
            name="fc",
        )
        return dense(x)  # [B, K]


class Classifier(nn.Module):
    """``__call__`` -> ``{'embedding': [B, D], 'logits': [B, K]}`` (float32)."""

    backbone: nn.Module
    head: nn.Module
    frozen_backbone: bool = False

    def __call__(self, x: jnp.ndarray, train: bool) -> dict[str, jnp.ndarray]:
        # A frozen backbone runs in eval mode (no drop path; a ResNet's BN uses its running
        # statistics, as MoCo's main_lincls.py model.eval()); main_linprobe's ViT has
        # drop_path 0, so its features are the eval-mode ones too. stop_gradient keeps
        # every gradient out of it.
        embedding = self.backbone(x, train and not self.frozen_backbone).astype(jnp.float32)
        if self.frozen_backbone:
            embedding = jax.lax.stop_gradient(embedding)
        return {"embedding": embedding, "logits": self.head(embedding, train)}

    def embed(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        return self.backbone(x, train).astype(jnp.float32)  # [B, D]

    def classify(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        return self(x, train)["logits"]  # [B, K]


def make_model(config: ml_collections.ConfigDict) -> nn.Module:
    cfg = config.supervised
    linear = cfg.protocol == "linear"
    return Classifier(
        backbone=make_backbone(config.model, bn_groups=1, image_size=config.input.image_size),
        head=ClassifierHead(
            num_classes=cfg.num_classes,
            init_std=cfg.linear_head_std if linear else cfg.finetune_head_std,
            batch_norm=linear,
            bn_momentum=config.model.bn_momentum,
            bn_epsilon=cfg.linear_bn_epsilon,
        ),
        frozen_backbone=linear,
    )


def validate(config: ml_collections.ConfigDict, params: Any = None) -> None:
    cfg = config.supervised
    if cfg.protocol not in PROTOCOLS:
        raise ValueError(f"supervised.protocol={cfg.protocol!r}; valid: {PROTOCOLS}.")
    if cfg.num_classes < 2:
        raise ValueError(f"supervised.num_classes={cfg.num_classes} must be >= 2.")
    if not 0.0 <= cfg.smoothing < 1.0:
        raise ValueError(f"supervised.smoothing={cfg.smoothing} must be in [0, 1).")
    if cfg.protocol != "linear":
        return
    if cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0 or cfg.smoothing > 0:
        raise ValueError(
            f"the linear protocol trains with plain cross-entropy (main_linprobe.py), but "
            f"supervised.mixup_alpha={cfg.mixup_alpha}, cutmix_alpha={cfg.cutmix_alpha}, "
            f"smoothing={cfg.smoothing}; set them to 0."
        )
    if params is not None:
        labels = optim.param_labels(config.optim)({"backbone": params["backbone"]})
        moving = [
            optim.path_name(p)
            for p, label in jax.tree_util.tree_leaves_with_path(labels)
            if label != "frozen"
        ]
        if moving:
            raise ValueError(
                f"the linear protocol freezes the backbone, but optim.frozen_params="
                f"{tuple(config.optim.frozen_params)} leaves {moving[:3]} trainable; add "
                "'^backbone/'."
            )


def init_extra(params: Any, batch_stats: Any, config: ml_collections.ConfigDict) -> dict:
    del batch_stats
    validate(config, params)
    return {}


def classifier_protocol(config: ml_collections.ConfigDict) -> str:
    """The text the final report writes beside the classifier's top-1."""
    if config.supervised.protocol == "linear":
        return "linear probe (MAE protocol) top-1"
    return "fine-tuned classifier top-1"


def load_pretrained(state: Any, config: ml_collections.ConfigDict) -> Any:
    """The fresh train state with the backbone of ``supervised.init_from`` (if set)."""
    workdir = config.supervised.init_from
    if not workdir:
        return state
    try:
        backbone, stats, info = pretrained.load_backbone(workdir, state.params, state.batch_stats)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"supervised.init_from={workdir!r}: {e}") from None
    print(
        f"Loaded the {info['params']} encoder of {info['method']!r} at step {info['step']} "
        f"from {workdir}"
    )
    params = {**state.params, "backbone": backbone}
    batch_stats = dict(state.batch_stats)
    if stats:
        batch_stats["backbone"] = stats
    return state.replace(params=params, batch_stats=batch_stats)


def mix_config(config: ml_collections.ConfigDict) -> mix.MixConfig:
    return mix.MixConfig(**{name: config.supervised[name] for name in mix.MixConfig._fields})


def loss_fn(params, state, batch, rng, *, model, config):
    cfg = config.supervised
    x = batch["views"][:, 0]  # [B, S, S, C]: the single augmented view
    labels = batch["label"]  # [B]
    chex.assert_rank(x, 4)
    chex.assert_shape(labels, (x.shape[0],))
    rng_mix, rng_drop = jax.random.split(rng)
    x, targets, lam = mix.mix_batch(rng_mix, x, labels, cfg.num_classes, mix_config(config))
    out, batch_stats = primitives.apply_train(model, params, state.batch_stats, x, rng_drop)
    logits = out["logits"]  # [B, K]
    loss = losses.soft_cross_entropy(logits, targets)
    aux = dict(
        batch_stats=batch_stats,
        embeddings=losses.l2_normalize(out["embedding"]),
        features=out["embedding"],  # of the mixed images
        metrics=dict(top1=losses.top1_accuracy(logits, labels), mix_lam=lam),
        extra={},
    )
    return loss, aux


def update_extra(extra, *, params, aux, step, config):
    del params, aux, step, config
    return extra
