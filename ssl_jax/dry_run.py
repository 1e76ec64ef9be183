"""`ssl-jax config`: the resolved config and what it implies, with nothing compiled.

The numbers come from the trainer's own `planning.plan` (steps per epoch, total steps, the
scaled peak lr) and from `jax.eval_shape` of its init function (the replicated state:
parameters, optimizer state, the method's queues, banks and momentum encoders), so they
are the run's, not a second estimate. ``devices`` may be a count this machine lacks (plan
a 64-chip pod on a laptop): only the per-device arithmetic depends on it, since the
state is replicated.
"""

from __future__ import annotations

import math

import jax
import ml_collections
import numpy as np

from ssl_jax import console, planning, schedules


def describe(config: ml_collections.ConfigDict, devices: int, processes: int = 1) -> str:
    """The resolved config, then a summary of the run it describes on ``devices``."""
    plan = planning.plan(config, devices, processes)
    state = jax.eval_shape(lambda: plan.init_fn(jax.random.key(0)))  # even the key: no compile
    return f"{config}\n{implications(plan, state, devices, processes)}"


def implications(plan: planning.Plan, state, devices: int, processes: int) -> str:
    c = plan.config
    batch, spe = c.input.global_batch_size, plan.steps_per_epoch
    n = c.schedule.num_examples  # the training split's size, as plan resolved it
    warmup = schedules.epochs_to_steps(c.schedule.warmup_epochs, c.schedule, spe)
    lines = [
        f"What this config implies on {console.count(devices, 'device')}, "
        f"{console.count(processes, 'process')}:",
        f"  data: {c.input.dataset} {c.input.train_split!r}, {n:,} examples; global batch "
        f"{batch} = {batch // devices} per device; {spe:,} steps per epoch"
        + (f" ({n - spe * batch:,} examples left out of each epoch)" if n > spe * batch else ""),
        f"  schedule: {c.schedule.epochs:g} epochs = {plan.total_steps:,} steps; warm-up "
        f"{warmup:,} steps, then {c.schedule.decay}",
        f"  lr: peak {plan.peak_lr:.6g} = optim.lr {c.optim.lr:g} scaled "
        f"{_scaling(c.optim.lr_scaling, batch)}; optimizer {c.optim.name}, weight decay "
        f"{c.optim.weight_decay:g}",
        f"  state, replicated on every device: {_size(_bytes(state))} in all",
    ]
    for field in ("params", "batch_stats", "opt_state"):
        lines.append(f"    {field}: {_leaves(getattr(state, field))}")
    for key, value in sorted(state.extra.items()):
        lines.append(f"    extra[{key!r}] (the method's own state): {_leaves(value)}")
    if state.probe:
        lines.append(
            f"    probe (online linear, {plan.probe_classes} classes): {_leaves(state.probe)}"
        )
    e = c.evals
    knn = f"every {e.knn_every_steps:,} steps" if e.knn_every_steps else "off during training"
    final = "kNN + linear probe" if e.at_end else "none"
    lines += [
        f"  evaluations: kNN monitor {knn}; at the end: {final}; online linear probe "
        + ("on" if plan.probe_classes else "off"),
        f"  checkpoints every {c.ckpt.every_steps:,} steps (keep {c.ckpt.keep}); metrics "
        f"every {c.log_every_steps:,} steps",
        "Nothing was compiled; `ssl-jax pretrain` with the same flags runs this.",
    ]
    return "\n".join(lines)


def _scaling(rule: str, batch: int) -> str:
    return {
        "linear": f"x {batch}/256 (linear)",
        "sqrt": f"x sqrt({batch}) (sqrt)",
        "none": "x 1 (none)",
    }[rule]


def _bytes(tree) -> int:
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _leaves(tree) -> str:
    """``4096 x 128 float32, 2.0 MiB`` for one array, ``12 arrays, 307,536 values, 1.2 MiB``."""
    leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, "shape")]
    if not leaves:
        return "empty"
    if len(leaves) == 1:
        (x,) = leaves
        shape = " x ".join(str(d) for d in x.shape) or "scalar"
        return f"{shape} {np.dtype(x.dtype).name}, {_size(_bytes(x))}"
    values = sum(math.prod(x.shape) for x in leaves)
    return f"{len(leaves)} arrays, {values:,} values, {_size(_bytes(tree))}"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
