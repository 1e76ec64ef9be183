"""The one training loop: mesh, data, state init or resume, step, evals, checkpoints, logs.

One pure `update_fn(state, batch, base_key) -> (state, metrics)` is compiled with
`jax.jit` over the ('data',) mesh: the state is replicated, the batch sharded on its
leading axis. The step number is folded into the base key, so a resumed run draws the
same randomness as an uninterrupted one; the checkpoint holds everything else.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh

from ssl_jax import console, methods, parallel, paths, planning, wandb_log
from ssl_jax.checkpoint import Checkpointer, check_and_save_config
from ssl_jax.data import device_augment, pipeline
from ssl_jax.evaluate import collapse, online
from ssl_jax.evaluate.runner import Evaluator
from ssl_jax.preemption import EvalInterrupted, Preempted, PreemptionWatcher
from ssl_jax.state import TrainState
from ssl_jax.step_metrics import DivergenceError, MetricBuffer  # noqa: F401 (raised by pretrain)
from ssl_jax.writer import MetricWriter, read_metrics


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything compiled for one config on one mesh."""

    mesh: Mesh
    method: methods.Method
    model: nn.Module
    steps_per_epoch: int
    total_steps: int
    init: Callable[[jax.Array], TrainState]  # jitted: key -> replicated state
    update: Callable[..., tuple[TrainState, dict]]  # jitted, donates the state
    # Classes of the online linear probe; 0: no probe (switched off, or no labels).
    probe_classes: int = 0
    # Static shapes the update records when it is traced (its first call), for the plots'
    # reference lines: {"embedding_dim": d of aux["embeddings"]}.
    traced: dict = dataclasses.field(default_factory=dict)

    def evaluator(self, config: ml_collections.ConfigDict) -> Evaluator:
        return Evaluator(
            config,
            self.model,
            self.mesh,
            self.method.ENCODER.variables,
            classifier_protocol=self.method.classifier_protocol(config),
        )


def make_update_fn(method, model, tx, lr_fn, config, probe_tx=None, traced=None) -> Callable:
    """The pure train step: loss, gradient, optimizer, method extras, online probe, metrics.

    With ``input.augment_on_device`` the step first colour-augments and normalises the
    batch's uint8 crops (``device_augment.py``), keyed by the step's key and each example's
    global row, so the result depends on neither the device count nor a resume.
    With ``probe_tx`` the online linear probe takes its own step on the loss's stop-gradient
    features (``evaluate/online.py``); the method's gradient never sees it.
    ``traced`` (a dict) receives static shapes when the step is traced (``Setup.traced``).
    """
    on_device = device_augment.check_config(config.input)
    traced = {} if traced is None else traced

    def update_fn(state: TrainState, batch: dict, base_key: jax.Array):
        rng = jax.random.fold_in(base_key, state.step)
        if on_device:
            batch = device_augment.augment_batch(
                batch, device_augment.augment_key(rng), config.input
            )
        grad_fn = jax.value_and_grad(method.loss_fn, has_aux=True)
        (loss, aux), grads = grad_fn(state.params, state, batch, rng, model=model, config=config)
        traced["embedding_dim"] = aux["embeddings"].shape[-1]
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = method.after_update(optax.apply_updates(state.params, updates), config)
        extra = method.update_extra(
            state.extra, params=params, aux=aux, step=state.step, config=config
        )
        probe, probe_metrics = state.probe, {}
        if probe_tx is not None:
            probe, probe_metrics = online.update(probe, aux["features"], batch["label"], probe_tx)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=aux["batch_stats"],
            opt_state=opt_state,
            extra=extra,
            probe=probe,
        )
        metrics = dict(
            loss=loss,
            lr=lr_fn(state.step),
            grad_norm=optax.global_norm(grads),
            param_norm=optax.global_norm(params),  # of the updated params: a finite
            # value here is what makes the next checkpoint safe to write
            collapse_std=collapse.embedding_std(aux["embeddings"]),  # ~1/sqrt(d) healthy
            effective_rank=_on_log_steps(collapse.effective_rank, aux["embeddings"], state, config),
            **aux["metrics"],
            **probe_metrics,
        )
        return new_state, metrics

    return update_fn


def _on_log_steps(fn: Callable, x: jax.Array, state: TrainState, config) -> jax.Array:
    """``fn(x)`` on the steps whose metrics the loop logs, NaN on the others: keeps an
    eigendecomposition (the effective rank) out of the steps nobody reads."""
    done = state.step + 1
    logged = (done % config.log_every_steps == 0) | (done == config.schedule.total_steps)
    return jax.lax.cond(logged, fn, lambda _: jnp.full((), jnp.nan, jnp.float32), x)


