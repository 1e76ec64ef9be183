"""Orbax CheckpointManager wrapper: periodic async saves, keep-N, exact resume.

Every process calls save/restore (orbax coordinates the hosts). A restore that fails on
the latest step falls back to the previous one with a warning, so one torn write never
loses the run.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class IncompatibleCheckpointError(ValueError):
    """The workdir holds a checkpoint whose structure does not match this config."""


class Checkpointer:
    def __init__(self, workdir: str, *, every_steps: int, keep: int, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=max(1, every_steps),
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, *, force: bool = False) -> bool:
        """Saves when `step` is on the save interval (or `force`); returns whether it did."""
        return self._manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def restore(self, template: Any) -> tuple[Any, int] | None:
        """Restores the newest readable checkpoint into `template`'s shapes and shardings.

        Returns (state, step), or None when the workdir has no checkpoint.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        errors = []
        for step in steps:
            try:
                state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
                return state, step
            except (ValueError, KeyError, TypeError) as e:
                # Structure or shape mismatch: the same for every step, so stop here.
                raise IncompatibleCheckpointError(
                    f"the checkpoint at step {step} in {self.directory} does not match this "
                    f"config's train state ({type(e).__name__}: {_first_line(e)}). Use a new "
                    "--workdir, or the config that wrote it (see config.json there)."
                ) from e
            except Exception as e:  # noqa: BLE001 - a torn or unreadable write
                logging.warning("checkpoint step %d is unreadable (%s); trying older", step, e)
                errors.append(f"step {step}: {_first_line(e)}")
        raise RuntimeError(f"no readable checkpoint in {self.directory}: " + "; ".join(errors))

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


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
)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def check_and_save_config(config: Any, workdir: str, *, write: bool = True) -> None:
    """Refuses a workdir whose checkpoint came from an incompatible config; then saves
    the resolved config as <workdir>/config.json. Nothing is written when it refuses."""
    path = os.path.join(workdir, "config.json")
    current = json.loads(config.to_json_best_effort())
    has_ckpt = os.path.isdir(os.path.join(workdir, "checkpoints")) and any(
        name.isdigit() for name in os.listdir(os.path.join(workdir, "checkpoints"))
    )
    if has_ckpt and os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        old, new = _flatten(saved), _flatten(current)
        changed = sorted(
            k
            for k in set(old) | set(new)
            if old.get(k) != new.get(k) and not k.startswith(_RESUMABLE_CHANGES)
        )
        if changed:
            details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
            raise IncompatibleCheckpointError(
                f"{workdir} holds a checkpoint of a different config ({details}). "
                "Use a new --workdir, or the same config to resume."
            )
    if write:
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            json.dump(current, f, indent=2, sort_keys=True)
