"""Optimizers (SGD, LARS, AdamW), learning-rate scaling and the weight-decay mask.

- 'sgd' is PyTorch's ``torch.optim.SGD`` with coupled weight decay (MoCo v1/v2):
  ``b = m * b + (g + wd * w); w -= lr * b`` (nesterov: ``w -= lr * (g + wd * w + m * b)``).
- 'lars' is SimCLR's ``LARSOptimizer`` (google-research/simclr lars_optimizer.py, classic
  momentum): ``g += wd * w``; ``trust = eta * ||w|| / ||g||`` if both norms are > 0 else 1;
  ``v = m * v + lr * trust * g; w -= v``. ``optax.lars`` is exactly this chain (weight
  decay, trust ratio, learning rate, then momentum, so the lr sits inside the momentum
  buffer as in SimCLR); tests/test_optim.py checks it against a NumPy transcription.
- 'adamw' is ``optax.adamw`` (decoupled decay ``w -= lr * wd * w`` as in PyTorch AdamW).

With ``exclude_bias_and_norm`` the leaves masked out by ``decay_mask`` get no weight decay
and, for LARS, no trust-ratio adaptation (SimCLR excludes 'batch_normalization' and
'bias' from both).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import optax

OPTIMIZERS = ("sgd", "lars", "adamw")
LR_SCALINGS = ("linear", "sqrt", "none")


def scaled_lr(optim_cfg: Any, global_batch_size: int) -> float:
    """Peak lr from the base lr: 'linear' lr * B / 256 (Goyal et al.; MoCo v3, SimSiam),
    'sqrt' lr * sqrt(B) (SimCLR's small-batch rule, e.g. 0.075 * sqrt(4096)), 'none' lr."""
    rule = optim_cfg.lr_scaling
    if rule == "linear":
        return optim_cfg.lr * global_batch_size / 256
    if rule == "sqrt":
        return optim_cfg.lr * math.sqrt(global_batch_size)
    if rule == "none":
        return float(optim_cfg.lr)
    raise ValueError(f"Unknown optim.lr_scaling {rule!r}; valid: {list(LR_SCALINGS)}.")


def decay_mask(params: Any) -> Any:
    """True for leaves that get weight decay: every leaf with ndim >= 2.

    The rule is rank-based: 1-D leaves are conv/dense biases and BatchNorm/LayerNorm
    scales and offsets, so for a ResNet this is exactly SimCLR's exclusion of
    'batch_normalization' and 'bias', and it matches DINO/MAE's ``ndim == 1`` rule for
    ViTs without depending on module names.
    """
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(
    optim_cfg: Any, lr_schedule: optax.ScalarOrSchedule
) -> optax.GradientTransformation:
    """The optimizer named by ``optim_cfg.name``; ``lr_schedule`` is the peak-scaled lr."""
    name = optim_cfg.name
    # optax evaluates a callable mask on the params at init/update time, so the mask
    # follows whatever tree the method optimises.
    mask = decay_mask if optim_cfg.exclude_bias_and_norm else True
    if name == "sgd":
        return optax.chain(
            optax.add_decayed_weights(optim_cfg.weight_decay, mask=mask),
            optax.trace(decay=optim_cfg.momentum, nesterov=optim_cfg.nesterov),
            optax.scale_by_learning_rate(lr_schedule),
        )
    if name == "lars":
        return optax.lars(
            lr_schedule,
            weight_decay=optim_cfg.weight_decay,
            weight_decay_mask=mask,
            trust_coefficient=optim_cfg.trust_coefficient,
            eps=0.0,
            trust_ratio_mask=mask,
            momentum=optim_cfg.momentum,
            nesterov=optim_cfg.nesterov,
        )
    if name == "adamw":
        return optax.adamw(
            lr_schedule,
            b1=optim_cfg.b1,
            b2=optim_cfg.b2,
            eps=optim_cfg.eps,
            weight_decay=optim_cfg.weight_decay,
            mask=decay_mask if optim_cfg.exclude_bias_and_norm else None,
        )
    raise ValueError(f"Unknown optim.name {name!r}; valid names: {list(OPTIMIZERS)}.")
