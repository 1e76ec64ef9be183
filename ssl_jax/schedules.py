"""Learning-rate and hyper-parameter schedules, evaluated per optimisation step.

Epoch-valued settings (``warmup_epochs``, ``milestones``) are converted to steps with
``steps_per_epoch_eff = total_steps / epochs``. Normally ``total_steps = epochs *
steps_per_epoch`` and this is the plain conversion; when ``schedule.total_steps`` is set
(smoke runs) the whole schedule is compressed into those steps with the same shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import optax

DECAYS = ("cosine", "step", "constant")


def total_steps(schedule_cfg: Any, steps_per_epoch: int) -> int:
    """``schedule.total_steps`` if positive, else ``round(epochs * steps_per_epoch)``."""
    if schedule_cfg.total_steps > 0:
        return int(schedule_cfg.total_steps)
    steps = round(schedule_cfg.epochs * steps_per_epoch)
    if steps <= 0:
        raise ValueError(
            f"schedule.epochs={schedule_cfg.epochs} x steps_per_epoch={steps_per_epoch} "
            "gives no steps; set schedule.total_steps or more epochs."
        )
    return steps


def epochs_to_steps(epochs: float, schedule_cfg: Any, steps_per_epoch: int) -> int:
    """Converts an epoch count of this schedule into steps (see the module docstring)."""
    if schedule_cfg.epochs <= 0:
        raise ValueError(f"schedule.epochs must be > 0, got {schedule_cfg.epochs}.")
    return round(epochs / schedule_cfg.epochs * total_steps(schedule_cfg, steps_per_epoch))


def lr_schedule(peak_lr: float, schedule_cfg: Any, steps_per_epoch: int) -> optax.Schedule:
    """Linear warm-up from 0 to ``peak_lr`` over ``warmup_epochs``, then ``decay``:

    - 'cosine': half-cosine from ``peak_lr`` to ``final_lr`` (default 0) at the last step
      (SimCLR; MoCo v2 uses the same curve per epoch, we use it per step; DINO ends at
      ``min_lr`` 1e-6);
    - 'step': x0.1 at every milestone epoch (MoCo v1: 120, 160 of 200 epochs);
    - 'constant': ``peak_lr``.
    """
    if schedule_cfg.decay not in DECAYS:
        raise ValueError(f"Unknown schedule.decay {schedule_cfg.decay!r}; valid: {list(DECAYS)}.")
    total = total_steps(schedule_cfg, steps_per_epoch)
    warmup = epochs_to_steps(schedule_cfg.warmup_epochs, schedule_cfg, steps_per_epoch)
    if warmup > total:
        raise ValueError(f"Warm-up of {warmup} steps is longer than the {total} total steps.")
    milestones = [
        epochs_to_steps(m, schedule_cfg, steps_per_epoch) for m in schedule_cfg.milestones
    ]
    final = schedule_cfg.get("final_lr", 0.0)
    decay = _decay_fn(schedule_cfg.decay, peak_lr, warmup, total, milestones, final)

    def schedule(step: jnp.ndarray) -> jnp.ndarray:
        step = jnp.asarray(step, jnp.float32)
        warm = peak_lr * step / max(warmup, 1)
        return jnp.where(step < warmup, warm, decay(step))

    return schedule


def _decay_fn(
    decay: str,
    peak_lr: float,
    warmup: int,
    total: int,
    milestones: Sequence[int],
    final_lr: float = 0.0,
) -> optax.Schedule:
    if decay == "cosine":
        # Progress counts from the end of the warm-up, so the curve starts at peak_lr.
        return lambda step: (
            final_lr
            + (peak_lr - final_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * _progress(step, warmup, total)))
        )
    if decay == "step":
        bounds = jnp.asarray(milestones, jnp.float32)
        return lambda step: peak_lr * 0.1 ** jnp.sum(step >= bounds)
    return lambda step: jnp.full_like(step, peak_lr, dtype=jnp.float32)


def _progress(step: jnp.ndarray, start: int, end: int) -> jnp.ndarray:
    return jnp.clip((step - start) / max(end - start, 1), 0.0, 1.0)


def cosine_increase(base: float, final: float, step: Any, total: int) -> jnp.ndarray:
    """``final - (final - base) * (cos(pi * step / total) + 1) / 2``: ``base`` at step 0,
    ``final`` at ``total`` (BYOL / MoCo v3 EMA momentum, DINO's weight-decay schedule).
    Also decreases when ``final < base``."""
    t = jnp.clip(jnp.asarray(step, jnp.float32) / max(total, 1), 0.0, 1.0)
    return final - (final - base) * (jnp.cos(jnp.pi * t) + 1.0) / 2.0


def linear_warmup_then_constant(start: float, end: float, step: Any, warmup: int) -> jnp.ndarray:
    """``start`` at step 0, linear to ``end`` at ``warmup``, then ``end`` (DINO's teacher
    temperature 0.04 -> 0.07 over 30 epochs)."""
    t = jnp.clip(jnp.asarray(step, jnp.float32) / max(warmup, 1), 0.0, 1.0)
    return start + (end - start) * t


def resolve_steps(config: Any, steps_per_epoch: int) -> Any:
    """A copy of ``config`` with ``schedule.total_steps`` resolved (> 0) and
    ``schedule.steps_per_epoch`` added, so methods can schedule their own
    hyper-parameters (EMA momentum, temperatures) by step. The trainer passes this copy
    to the methods; the config written to the workdir stays the user's."""
    total = total_steps(config.schedule, steps_per_epoch)
    resolved = config.copy_and_resolve_references()
    with resolved.unlocked():
        resolved.schedule.total_steps = total
        resolved.schedule.steps_per_epoch = steps_per_epoch
    resolved.lock()
    return resolved
