"""DINO: self-distillation with no labels, a student matching an EMA teacher's outputs.

Paper: Caron et al., "Emerging Properties in Self-Supervised Vision Transformers",
arXiv:2104.14294. Reference code: facebookresearch/dino (main_dino.py, utils.py,
vision_transformer.py DINOHead).

Objective. The teacher sees the two global crops, the student every crop (global and
local); g = head(backbone(x)) are K-way logits. With the center c and temperatures tau:

    P_t(x) = softmax((g_t(x) - c) / tau_t),   P_s(x) = softmax(g_s(x) / tau_s)
    L = mean over pairs (i global, v any crop, v != i) of  mean_batch  H(P_t(x_i), P_s(x_v))
    c <- m_c c + (1 - m_c) mean over the global batch and both global crops of g_t
    theta_t <- m theta_t + (1 - m) theta_s     (after the student's step)

tau_s = 0.1; tau_t warms up linearly 0.04 -> 0.07 over the first 30 epochs, indexed by
epoch as DINOLoss does (np.linspace over the warm-up epochs, so epoch W - 1 reaches the
final value), with epoch = floor(step * epochs / total_steps), the epochs of the (possibly
compressed) step schedule; m_c = 0.9; m goes 0.996 -> 1 with a per-step cosine. The
student's backbone runs once per crop resolution (global, local) as MultiCropWrapper does,
then the head runs on all crops together; BatchNorm (ResNet, optional head BN) is global
(the reference's SyncBN), and the teacher uses batch statistics too (it is never put in
eval mode there) and keeps its own running statistics (the EMA covers parameters only).

The collapse diagnostics get the L2-normalised bottleneck of global crop 1: the unit
vectors the prototypes score, so the per-dimension std reads as for the other methods
(about 1/sqrt(256) when spread out, 0 when collapsed). The K-way logits would put it near
1/sqrt(65536) even when healthy. Metrics: the teacher entropy h(P_t) and KL(P_t || P_s)
(paper Fig. 7: a uniform collapse drives KL to 0 with h(P_t) -> log K), the center norm.

The kNN monitor, the linear probes and the export evaluate the teacher backbone
(``ENCODER``), as the paper reports and eval_knn.py / eval_linear.py do by default
(--checkpoint_key teacher); the online linear probe reads the teacher's features of the
two global crops.

Differences from the reference implementation:
- The prototypes layer and the loss run in float32 (the reference runs in fp16 autocast).
- With a `views` batch (no multi-crop) the first two views are the global crops and any
  further same-size views are student-only crops.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from einops import rearrange
from flax import linen as nn

from ssl_jax import losses, schedules
from ssl_jax.methods import EncoderAt, primitives
from ssl_jax.models import make_backbone
from ssl_jax.models.encoder import Encoder
from ssl_jax.models.heads import DINOHead

NUM_GLOBAL = 2  # the teacher's crops: the first two of every example
# The kNN monitor, the probes, the export and supervised.init_from read the teacher.
ENCODER = EncoderAt("extra/target_params", "extra/target_batch_stats")


def get_config() -> ml_collections.ConfigDict:
    """DINO defaults: facebookresearch/dino main_dino.py and the paper's Sec. 4.1 / App."""
    return ml_collections.ConfigDict(
        dict(
            bottleneck_dim=256,  # DINOHead bottleneck_dim
            norm_last_layer=True,  # --norm_last_layer (False in the 'boosted' ViT-S runs)
            momentum_teacher=0.996,  # --momentum_teacher, cosine to 1 per step
            student_temp=0.1,  # DINOLoss student_temp
            warmup_teacher_temp=0.04,  # --warmup_teacher_temp
            teacher_temp=0.07,  # paper: 0.04 -> 0.07 (main_dino's default is 0.04)
            warmup_teacher_temp_epochs=30,  # paper (main_dino's default is 0)
            center_momentum=0.9,  # DINOLoss center_momentum
        )
    )


def make_model(config: ml_collections.ConfigDict, teacher: bool = False) -> nn.Module:
    """Backbone + DINOHead (``model.head``: num_layers, hidden_dim, out_dim, use_bn =
    --use_bn_in_head; last_bias is not used). The teacher is built without stochastic
    depth, as main_dino's; both share one parameter tree."""
    model_cfg = config.model
    if teacher and "vit" in model_cfg:
        model_cfg = model_cfg.copy_and_resolve_references()
        with model_cfg.unlocked():
            model_cfg.vit.drop_path = 0.0
    head = config.model.head
    return Encoder(
        backbone=make_backbone(model_cfg, bn_groups=1, image_size=config.input.image_size),
        head=DINOHead(
            out_dim=head.out_dim,
            hidden_dim=head.hidden_dim,
            bottleneck_dim=config.dino.bottleneck_dim,
            num_layers=head.num_layers,
            use_bn=head.use_bn,
            norm_last_layer=config.dino.norm_last_layer,
            bn_momentum=config.model.bn_momentum,
            bn_epsilon=config.model.bn_epsilon,
            dtype=jnp.dtype(config.model.dtype),
        ),
    )


