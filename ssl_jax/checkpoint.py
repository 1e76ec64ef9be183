"""Orbax CheckpointManager wrapper: periodic async saves, keep-N, exact resume.

Every process calls save/restore (orbax coordinates the hosts). A restore that fails on
the latest step falls back to the previous one with a warning, so one torn write never
loses the run. The trainer then moves the unreadable step aside, to
``checkpoints/<step>.unreadable-<n>``, kept for inspection and out of orbax's view, so the
run can write that step again.

Readers (eval, export, reconstruct, a pretrained encoder) open a workdir with
``read_only=True``: they never create, rename or delete anything under ``checkpoints/``,
so a run still training keeps its in-flight ``<step>.orbax-checkpoint-tmp`` writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

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


_small_arrays_registered = False


def _write_small_arrays_whole() -> None:
    global _small_arrays_registered
    if _small_arrays_registered:
        return
    try:  # orbax's default handler keeps array metadata in this store; no public path
        from orbax.checkpoint._src.metadata import array_metadata_store
    except ImportError:  # another orbax layout: keep its default handler (slower start)
        return
    handler = ocp.type_handlers.ArrayHandler(
        array_metadata_store=array_metadata_store.Store(),
        min_slice_bytes_for_replica_parallel=_MIN_REPLICA_SLICE_BYTES,
    )
    # orbax's registry is process-wide: this replaces its jax.Array handler for every
    # checkpoint this process writes, which only differs in the slicing above. orbax logs
    # the replacement as a warning ("... overriding ..."); it is ours and deliberate, so
    # that one record is dropped, once per process, wherever ssl_jax runs (CLI, notebook).
    with _without_records("absl", "overriding"):
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
    _small_arrays_registered = True


@contextlib.contextmanager
def _without_records(logger_name: str, text: str) -> Iterator[None]:
    """Drops the records of ``logger_name`` whose message contains ``text``, inside."""

    def keep(record: logging.LogRecord) -> bool:
        return text not in record.getMessage()

    logger = logging.getLogger(logger_name)
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


class Checkpointer:
    """The checkpoints of one workdir: the trainer's (every process), or a reader's
    (``read_only=True``: restore and list only; ``save`` refuses)."""

    def __init__(
        self,
        workdir: str,
        *,
        every_steps: int = 1,
        keep: int | None = None,
        async_save: bool = True,
        read_only: bool = False,
    ):
        _write_small_arrays_whole()
        self.directory = str(paths.join(paths.absolute(workdir), "checkpoints"))
        self.read_only = read_only
        if read_only:
            # Every option that writes is off: no root folder created, no tmp directory
            # of a running trainer's save cleaned up, nothing deleted.
            options = ocp.CheckpointManagerOptions(
                read_only=True,
                save_interval_steps=0,
                max_to_keep=None,
                create=False,
                cleanup_tmp_directories=False,
                enable_async_checkpointing=False,
            )
        else:
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

    def all_steps(self) -> list[int]:
        """The finalized steps on disk now, oldest first (a running trainer adds more)."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, *, force: bool = False) -> bool:
        """Saves when `step` is on the save interval (or `force`); returns whether it did.

        An async save's write error surfaces at the next save or `wait`; either way it
        is raised as a `CheckpointWriteError` naming the step that failed.
        """
        if self.read_only:
            raise PermissionError(f"{self.directory} was opened read-only; it saves nothing")
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

        Returns (state, step), or None when the workdir has no checkpoint. An unreadable
        newer step is skipped with a warning; the trainer also moves it aside
        (`_set_aside`), a reader leaves it where it is.
        """
        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        errors: list[tuple[int, Exception]] = []
        restored = None
        for step in steps:
            try:
                state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
            except Exception as e:  # noqa: BLE001 - orbax and TensorStore raise many types
                # A torn or corrupt write: the previous checkpoint may still be good.
                logging.warning("checkpoint step %d is unreadable (%s); trying older", step, e)
                errors.append((step, e))
                continue
            restored = state, step
            break
        if restored is not None:
            if not self.read_only:
                self._set_aside([s for s, _ in errors], restored[1])
            return restored
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

    def _set_aside(self, unreadable: list[int], resumed: int) -> None:
        """Moves the trainer's unreadable steps to ``<step>.unreadable-<n>`` (a name orbax
        neither lists nor cleans up: no ``.orbax-checkpoint-tmp``, not a step number), so
        the run writes those steps again instead of failing on a step that exists. (On
        gs:// orbax also takes a folder without commit_success.txt for a torn write and
        deletes it; a step orbax listed there has that file, and the move keeps it.)

        Every process reaches this after its restore; process 0 alone renames, between two
        barriers, so no process still reads a step being moved, and none saves before the
        move and everyone's reload of the step list are done. On one process there is
        nothing to wait for.
        """
        many = jax.process_count() > 1
        if many:
            ocp.multihost.sync_global_processes(f"ssl_jax:set_aside_start:{resumed}")
        if jax.process_index() == 0:
            for step in unreadable:
                source = epath.Path(self.directory) / str(step)
                n = 1
                while (target := source.with_name(f"{step}.unreadable-{n}")).exists():
                    n += 1
                source.rename(target)
                logging.warning(
                    "moved the unreadable checkpoint step %d to %s (kept for inspection); "
                    "resuming from step %d, the run writes step %d again",
                    step,
                    target,
                    resumed,
                    step,
                )
        if many:
            ocp.multihost.sync_global_processes(f"ssl_jax:set_aside_done:{resumed}")
        if unreadable:
            self._manager.reload()  # forget the moved steps, or saving them again fails

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
    "log.",  # where the metrics also go (W&B)
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
    if not paths.exists(path):
        return None
    try:
        return json.loads(paths.read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path} is not valid JSON ({e}): the resolved config the run wrote is damaged; "
            "restore it from a copy, or use a new --workdir."
        ) from None


def check_and_save_config(
    config: Any, workdir: str, *, total_steps: int | None = None, write: bool = True
) -> None:
    """Refuses a workdir whose checkpoint came from an incompatible config, or lies past
    ``total_steps`` (the resolved schedule.total_steps); then saves the resolved config as
    <workdir>/config.json. Nothing is written when it refuses."""
    current = json.loads(config.to_json_best_effort())
    checkpoints = paths.join(workdir, "checkpoints")
    has_ckpt = paths.isdir(checkpoints) and any(
        name.isdigit() for name in paths.listdir(checkpoints)
    )
    latest = None
    if has_ckpt and total_steps is not None:
        reader = Checkpointer(workdir, read_only=True)
        latest = max(reader.all_steps(), default=None)
        reader.close()
    if latest is not None and latest > total_steps:
        # Resuming would train nothing and config.json would then misstate the run.
        raise IncompatibleCheckpointError(
            f"{workdir} holds a checkpoint at step {latest}, past schedule.total_steps="
            f"{total_steps}; use a new --workdir or total_steps >= {latest}."
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
