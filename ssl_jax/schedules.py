"""Learning-rate and hyper-parameter schedules, evaluated per optimisation step.

Epoch-valued settings (``warmup_epochs``, ``milestones``, ``optim.delay_epochs``) become
steps by ``schedule.step_count``, with N training examples, B the global batch and
``steps_per_epoch = N // B``:

- "per_epoch" (default): ``total = round(epochs * steps_per_epoch)`` and ``e`` epochs are
  ``round(e / epochs * total)`` steps;
- "per_example", BYOL's count (deepmind-research byol/configs/byol.py: ``max_steps =
  num_epochs * N // B``, ``warmup_steps = 10 * N // B``): ``total = N * epochs // B`` and
  ``e`` epochs are ``floor(e * N / B)`` steps;
- "per_example_plus_one", SimCLR's count (google-research/simclr tf2/model.py
  get_train_steps and WarmUpAndCosineDecay): ``total = N * epochs // B + 1`` and ``e``
  epochs are ``int(round(e * N // B))`` = ``floor(e * N / B)`` steps.

The last two count the examples, not whole epochs of ``N // B`` steps, so the total is not
a whole number of our epochs. They need N and B: pass them, or use the copy of the config
``resolve_steps`` returns, which carries them as ``schedule.num_examples`` and
``schedule.global_batch_size``.

When ``schedule.total_steps`` is set to another count (smoke runs) the whole schedule is
compressed into those steps with the same shape: ``e`` epochs are ``round(e / epochs *
total_steps)`` steps, whatever the rule (SimCLR's ``--train_steps`` keeps the warm-up at
``floor(warmup_epochs * N / B)`` instead).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import optax

DECAYS = ("cosine", "step", "constant")
STEP_COUNTS = ("per_epoch", "per_example", "per_example_plus_one")


def _step_count(schedule_cfg: Any) -> str:
    rule = schedule_cfg.get("step_count", "per_epoch")
    if rule not in STEP_COUNTS:
        raise ValueError(f"Unknown schedule.step_count {rule!r}; valid: {list(STEP_COUNTS)}.")
    return rule


def _examples(
    schedule_cfg: Any, num_examples: int | None, global_batch_size: int | None
) -> tuple[int | None, int | None]:
    """(N, B) from the arguments, else from a ``resolve_steps`` copy, else None."""
    if num_examples is None:
        num_examples = schedule_cfg.get("num_examples", None)
    if global_batch_size is None:
        global_batch_size = schedule_cfg.get("global_batch_size", None)
    return num_examples, global_batch_size


def _counted_steps(
    schedule_cfg: Any, steps_per_epoch: int, num_examples: int | None, batch: int | None
) -> int:
    """The total the rule gives for ``schedule.epochs``, without ``total_steps``."""
    rule = _step_count(schedule_cfg)
    if rule == "per_epoch":
        return round(schedule_cfg.epochs * steps_per_epoch)
    if num_examples is None or batch is None or batch <= 0:
        raise ValueError(
            f"schedule.step_count={rule!r} needs the number of training examples and the "
            f"global batch size (got {num_examples} and {batch}): pass num_examples to "
            "resolve_steps, or set schedule.total_steps."
        )
    # Python's floor division, as the references' num_examples * epochs // batch.
    steps = int(num_examples * schedule_cfg.epochs // batch)
    return steps + 1 if rule == "per_example_plus_one" else steps


def total_steps(
    schedule_cfg: Any,
    steps_per_epoch: int,
    num_examples: int | None = None,
    global_batch_size: int | None = None,
) -> int:
    """``schedule.total_steps`` if positive, else the ``step_count`` rule's total."""
    if schedule_cfg.total_steps > 0:
        return int(schedule_cfg.total_steps)
    n, b = _examples(schedule_cfg, num_examples, global_batch_size)
    steps = _counted_steps(schedule_cfg, steps_per_epoch, n, b)
    if steps <= 0:
        raise ValueError(
            f"schedule.epochs={schedule_cfg.epochs} x steps_per_epoch={steps_per_epoch} "
            "gives no steps; set schedule.total_steps or more epochs."
        )
    return steps


