"""The `ssl-jax pretrain --distributed` command line that every host runs, and what its exit
status means to a launcher.

Shared by `tpu_vm.py` and `slurm.py`: both run this exact argv on every host (the same text
on every worker; `jax.distributed.initialize()` finds each process's rank itself), and both
restart it after exit status 75.
"""

from __future__ import annotations

import enum
import re

# ssl_jax/main.py's exit statuses (the session contract): only 75 asks for a rerun.
EXIT_DONE = 0
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_PREEMPTED = 75

_CONFIG_ARG = re.compile(r"^[\w./-]+\.py(:.*)?$")


class Action(enum.Enum):
    """What a launcher does next."""

    DONE = "done"  # the run finished: copy results, stop
    RERUN = "rerun"  # same command again: it resumes from the workdir's latest checkpoint
    RECREATE = "recreate"  # the machines are gone (preempted): get new ones, install, rerun
    FAIL = "fail"  # a real error (bad input, divergence, crash): stop and report


def action_after_exit(status: int) -> Action:
    """0 -> DONE, 75 (preempted, checkpoint saved) -> RERUN, anything else -> FAIL.

    Bad input (2) and divergence (3) would fail the same way again, so they are never rerun.
    """
    if status == EXIT_DONE:
        return Action.DONE
    if status == EXIT_PREEMPTED:
        return Action.RERUN
    return Action.FAIL


def validate_config_arg(config: str) -> None:
    """`configs/<method>.py[:preset]`, relative to the repository root that every host enters."""
    if not _CONFIG_ARG.match(config) or config.startswith("/"):
        raise ValueError(
            f"--config={config!r}: expected a path relative to the repository root, "
            "such as configs/simclr.py:imagenet."
        )


def validate_overrides(overrides: list[str]) -> None:
    """Extra arguments must be config overrides `--config.<key>=<value>`; data_dir has its flag."""
    for item in overrides:
        if not item.startswith("--config.") or "=" not in item:
            raise ValueError(
                f"override {item!r}: expected --config.<key>=<value>, "
                "e.g. --config.optim.lr=0.3 (put overrides after `--`)."
            )
        if item.startswith("--config.input.data_dir="):
            raise ValueError(f"override {item!r}: pass the data directory with --data-dir instead.")


def pretrain_argv(
    config: str, workdir: str, data_dir: str | None = None, overrides: tuple[str, ...] = ()
) -> list[str]:
    """The argv every process runs; rerunning it unchanged resumes from `workdir`."""
    validate_config_arg(config)
    validate_overrides(list(overrides))
    argv = ["ssl-jax", "pretrain", "--distributed", f"--config={config}", f"--workdir={workdir}"]
    if data_dir:
        argv.append(f"--config.input.data_dir={data_dir}")
    return argv + list(overrides)
