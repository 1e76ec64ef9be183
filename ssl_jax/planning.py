"""What a config implies on a number of devices, before anything is compiled.

`plan` validates the config (shared keys, W&B, the batch against the devices, the
method's own checks), resolves the schedule (steps per epoch and in all), scales the lr,
builds the optimizers, the model and the unjitted init. `train.build` jits what it
returns over a mesh; `ssl-jax config` (dry_run.py) prints it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import linen as nn

from ssl_jax import config_check, methods, optim, parallel, schedules, wandb_log
from ssl_jax.data import eval_pipeline, pipeline
from ssl_jax.data.sources import load_source
from ssl_jax.evaluate import online
from ssl_jax.state import TrainState


def make_init_fn(
    method, model, tx, config, probe_tx=None, probe_classes=0
) -> Callable[[jax.Array], TrainState]:
    size = config.input.image_size

    def init_fn(key: jax.Array) -> TrainState:
        # train=False: BatchNorm groups need no divisibility at init.
        dummy = jnp.zeros((1, size, size, 3), jnp.float32)
        variables = model.init(key, dummy, train=False)
        params, batch_stats = variables["params"], variables.get("batch_stats", {})
        probe = {}
        if probe_tx is not None:
            dim = model.apply(variables, dummy, train=False, method="embed").shape[-1]
            probe = online.init(dim, probe_classes, probe_tx)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=batch_stats,
            opt_state=tx.init(params),
            extra=method.init_extra(params, batch_stats, config),
            probe=probe,
        )

    return init_fn


def online_probe_classes(config: ml_collections.ConfigDict) -> int:
    """Classes of the online linear probe: those of ``input.train_split``, or 0 when
    ``evals.online_linear`` is off or the split has no labels."""
    if not config.evals.online_linear:
        return 0
    source = load_source(config.input.dataset, config.input.train_split, config.input.data_dir)
    return source.num_classes or 0


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a config implies on a number of devices, before anything is compiled: the
    resolved schedule, the scaled lr, the optimizers, the model and the (unjitted) init."""

    config: ml_collections.ConfigDict  # schedule.total_steps / steps_per_epoch resolved
    method: methods.Method
    model: nn.Module
    steps_per_epoch: int
    total_steps: int
    peak_lr: float
    lr_fn: Callable[[Any], jax.Array]
    tx: optax.GradientTransformation
    probe_tx: optax.GradientTransformation | None
    probe_classes: int
    init_fn: Callable[[jax.Array], TrainState]


def plan(config: ml_collections.ConfigDict, devices: int, process_count: int = 1) -> Plan:
    """Validates the config against ``devices`` and the method, and resolves what it
    implies (``ssl-jax config`` prints it; ``build`` compiles it)."""
    config_check.check(config)
    wandb_log.check(config.log)
    parallel.check_global_batch(config.input.global_batch_size, devices)
    parallel.check_global_batch(config.evals.batch_size, devices, "evals.batch_size")
    method = methods.get_method(config.method)
    method.validate(config)
    spe = pipeline.steps_per_epoch(config.input, process_count)
    # N for schedule.step_count's per-example rules.
    num_examples = eval_pipeline.num_eval_examples(config.input, config.input.train_split)
    config = schedules.resolve_steps(config, spe, num_examples)  # methods schedule by step
    total = config.schedule.total_steps
    peak_lr = optim.scaled_lr(config.optim, config.input.global_batch_size)
    lr_fn = schedules.lr_schedule(peak_lr, config.schedule, spe)
    tx = optim.make_optimizer(
        config.optim,
        lr_fn,
        peak_lr=peak_lr,
        total_steps=total,
        delay_steps=schedules.epochs_to_steps(config.optim.delay_epochs, config.schedule, spe),
    )
    classes = online_probe_classes(config)
    probe_tx = online.optimizer(config.evals.online_linear_lr, total) if classes else None
    model = method.make_model(config)
    init_fn = make_init_fn(method, model, tx, config, probe_tx, classes)
    return Plan(config, method, model, spe, total, peak_lr, lr_fn, tx, probe_tx, classes, init_fn)