def epochs_to_steps(
    epochs: float,
    schedule_cfg: Any,
    steps_per_epoch: int,
    num_examples: int | None = None,
    global_batch_size: int | None = None,
) -> int:
    """Converts an epoch count of this schedule into steps (see the module docstring)."""
    if schedule_cfg.epochs <= 0:
        raise ValueError(f"schedule.epochs must be > 0, got {schedule_cfg.epochs}.")
    n, b = _examples(schedule_cfg, num_examples, global_batch_size)
    total = total_steps(schedule_cfg, steps_per_epoch, n, b)
    if _step_count(schedule_cfg) != "per_epoch" and n is not None and b is not None:
        # Only a total the rule itself gives (not a compressed smoke run's) uses its epochs.
        if total == _counted_steps(schedule_cfg, steps_per_epoch, n, b):
            return int(round(epochs * n // b))
    return round(epochs / schedule_cfg.epochs * total)


def lr_schedule(
    peak_lr: float,
    schedule_cfg: Any,
    steps_per_epoch: int,
    num_examples: int | None = None,
    global_batch_size: int | None = None,
) -> optax.Schedule:
    """Linear warm-up from 0 over the W steps of ``warmup_epochs``, then ``decay``:

    - warm-up, step t < W: ``peak_lr * t / W``, the peak first reached at step W (MoCo v3,
      BYOL, SimCLR); with ``warmup_end_inclusive`` ``peak_lr * t / (W - 1)`` (0 if W = 1),
      DINO's ``np.linspace(0, peak_lr, W)`` (facebookresearch/dino utils.cosine_scheduler),
      the peak reached at step W - 1. With ``warmup_start_lr`` s (default 0) the line
      starts at s instead of 0: ``s + (peak_lr - s) * t / W`` or ``/ (W - 1)``, SwAV's
      ``np.linspace(start_warmup, base_lr, W)``;
    - 'cosine', step t >= W, T total steps: ``final_lr + (peak_lr - final_lr) * (1 +
      cos(pi * (t - W) / (T - W))) / 2``, peak at W and ``final_lr`` (default 0) at step T,
      one past the last (SimCLR; DINO's cosine_scheduler, which ends at ``min_lr`` 1e-6;
      MoCo v2 uses the same curve per epoch, we use it per step);
    - 'step': x0.1 at every milestone epoch (MoCo v1: 120, 160 of 200 epochs);
    - 'constant': ``peak_lr``.
    """
    if schedule_cfg.decay not in DECAYS:
        raise ValueError(f"Unknown schedule.decay {schedule_cfg.decay!r}; valid: {list(DECAYS)}.")
    examples = dict(num_examples=num_examples, global_batch_size=global_batch_size)
    total = total_steps(schedule_cfg, steps_per_epoch, **examples)
    warmup = epochs_to_steps(schedule_cfg.warmup_epochs, schedule_cfg, steps_per_epoch, **examples)
    if warmup > total:
        raise ValueError(f"Warm-up of {warmup} steps is longer than the {total} total steps.")
    milestones = [
        epochs_to_steps(m, schedule_cfg, steps_per_epoch, **examples)
        for m in schedule_cfg.milestones
    ]
    final = schedule_cfg.get("final_lr", 0.0)
    decay = _decay_fn(schedule_cfg.decay, peak_lr, warmup, total, milestones, final)
    inclusive = schedule_cfg.get("warmup_end_inclusive", False)
    if not isinstance(inclusive, bool):
        raise ValueError(f"schedule.warmup_end_inclusive={inclusive!r} must be True or False.")
    # np.linspace(0, peak, W) spaces W values over W - 1 intervals (one value, 0, if W = 1).
    warm_intervals = max(warmup - 1, 1) if inclusive else max(warmup, 1)
    warm_start = float(schedule_cfg.get("warmup_start_lr", 0.0))
    warm_peak = warm_start if inclusive and warmup == 1 else peak_lr

    def schedule(step: jnp.ndarray) -> jnp.ndarray:
        step = jnp.asarray(step, jnp.float32)
        warm = warm_start + (warm_peak - warm_start) * step / warm_intervals
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


def resolve_steps(config: Any, steps_per_epoch: int, num_examples: int | None = None) -> Any:
    """A copy of ``config`` with ``schedule.total_steps`` resolved (> 0) and
    ``schedule.steps_per_epoch`` added, so methods can schedule their own
    hyper-parameters (EMA momentum, temperatures) by step. With ``num_examples`` (the
    training split's size) it also carries ``schedule.num_examples`` and
    ``schedule.global_batch_size`` (``input.global_batch_size``), which the per-example
    ``step_count`` rules need. The trainer passes this copy to the methods and the
    schedules; the config written to the workdir stays the user's."""
    batch = config.input.global_batch_size if num_examples is not None else None
    total = total_steps(config.schedule, steps_per_epoch, num_examples, batch)
    resolved = config.copy_and_resolve_references()
    with resolved.unlocked():
        resolved.schedule.total_steps = total
        resolved.schedule.steps_per_epoch = steps_per_epoch
        if num_examples is not None:
            resolved.schedule.num_examples = int(num_examples)
            resolved.schedule.global_batch_size = int(batch)
    resolved.lock()
    return resolved