def build(config: ml_collections.ConfigDict, mesh: Mesh, *, donate_state: bool = True) -> Setup:
    """The config's ``planning.plan`` on the mesh, with init and update jitted over it.

    ``donate_state=False`` keeps the input state alive (no buffer donation): only for
    measuring donation's memory effect (experiments/benchmark.py --donate=false)."""
    p = planning.plan(config, mesh.devices.size, jax.process_count())
    repl, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
    init = jax.jit(p.init_fn, out_shardings=repl)
    traced: dict = {}
    update = jax.jit(
        make_update_fn(p.method, p.model, p.tx, p.lr_fn, p.config, p.probe_tx, traced),
        in_shardings=(repl, data, repl),
        out_shardings=(repl, repl),
        donate_argnums=0 if donate_state else (),
    )
    return Setup(
        mesh,
        p.method,
        p.model,
        p.steps_per_epoch,
        p.total_steps,
        init,
        update,
        p.probe_classes,
        traced,
    )


def keys(config: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array]:
    """(init key, train base key), both from config.seed."""
    root = jax.random.key(config.seed)
    return jax.random.fold_in(root, 1), jax.random.fold_in(root, 2)


def pretrain(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Pretrains, evaluates (kNN and linear probe vs random init) and returns the report."""
    start_time = time.time()
    mesh = parallel.make_mesh()
    is_chief = jax.process_index() == 0
    with console.phase("Reading the data set and building the model", enabled=is_chief):
        setup = build(config, mesh)
    if is_chief:
        devices = console.count(mesh.devices.size, "device")
        print(
            f"{config.method} on {config.input.dataset} {config.input.train_split!r}: "
            f"{setup.total_steps:,} steps ({setup.steps_per_epoch:,} per epoch) of "
            f"{config.input.global_batch_size} images on {devices}, workdir {workdir}",
            flush=True,
        )
    check_and_save_config(config, workdir, total_steps=setup.total_steps, write=is_chief)
    init_key, base_key = keys(config)
    base_key = parallel.replicate(base_key, mesh)

    ckpt = Checkpointer(
        workdir,
        every_steps=config.ckpt.every_steps,
        keep=config.ckpt.keep,
        async_save=config.ckpt.async_save,
    )
    with console.phase("Initialising the train state (compiling its init)", enabled=is_chief):
        with jax.set_mesh(mesh):  # as in the final report's call: one compiled init serves both
            state = jax.block_until_ready(setup.init(init_key))
    if ckpt.latest_step() is None:
        restored = None
    else:
        with console.phase("Restoring the latest checkpoint", enabled=is_chief):
            restored = ckpt.restore(state)
    start_step = 0
    if restored is not None:
        state, start_step = restored
        print(f"Resumed from the checkpoint at step {start_step} in {ckpt.directory}")
    else:
        state = load_pretrained(state, config, mesh)
    last_good = start_step if restored is not None else None

    wandb_on = bool(config.log.wandb) and is_chief
    writer = MetricWriter(
        workdir,
        enabled=is_chief,
        total_steps=setup.total_steps,
        steps_per_epoch=setup.steps_per_epoch,
        images_per_step=config.input.global_batch_size,
        also_to=[wandb_log.WandbLog(config.log, workdir, config)] if wandb_on else [],
    )
    writer.truncate_after(start_step)
    batches = pipeline.pretrain_iterator(
        config.input,
        seed=config.seed,
        start_step=start_step,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    evaluator = setup.evaluator(config)
    if config.evals.online_linear and not setup.probe_classes:
        writer.info(f"{config.input.train_split!r} has no labels: no online linear probe.")
    # jitted: eager, optax.global_norm compiles one tiny program per leaf (5 s on CPU)
    buffer = MetricBuffer(parallel.host_scalar(jax.jit(optax.global_norm)(state.params)))
    warned_collapse = False
    try:
        with jax.set_mesh(mesh), PreemptionWatcher() as preemption:
            evaluator.poll = preemption.poll
            if restored is not None and knn_monitor_missing(config, workdir, start_step, setup):
                # A notice stopped the monitor at the checkpointed step: it runs now.
                if not knn_monitor(evaluator, state, start_step, writer):
                    raise Preempted(start_step, ckpt.directory, preemption.signum)
            for step in range(start_step, setup.total_steps):
                batch = parallel.to_global(next(batches), mesh)
                if step == start_step:  # the first call compiles; the others reuse it
                    with writer.phase("Compiling the train step (once per process)"):
                        state, metrics = jax.block_until_ready(setup.update(state, batch, base_key))
                else:
                    state, metrics = setup.update(state, batch, base_key)
                buffer.add(step, metrics)
                done = step + 1
                is_last = done == setup.total_steps
                if done % config.log_every_steps == 0 or is_last:
                    values = buffer.flush(last_good)
                    writer.write(done, values)
                    writer.progress(done, values)
                    warning = collapse.collapse_warning(done, values)
                    if warning and not warned_collapse:
                        writer.info(warning)
                        warned_collapse = True  # once: a collapsed run rarely recovers
                completed = not is_knn_step(config, done, setup) or knn_monitor(
                    evaluator, state, done, writer
                )
                preempted = not completed or preemption.reached()
                if done % config.ckpt.every_steps == 0 or is_last or preempted:
                    buffer.flush(last_good)  # never checkpoint a diverged state
                    if ckpt.save(done, state, force=is_last or preempted):
                        last_good = done
                if preempted and not is_last:
                    ckpt.wait()
                    writer.info(f"Preemption notice: checkpoint at step {done} saved.")
                    raise Preempted(done, ckpt.directory, preemption.signum)
            ckpt.wait()
            report = {}
            if config.evals.at_end:
                try:
                    report = evaluator.final_report(state, setup.init(init_key), writer)
                except EvalInterrupted:  # the final checkpoint is written: a rerun evaluates
                    raise Preempted(setup.total_steps, ckpt.directory, preemption.signum) from None
    finally:
        ckpt.close()  # lets an async save finish even when training stops on an error
        writer.close()
    report.update(
        steps=setup.total_steps,
        wall_time_s=round(time.time() - start_time, 1),
        devices=jax.device_count(),
        processes=jax.process_count(),
    )
    if is_chief:
        report["plots"] = writer.plots(embedding_dim=setup.traced.get("embedding_dim"))
        paths.write_text(paths.join(workdir, "report.json"), json.dumps(report, indent=2))
        if report["plots"]:
            names = ", ".join(os.path.basename(p) for p in report["plots"])
            print(f"Plots in {paths.join(workdir, 'plots')}: {names}")
    return report


def is_knn_step(config: ml_collections.ConfigDict, step: int, setup: Setup) -> bool:
    """Whether the kNN monitor runs after ``step`` (the final report covers the last)."""
    every = config.evals.knn_every_steps
    return bool(every) and step % every == 0 and 0 < step < setup.total_steps


def knn_monitor(evaluator: Evaluator, state: TrainState, step: int, writer: MetricWriter) -> bool:
    """Logs the kNN monitor at ``step``; False if a preemption notice stopped it."""
    try:
        with writer.phase(f"step {step}: kNN monitor"):
            scores = evaluator.knn(state, prefix="knn")
    except EvalInterrupted:
        return False
    writer.write(step, scores)
    if scores:
        writer.info(f"step {step}: " + evaluator.summary(scores))
    return True


def knn_monitor_missing(config, workdir: str, step: int, setup: Setup) -> bool:
    """Whether the resumed-from ``step`` is a kNN step whose scores the log lacks (a notice
    stopped the monitor there, after which that step was checkpointed). Process 0 reads
    the log and decides for all."""
    if not is_knn_step(config, step, setup):
        return False
    logged = jax.process_index() == 0 and any(
        row["step"] == step and "knn_top1" in row for row in read_metrics(workdir)
    )
    return parallel.agree(jax.process_index() == 0 and not logged)


def load_pretrained(state: TrainState, config: ml_collections.ConfigDict, mesh: Mesh):
    """A fresh state with the method's pretrained weights, if it loads any (the supervised
    method's ``supervised.init_from``); on resume the own checkpoint already holds them."""
    loaded = methods.get_method(config.method).load_pretrained(state, config)
    return state if loaded is state else parallel.replicate(loaded, mesh)


def restore_state(config: ml_collections.ConfigDict, workdir: str) -> tuple[Setup, TrainState]:
    """The newest readable checkpoint of a workdir, opened read-only: nothing under
    ``checkpoints/`` is created, moved or deleted, so a running trainer is undisturbed."""
    directory = paths.join(paths.absolute(workdir), "checkpoints")
    if not paths.isdir(directory):
        raise FileNotFoundError(f"no checkpoint under {directory}")
    mesh = parallel.make_mesh()
    setup = build(config, mesh)
    init_key, _ = keys(config)
    ckpt = Checkpointer(workdir, read_only=True)  # a reader: the run may be training
    restored = ckpt.restore(setup.init(init_key))
    ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint under {ckpt.directory}")
    return setup, restored[0]


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """kNN and linear probe of a finished or running run's latest checkpoint."""
    setup, state = restore_state(config, workdir)
    with jax.set_mesh(setup.mesh):
        scores = setup.evaluator(config).scores(state)
    step = int(np.asarray(state.step.addressable_data(0)))
    scores = {"step": step, **scores}
    if jax.process_index() == 0:
        print(json.dumps(scores, indent=2))
        paths.write_text(paths.join(workdir, f"eval_step{step}.json"), json.dumps(scores, indent=2))
    return scores
