"""Pretrain on a multi-node GPU Slurm cluster, one process per GPU, requeued after preemption.

Print the batch script and the sbatch command first (runs nothing), then submit:

    python experiments/launch/slurm.py --nodes=2 --gpus-per-node=8 --partition=gpu \\
        --time=24:00:00 --config=configs/simclr.py:imagenet --workdir=/shared/runs/simclr \\
        --data-dir=/shared/tensorflow_datasets --setup='source ~/venvs/ssl_jax/bin/activate' \\
        --dry-run -- --config.schedule.epochs=100

The batch script runs `srun ssl-jax pretrain --distributed ...` with --ntasks-per-node equal
to the GPUs per node and one GPU per task; `jax.distributed.initialize()` reads the rank,
process count and coordinator from Slurm's environment. `--signal=TERM@<grace>` sends SIGTERM
to every training process <grace> seconds before the time limit, as preemption does; each
saves a checkpoint and exits 75, and the batch script then requeues its own job
(`scontrol requeue`, up to --max-restarts times), which reruns the same command and resumes
from the checkpoint in the workdir. The environment that --setup prepares must provide
`ssl-jax` built with `jax[cuda12]`.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pretrain_command import EXIT_PREEMPTED, pretrain_argv
from runner import Runner
from runner import main as runner_main

REPO_ROOT = Path(__file__).resolve().parents[2]
# Slurm's --time forms: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
_TIME = re.compile(r"^(\d+-\d{1,2}(:\d{2}){0,2}|\d+(:\d{2}){0,2})$")
_JOB_NAME = re.compile(r"^[\w.-]+$")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Config overrides go after `--`: ... -- --config.optim.lr=0.3",
    )
    p.add_argument("--nodes", type=int, required=True, help="Number of nodes.")
    p.add_argument("--gpus-per-node", type=int, required=True, help="One process per GPU.")
    p.add_argument("--config", required=True, help="e.g. configs/simclr.py:imagenet")
    p.add_argument("--workdir", required=True, help="On a filesystem every node shares.")
    p.add_argument("--data-dir", help="tfds data directory every node can read.")
    p.add_argument("--job-name", default="ssl_jax")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--time", default="24:00:00", help="Time limit of each attempt.")
    p.add_argument("--cpus-per-task", type=int, help="CPU cores per process (data pipeline).")
    p.add_argument(
        "--gres",
        action="store_true",
        help="Request GPUs as --gres=gpu:<gpus-per-node> instead of --gpus-per-task=1.",
    )
    p.add_argument(
        "--grace-seconds",
        type=int,
        default=300,
        help="SIGTERM this long before the time limit, to save a checkpoint.",
    )
    p.add_argument("--max-restarts", type=int, default=10, help="Requeues after exit 75.")
    p.add_argument(
        "--setup",
        action="append",
        default=[],
        help="Shell line run before srun, e.g. 'module load cuda' (repeatable).",
    )
    p.add_argument(
        "--sbatch-option",
        action="append",
        default=[],
        help="Extra #SBATCH option, e.g. --constraint=a100 (repeatable).",
    )
    p.add_argument("--repo-dir", default=str(REPO_ROOT), help="Checkout on the shared FS.")
    p.add_argument("--log-dir", default=None, help="Slurm output (default <repo-dir>/slurm_logs).")
    p.add_argument("--script", default=None, help="Batch script path (default in --log-dir).")
    p.add_argument("--dry-run", action="store_true", help="Print script and command; submit none.")
    p.add_argument("overrides", nargs="*", help="--config.<key>=<value> after `--`.")
    args = p.parse_args(argv)
    try:
        validate(args)
    except ValueError as e:
        p.error(str(e))
    args.log_dir = args.log_dir or os.path.join(args.repo_dir, "slurm_logs")
    args.script = args.script or os.path.join(args.log_dir, f"{args.job_name}.sbatch")
    return args


def validate(args: argparse.Namespace) -> None:
    """Rejects values that sbatch or the run would reject later, naming the offending one."""
    if args.nodes < 1:
        raise ValueError(f"--nodes={args.nodes}: must be >= 1.")
    if args.gpus_per_node < 1:
        raise ValueError(f"--gpus-per-node={args.gpus_per_node}: must be >= 1.")
    if args.cpus_per_task is not None and args.cpus_per_task < 1:
        raise ValueError(f"--cpus-per-task={args.cpus_per_task}: must be >= 1.")
    if not 1 <= args.grace_seconds <= 65535:
        raise ValueError(f"--grace-seconds={args.grace_seconds}: must be in 1..65535.")
    if args.max_restarts < 0:
        raise ValueError(f"--max-restarts={args.max_restarts}: must be >= 0.")
    if not _TIME.match(args.time):
        raise ValueError(
            f"--time={args.time!r}: expected minutes, HH:MM:SS or D-HH:MM:SS, e.g. 24:00:00."
        )
    if not _JOB_NAME.match(args.job_name):
        raise ValueError(f"--job-name={args.job_name!r}: letters, digits, '_', '.', '-' only.")
    if not args.workdir.strip():
        raise ValueError("--workdir is empty.")
    for option in args.sbatch_option:
        if not option.startswith("--"):
            raise ValueError(f"--sbatch-option={option!r}: expected an option such as --qos=high.")
    pretrain_argv(args.config, args.workdir, args.data_dir, tuple(args.overrides))


def sbatch_directives(args: argparse.Namespace) -> list[str]:
    gpus = [f"--gres=gpu:{args.gpus_per_node}"] if args.gres else ["--gpus-per-task=1"]
    options = [
        f"--job-name={args.job_name}",
        f"--nodes={args.nodes}",
        f"--ntasks-per-node={args.gpus_per_node}",
        *gpus,
        *([f"--cpus-per-task={args.cpus_per_task}"] if args.cpus_per_task else []),
        *([f"--partition={args.partition}"] if args.partition else []),
        *([f"--account={args.account}"] if args.account else []),
        f"--time={args.time}",
        # No `B:` prefix: the signal goes to the job steps, i.e. every ssl-jax process.
        f"--signal=TERM@{args.grace_seconds}",
        "--requeue",
        "--open-mode=append",  # a requeued attempt appends to the same log
        f"--output={os.path.join(args.log_dir, '%x-%j.out')}",
        *args.sbatch_option,
    ]
    return [f"#SBATCH {option}" for option in options]


def batch_script(args: argparse.Namespace) -> str:
    """The whole sbatch script: directives, environment, srun, requeue on exit 75."""
    train = shlex.join(
        pretrain_argv(args.config, args.workdir, args.data_dir, tuple(args.overrides))
    )
    cpus = ['export SRUN_CPUS_PER_TASK="${SLURM_CPUS_PER_TASK}"'] if args.cpus_per_task else []
    lines = [
        "#!/bin/bash",
        f"# Written by experiments/launch/slurm.py: {args.nodes} node(s) x {args.gpus_per_node} "
        "GPU(s), one ssl-jax process per GPU.",
        *sbatch_directives(args),
        "",
        "# Preemption and the time limit send SIGTERM to every ssl-jax process: each saves a",
        f"# checkpoint at the next step boundary and exits {EXIT_PREEMPTED}. Preemption also",
        "# signals this shell; the trap keeps it alive, and bash runs it only after srun returns.",
        "trap 'echo \"batch shell: SIGTERM received; waiting for the training step\"' TERM",
        "",
        f"cd {shlex.quote(args.repo_dir)} || exit 1",
        *args.setup,
        *cpus,
        "# --kill-on-bad-exit=0: a process that exits 75 first must not kill the others while",
        "# they are still writing their part of the checkpoint.",
        f"srun --kill-on-bad-exit=0 {train}",
        "status=$?",
        'echo "ssl-jax exit status ${status} (attempt $(( ${SLURM_RESTART_COUNT:-0} + 1 )))"',
        f'if [ "${{status}}" -eq {EXIT_PREEMPTED} ]; then',
        f'  if [ "${{SLURM_RESTART_COUNT:-0}}" -lt {args.max_restarts} ]; then',
        '    echo "preempted: requeueing job ${SLURM_JOB_ID}; it resumes from the checkpoint"',
        '    scontrol requeue "${SLURM_JOB_ID}"',
        "  else",
        f'    echo "preempted, but --max-restarts={args.max_restarts} is reached; submit again '
        'to resume" >&2',
        "  fi",
        "fi",
        'exit "${status}"',
        "",
    ]
    return "\n".join(lines)


def sbatch_command(args: argparse.Namespace) -> list[str]:
    return ["sbatch", "--parsable", args.script]


def submit(args: argparse.Namespace, runner: Runner) -> None:
    script = batch_script(args)
    if runner.dry_run:
        # Printed as shell that writes the script and submits it, so it can be pasted as is.
        runner.show(["mkdir", "-p", args.log_dir])
        print(f"cat > {shlex.quote(args.script)} <<'EOF'\n{script}EOF", file=runner.out)
        runner.show(sbatch_command(args))
        return
    runner.require("sbatch")
    os.makedirs(args.log_dir, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.script)), exist_ok=True)
    with open(args.script, "w") as f:
        f.write(script)
    runner.note(f"wrote {args.script}")
    runner.run(sbatch_command(args), "sbatch")


def main(argv: list[str] | None = None) -> int:
    return runner_main(parse_args, submit, argv)


if __name__ == "__main__":
    sys.exit(main())