def validate(config: ml_collections.ConfigDict) -> None:
    cfg, head = config.dino, config.model.head
    if head.last_bn != "none":
        raise ValueError(
            f"model.head.last_bn={head.last_bn!r}: the DINO head has no final BN (its "
            "bottleneck is L2-normalised); use 'none'."
        )
    for name in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
        if cfg[name] <= 0:
            raise ValueError(f"dino.{name}={cfg[name]} must be > 0.")
    if not 0 <= cfg.center_momentum < 1 or not 0 <= cfg.momentum_teacher <= 1:
        raise ValueError(
            f"dino.center_momentum={cfg.center_momentum} must be in [0, 1) and "
            f"dino.momentum_teacher={cfg.momentum_teacher} in [0, 1]."
        )


def init_extra(params: Any, batch_stats: Any, config: ml_collections.ConfigDict) -> dict:
    """The teacher starts as a copy of the student; the center at zero."""
    return dict(
        target_params=jax.tree.map(jnp.copy, params),
        target_batch_stats=jax.tree.map(jnp.copy, batch_stats),
        center=jnp.zeros((config.model.head.out_dim,), jnp.float32),  # [K]
    )


def teacher_temperature(step: Any, config: ml_collections.ConfigDict) -> jax.Array:
    """DINOLoss.teacher_temp_schedule: linspace(warmup, final, W)[epoch], then final."""
    cfg, sched = config.dino, config.schedule
    warm = int(cfg.warmup_teacher_temp_epochs)
    if warm <= 0:
        return jnp.asarray(cfg.teacher_temp, jnp.float32)
    epoch = jnp.floor(jnp.asarray(step, jnp.float32) * sched.epochs / sched.total_steps)
    return schedules.linear_warmup_then_constant(
        cfg.warmup_teacher_temp, cfg.teacher_temp, epoch, warm - 1
    )


def teacher_momentum(step: Any, config: ml_collections.ConfigDict) -> jax.Array:
    """main_dino's momentum_schedule: cosine from momentum_teacher to 1 over training."""
    return schedules.cosine_increase(
        config.dino.momentum_teacher, 1.0, step, config.schedule.total_steps
    )


def update_center(center: jax.Array, teacher_logits: jax.Array, momentum: float) -> jax.Array:
    """DINOLoss.update_center: EMA of the teacher logits' mean over all [N, K] rows."""
    batch_center = jnp.mean(teacher_logits.astype(jnp.float32), axis=0)  # [K]
    return momentum * center + (1.0 - momentum) * batch_center


def _head(module: Encoder, features: jax.Array, train: bool):
    return module.head(features, train, return_bottleneck=True)


def loss_fn(params, state, batch, rng, *, model, config):
    cfg, extra = config.dino, state.extra
    groups = primitives.crop_groups(batch, NUM_GLOBAL)
    _, (s, z), batch_stats = primitives.multicrop_forward(  # [V, B, K], [V, B, b]
        model, params, state.batch_stats, groups, jax.random.fold_in(rng, 0), _head
    )
    x_t = rearrange(groups[0][:, :NUM_GLOBAL], "b v h w c -> (v b) h w c")  # [2B, H, W, C]
    out_t, target_stats = primitives.apply_train(
        make_model(config, teacher=True),
        extra["target_params"],
        extra["target_batch_stats"],
        x_t,
        jax.random.fold_in(rng, 1),
    )
    t = jax.lax.stop_gradient(out_t["projection"])  # [2B, K]
    center = jax.lax.stop_gradient(extra["center"])  # [K]
    tau_t = teacher_temperature(state.step, config)
    loss, p_t = losses.dino_cross_entropy(
        s, rearrange(t, "(v b) k -> v b k", v=NUM_GLOBAL), center, cfg.student_temp, tau_t
    )
    entropy = -jnp.mean(jnp.sum(jax.scipy.special.xlogy(p_t, p_t), axis=-1))
    metrics = dict(
        teacher_temp=tau_t,
        teacher_entropy=entropy,  # h(P_t), paper Fig. 7
        kl=loss - entropy,  # KL(P_t || P_s) averaged over the same pairs
        center_norm=jnp.linalg.norm(center),
        teacher_momentum=teacher_momentum(state.step, config),
    )
    aux = dict(
        batch_stats=batch_stats,
        embeddings=z[0],  # the bottleneck of global crop 1 (see the module docstring)
        features=out_t["embedding"],  # [2B, D]: the evaluated encoder is the teacher
        metrics=metrics,
        extra=dict(teacher_output=t, target_batch_stats=target_stats),
    )
    return loss, aux


def update_extra(extra, *, params, aux, step, config):
    """EMA teacher from the updated student (main_dino updates after optimizer.step());
    the center moves towards this step's teacher outputs, after the loss used it."""
    new, m = aux["extra"], teacher_momentum(step, config)
    return dict(
        target_params=primitives.ema(extra["target_params"], params, m),
        target_batch_stats=new["target_batch_stats"],
        center=update_center(extra["center"], new["teacher_output"], config.dino.center_momentum),
    )
