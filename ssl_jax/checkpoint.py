"""Orbax CheckpointManager wrapper: periodic async saves, keep-N, exact resume.

Every process calls save/restore (orbax coordinates the hosts). A restore that fails on
the latest step falls back to the previous one with a warning, so one torn write never
loses the run.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp

from ssl_jax import config_base, paths

CONFIG_FILE = "config.json"  # the resolved config of a run, in its workdir


class IncompatibleCheckpointError(ValueError):
    """The workdir holds a checkpoint whose structure does not match this config."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (read-only or full disk, lost bucket access); the
    message names the step, the directory and the last good checkpoint, which is intact."""


# orbax writes each replicated array in slices, one per replica (spreading a pod's
# writes over its hosts), and slicing compiles one tiny XLA program per array shape: about
# 170 of them for a ResNet train state, 14 s before the first save of a run on 8 CPU
# devices. Arrays whose per-replica slice would be under this size are written whole by
# one replica instead; a large model's big tensors are still written in parallel.
_MIN_REPLICA_SLICE_BYTES = 1 << 20


def _write_small_arrays_whole() -> None:
    try:  # orbax's default handler keeps array metadata in this store; no public path
        from orbax.checkpoint._src.metadata import array_metadata_store
    except ImportError:  # another orbax layout: keep its default handler (slower start)
        return
    handler = ocp.type_handlers.ArrayHandler(
        array_metadata_store=array_metadata_store.Store(),
        min_slice_bytes_for_replica_parallel=_MIN_REPLICA_SLICE_BYTES,
    )
    # orbax's registry is process-wide: this replaces its jax.Array handler for every
    # checkpoint this process writes, which only differs in the slicing above.
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


class Checkpointer:
    def __init__(self, workdir: str, *, every_steps: int, keep: int, async_save: bool = True):
        _write_small_arrays_whole()
        self.directory = str(paths.join(paths.absolute(workdir), "checkpoints"))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=max(1, every_steps),
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=True,  # a write torn by a crash is removed on restart
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._in_flight: int | None = None  # the step of an async save not yet confirmed

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, *, force: bool = False) -> bool:
        """Saves when `step` is on the save interval (or `force`); returns whether it did.

        An async save's write error surfaces at the next save or `wait`; either way it
        is raised as a `CheckpointWriteError` naming the step that failed.
        """
        with self._write_errors(step):
            if force or self._manager.should_save(step):
                # orbax's save threads wait minutes for a step directory that a read-only
                # directory never lets them create; a probe write fails at once instead.
                paths.probe_writable(self.directory, f".write-probe-{jax.process_index()}")
            saved = self._manager.save(step, args=ocp.args.StandardSave(state), force=force)
        if saved:
            self._in_flight = step
        return saved

    def restore(self, template: Any) -> tuple[Any, int] | None:
        """Restores the newest readable checkpoint into `template`'s shapes and shardings.

        Returns (state, step), or None when the workdir has no checkpoint.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        errors: list[tuple[int, Exception]] = []
        for step in steps:
            try:
                state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
            except Exception as e:  # noqa: BLE001 - orbax and TensorStore raise many types
                # A torn or corrupt write: the previous checkpoint may still be good.
                logging.warning("checkpoint step %d is unreadable (%s); trying older", step, e)
                errors.append((step, e))
                continue
            return state, step
        step, first = errors[0]
        if all(isinstance(e, _MISMATCH) for _, e in errors):
            # Every step fails the same way: the structure, not the bytes, is wrong.
            raise IncompatibleCheckpointError(
                f"the checkpoint at step {step} in {self.directory} does not match this "
                f"config's train state ({type(first).__name__}: {_first_line(first)}). Use a "
                "new --workdir, or the config that wrote it (see config.json there)."
            ) from first
        raise RuntimeError(
            f"no readable checkpoint in {self.directory}: "
            + "; ".join(f"step {s}: {_first_line(e)}" for s, e in errors)
        ) from first

    def wait(self) -> None:
        with self._write_errors(None):
            self._manager.wait_until_finished()
        self._in_flight = None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._manager.close()

    @contextlib.contextmanager
    def _write_errors(self, step: int | None) -> Iterator[None]:
        try:
            yield
        except Exception as e:  # noqa: BLE001 - orbax and TensorStore raise many types
            failed = self._in_flight if self._in_flight is not None else step
            self._in_flight = None
            raise CheckpointWriteError(
                f"cannot write the checkpoint at step {failed} to {self.directory} "
                f"({type(e).__name__}: {_first_line(e)}); {self._last_good_text(failed)}. "
                "Free disk space or fix the permissions, then rerun the same command."
            ) from e

    def _last_good_text(self, failed: int | None) -> str:
        self._manager.reload()  # the steps on disk now, not orbax's cached list
        steps = [s for s in self._manager.all_steps() if s != failed]
        if not steps:
            return "no checkpoint was written yet"
        return f"the last good checkpoint is step {max(steps)}, intact"


# What orbax raises when a checkpoint's tree or shapes differ from the template's.
_MISMATCH = (ValueError, KeyError, TypeError)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


# Keys that may change between a run and its resumption: they do not alter the train
# state or what it means (evaluation, logging, checkpoint cadence, where data lives,
# and the training length, so a finished run can be extended).
_RESUMABLE_CHANGES = (
    "evals.",
    "ckpt.",
    "log_every_steps",
    "input.data_dir",
    "input.prefetch",
    "schedule.total_steps",
    "schedule.epochs",
    "model.vit.remat",  # recomputes activations in the backward pass; same state
)


# Keys among those that shape the train state nonetheless, with the value that runs saved
# before the key existed had: the online probe adds `probe` to the state.
_STATE_KEYS = {"evals.online_linear": False}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def saved_config(workdir: str) -> dict | None:
    """The resolved config a run wrote to ``<workdir>/config.json``; None if there is none."""
    path = paths.join(workdir, CONFIG_FILE)
    return json.loads(paths.read_text(path)) if paths.exists(path) else None


def check_and_save_config(config: Any, workdir: str, *, write: bool = True) -> None:
    """Refuses a workdir whose checkpoint came from an incompatible config; then saves
    the resolved config as <workdir>/config.json. Nothing is written when it refuses."""
    current = json.loads(config.to_json_best_effort())
    checkpoints = paths.join(workdir, "checkpoints")
    has_ckpt = paths.isdir(checkpoints) and any(
        name.isdigit() for name in paths.listdir(checkpoints)
    )
    saved = saved_config(workdir) if has_ckpt else None
    if saved is not None:
        old, new = _flatten(saved), _flatten(current)
        # A key added to the configs after the run was saved is compatible at the value
        # that keeps the old behaviour, its base default (e.g. input.augment_on_device).
        defaults = _flatten(json.loads(config_base.base_config().to_json_best_effort()))
        old = {**_STATE_KEYS, **old}
        changed = sorted(
            k
            for k in set(old) | set(new)
            if old.get(k) != new.get(k)
            and (k in _STATE_KEYS or not k.startswith(_RESUMABLE_CHANGES))
            and not (k not in old and k in defaults and new.get(k) == defaults[k])
        )
        if changed:
            details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
            raise IncompatibleCheckpointError(
                f"{workdir} holds a checkpoint of a different config ({details}). "
                "Use a new --workdir, or the same config to resume."
            )
    if write:
        paths.makedirs(workdir)
        text = json.dumps(current, indent=2, sort_keys=True)
        paths.write_text(paths.join(workdir, CONFIG_FILE), text)
