"""Pretrain on a Cloud TPU VM pod slice, restarting after preemption until the run is done.

Print the plan first (runs nothing), then run it:

    python experiments/launch/tpu_vm.py --project=my-project --zone=us-central2-b \\
        --accelerator-type=v4-32 --name=simclr-v4 --config=configs/simclr.py:imagenet \\
        --workdir=gs://my-bucket/runs/simclr --data-dir=gs://my-bucket/tensorflow_datasets \\
        --queued --spot --dry-run -- --config.schedule.epochs=100

Steps: create the slice (`tpu-vm create`, or with --queued a queued resource) unless it
exists, wait until it is READY, ship the repository at --git-ref to every worker (a
`git archive` copied with `tpu-vm scp --worker=all`, or `git clone --repo-url` on each
worker), install it into a Python 3.11 virtualenv with `jax[tpu]`, then run the same
`ssl-jax pretrain --distributed ...` on `--worker=all`. Exit status 75 (preempted, checkpoint
saved) reruns that command, which resumes from the checkpoint in the gs:// workdir; a slice
that is gone or PREEMPTED is deleted, recreated and reinstalled first; at most
--max-restarts times. Finally the workdir is copied to --results-dir with
`gcloud storage cp -r`, and --delete-when-done deletes the slice.

gcloud's exit status under `--worker=all` does not report the workers' statuses, so each
worker prints `SSL_JAX_EXIT_STATUS <host> <status>` after the run and this script reads those.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pretrain_command import EXIT_DONE, EXIT_PREEMPTED, Action, action_after_exit, pretrain_argv
from runner import LaunchError, Runner
from runner import main as runner_main

REPO_ROOT = Path(__file__).resolve().parents[2]
REMOTE_REPO = "~/ssl_jax"  # where the code lives on every worker
REMOTE_VENV = "~/ssl_jax_venv"
REMOTE_ARCHIVE = "ssl_jax.tar.gz"  # relative to the worker's home directory
STATUS_MARKER = "SSL_JAX_EXIT_STATUS"

# The TPU software versions Google lists for JAX, by generation
# (https://cloud.google.com/tpu/docs/runtimes).
DEFAULT_RUNTIME = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5p": "v2-alpha-tpuv5",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v6e": "v2-alpha-tpuv6e",
}
# Node states after which the slice must be deleted and created again.
NODE_GONE = {"PREEMPTED", "TERMINATED", "STOPPED", "STOPPING", "DELETING", "HIDDEN", "UNKNOWN"}
# Queued-resource states after which the request must be deleted and made again.
QUEUED_GONE = {"FAILED", "SUSPENDING", "SUSPENDED", "DELETING"}
NOT_FOUND = "NOT_FOUND"

_ACCELERATOR = re.compile(r"^(v\d+[a-z]*)-(\d+)$")
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_ZONE = re.compile(r"^[a-z]+-[a-z]+\d+-[a-z]$")


# ---------------------------------------------------------------- decisions (pure, unit-tested)


def slice_is_gone(state: str | None) -> bool:
    """True when the slice (or its queued resource) no longer exists or was preempted."""
    return state is None or state in ({NOT_FOUND} | NODE_GONE | QUEUED_GONE)


def next_action(exit_status: int | None, state: str | None) -> Action:
    """What to do after the training command returned `exit_status` (None: a worker never
    reported, e.g. its VM went away) while `describe` says the slice is in `state`."""
    if exit_status == EXIT_DONE:
        return Action.DONE
    if slice_is_gone(state):
        return Action.RECREATE  # preemption explains any status; the checkpoint is on GCS
    if exit_status is None:
        return Action.RERUN  # lost contact while the slice lives on (maintenance restart)
    return action_after_exit(exit_status)


def parse_status_line(line: str) -> tuple[str, int] | None:
    """(host, status) from a worker's `SSL_JAX_EXIT_STATUS <host> <status>` line."""
    match = re.search(rf"{STATUS_MARKER} (\S+) (\d+)\s*$", line)
    return (match.group(1), int(match.group(2))) if match else None


def combine_worker_statuses(statuses: dict[str, int], num_workers: int) -> int | None:
    """One status for the slice: None if a worker did not report, a real error if any
    worker had one, else 75 if any was preempted, else 0."""
    if len(statuses) < num_workers:
        return None
    values = set(statuses.values())
    errors = sorted(values - {EXIT_DONE, EXIT_PREEMPTED})
    if errors:
        return errors[0]
    return EXIT_PREEMPTED if EXIT_PREEMPTED in values else EXIT_DONE


# ---------------------------------------------------------------- arguments


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Config overrides go after `--`: ... -- --config.optim.lr=0.3",
    )
    p.add_argument("--project", required=True, help="Google Cloud project id.")
    p.add_argument("--zone", required=True, help="e.g. us-central2-b (must offer the type).")
    p.add_argument("--accelerator-type", required=True, help="e.g. v4-32, v5p-64, v6e-32.")
    p.add_argument(
        "--runtime-version",
        help="TPU software version; default by generation: "
        + ", ".join(f"{k}: {v}" for k, v in DEFAULT_RUNTIME.items()),
    )
    p.add_argument("--name", required=True, help="TPU (and queued resource) name.")
    p.add_argument("--config", required=True, help="e.g. configs/simclr.py:imagenet")
    p.add_argument("--workdir", required=True, help="gs://bucket/path shared by all workers.")
    p.add_argument("--data-dir", help="tfds data on GCS, e.g. gs://bucket/tensorflow_datasets.")
    p.add_argument("--spot", action="store_true", help="Spot VMs: cheaper, may be preempted.")
    p.add_argument(
        "--queued", action="store_true", help="Request a queued resource and wait for it."
    )
    p.add_argument("--git-ref", default="HEAD", help="Commit, tag or branch to install.")
    p.add_argument(
        "--repo-url",
        help="Clone this URL on each worker instead of copying `git archive` of this checkout.",
    )
    p.add_argument("--python-version", default="3.11", help="Python for the workers' venv.")
    p.add_argument("--max-restarts", type=int, default=10, help="Reruns/recreations allowed.")
    p.add_argument("--results-dir", default="workdirs", help="Local directory for the results.")
    p.add_argument("--delete-when-done", action="store_true", help="Delete the slice at the end.")
    p.add_argument("--poll-seconds", type=int, default=30, help="Between state checks.")
    p.add_argument(
        "--wait-minutes", type=int, default=720, help="Give up waiting for READY after this."
    )
    p.add_argument("--dry-run", action="store_true", help="Print the commands; run nothing.")
    p.add_argument("overrides", nargs="*", help="--config.<key>=<value> after `--`.")
    args = p.parse_args(argv)
    try:
        validate(args)
    except ValueError as e:
        p.error(str(e))
    return args


def validate(args: argparse.Namespace) -> None:
    """Rejects values that would fail later, naming the offending one."""
    if not args.workdir.startswith("gs://") or len(args.workdir) <= len("gs://"):
        raise ValueError(
            f"--workdir={args.workdir!r}: must be a gs://bucket/path, because every worker "
            "writes checkpoints to it and it must outlive a preempted slice."
        )
    if args.data_dir is not None and not args.data_dir.startswith("gs://"):
        raise ValueError(
            f"--data-dir={args.data_dir!r}: must be a gs:// path every worker can read, "
            "e.g. gs://my-bucket/tensorflow_datasets."
        )
    match = _ACCELERATOR.match(args.accelerator_type)
    if not match:
        raise ValueError(
            f"--accelerator-type={args.accelerator_type!r}: expected <generation>-<cores>, "
            "e.g. v4-32, v5p-64, v5litepod-16, v6e-32."
        )
    if args.runtime_version is None:
        generation = match.group(1)
        if generation not in DEFAULT_RUNTIME:
            raise ValueError(
                f"--accelerator-type={args.accelerator_type!r}: no default runtime for "
                f"{generation!r}; pass --runtime-version."
            )
        args.runtime_version = DEFAULT_RUNTIME[generation]
    if not _NAME.match(args.name):
        raise ValueError(
            f"--name={args.name!r}: lowercase letters, digits and hyphens, starting with a "
            "letter, at most 63 characters."
        )
    if not _ZONE.match(args.zone):
        raise ValueError(f"--zone={args.zone!r}: expected a zone such as us-central2-b.")
    if args.max_restarts < 0:
        raise ValueError(f"--max-restarts={args.max_restarts}: must be >= 0.")
    if args.poll_seconds < 1 or args.wait_minutes < 1:
        raise ValueError(
            f"--poll-seconds={args.poll_seconds}, --wait-minutes={args.wait_minutes}: "
            "both must be >= 1."
        )
    # Builds (and so validates) the training command once, before anything runs.
    train_argv(args)


# ---------------------------------------------------------------- commands


def _scope(args: argparse.Namespace) -> list[str]:
    return [f"--project={args.project}", f"--zone={args.zone}"]


def train_argv(args: argparse.Namespace) -> list[str]:
    return pretrain_argv(args.config, args.workdir, args.data_dir, tuple(args.overrides))


def create_command(args: argparse.Namespace) -> list[str]:
    spot = ["--spot"] if args.spot else []
    if args.queued:
        return [
            "gcloud", "compute", "tpus", "queued-resources", "create", args.name,
            f"--node-id={args.name}", *_scope(args),
            f"--accelerator-type={args.accelerator_type}",
            f"--runtime-version={args.runtime_version}", *spot,
        ]  # fmt: skip
    return [
        "gcloud", "compute", "tpus", "tpu-vm", "create", args.name, *_scope(args),
        f"--accelerator-type={args.accelerator_type}", f"--version={args.runtime_version}",
        *spot,
    ]  # fmt: skip


def describe_node_command(args: argparse.Namespace) -> list[str]:
    return [
        "gcloud", "compute", "tpus", "tpu-vm", "describe", args.name, *_scope(args),
        "--format=json",
    ]  # fmt: skip


def describe_queued_command(args: argparse.Namespace) -> list[str]:
    return [
        "gcloud", "compute", "tpus", "queued-resources", "describe", args.name, *_scope(args),
        "--format=json",
    ]  # fmt: skip


def delete_command(args: argparse.Namespace) -> list[str]:
    if args.queued:  # --force also deletes the node the request created
        return [
            "gcloud", "compute", "tpus", "queued-resources", "delete", args.name,
            *_scope(args), "--force", "--quiet",
        ]  # fmt: skip
    return ["gcloud", "compute", "tpus", "tpu-vm", "delete", args.name, *_scope(args), "--quiet"]


def ssh_all_command(args: argparse.Namespace, remote: str) -> list[str]:
    return [
        "gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, *_scope(args),
        "--worker=all", f"--command={remote}",
    ]  # fmt: skip


def local_archive(args: argparse.Namespace) -> str:
    return os.path.join("/tmp", f"ssl_jax-{args.name}.tar.gz")


def archive_command(args: argparse.Namespace) -> list[str]:
    return [
        "git", "-C", str(REPO_ROOT), "archive", "--format=tar.gz",
        f"--output={local_archive(args)}", args.git_ref,
    ]  # fmt: skip


def scp_command(args: argparse.Namespace) -> list[str]:
    return [
        "gcloud", "compute", "tpus", "tpu-vm", "scp", local_archive(args),
        f"{args.name}:{REMOTE_ARCHIVE}", *_scope(args), "--worker=all",
    ]  # fmt: skip


def install_script(args: argparse.Namespace) -> str:
    """Shell run on every worker: fresh code at --git-ref, a venv, the pinned requirements and
    the TPU build of the same jax version (one resolver run keeps jax and libtpu matched)."""
    if args.repo_url:
        fetch = [
            f"git clone --quiet {shlex.quote(args.repo_url)} {REMOTE_REPO}",
            f"git -C {REMOTE_REPO} checkout --quiet {shlex.quote(args.git_ref)}",
        ]
    else:
        fetch = [f"mkdir -p {REMOTE_REPO}", f"tar -xzf ~/{REMOTE_ARCHIVE} -C {REMOTE_REPO}"]
    # The TPU images ship Python 3.10; uv installs the Python the project needs (>= 3.11).
    steps = [
        f"rm -rf {REMOTE_REPO} {REMOTE_VENV}",
        *fetch,
        "python3 -m pip install --user --quiet uv",
        f"~/.local/bin/uv venv --quiet --python {shlex.quote(args.python_version)} {REMOTE_VENV}",
        f"cd {REMOTE_REPO}",
        f"~/.local/bin/uv pip install --quiet --python {REMOTE_VENV}/bin/python "
        '-r requirements.txt -e . "jax[tpu]"',
    ]
    return " && ".join(steps)


def train_script(args: argparse.Namespace) -> str:
    """Shell run on every worker: the same ssl-jax command, then its exit status as a marker."""
    return (
        f"cd {REMOTE_REPO} && . {REMOTE_VENV}/bin/activate && {shlex.join(train_argv(args))}; "
        f'status=$?; echo "{STATUS_MARKER} $(hostname) $status"; exit $status'
    )


def copy_results_command(args: argparse.Namespace) -> list[str]:
    return ["gcloud", "storage", "cp", "-r", args.workdir.rstrip("/"), args.results_dir]


# ---------------------------------------------------------------- steps


def describe(args: argparse.Namespace, runner: Runner) -> tuple[str, int]:
    """(state, number of workers): the queued resource's state until it is ACTIVE, then the
    node's; NOT_FOUND when it does not exist."""
    if args.queued:
        queued = _describe_json(describe_queued_command(args), runner)
        if queued is None:
            return NOT_FOUND, 0
        queued_state = queued.get("state", {}).get("state", "UNKNOWN")
        if queued_state != "ACTIVE":
            return queued_state, 0
    node = _describe_json(describe_node_command(args), runner)
    if node is None:
        return NOT_FOUND, 0
    return node.get("state", "UNKNOWN"), len(node.get("networkEndpoints", []))


def _describe_json(argv: list[str], runner: Runner) -> dict | None:
    result = runner.capture(argv)
    if result.returncode == 0:
        return json.loads(result.stdout)
    if "NOT_FOUND" in result.stderr or "not found" in result.stderr.lower():
        return None
    raise LaunchError(f"{shlex.join(argv)} failed: {result.stderr.strip()}")


def wait_until_ready(args: argparse.Namespace, runner: Runner) -> int:
    """Polls until the slice is READY; returns its number of workers."""
    if runner.dry_run:
        runner.note(f"every {args.poll_seconds} s until the node's state is READY:")
        if args.queued:
            runner.show(describe_queued_command(args))
        runner.show(describe_node_command(args))
        return 0
    deadline = time.monotonic() + 60 * args.wait_minutes
    while True:
        state, workers = describe(args, runner)
        if state == "READY" and workers > 0:
            runner.note(f"{args.name} is READY with {workers} workers")
            return workers
        if slice_is_gone(state) and state != NOT_FOUND:
            raise LaunchError(f"{args.name} went to state {state} while waiting for READY.")
        if time.monotonic() > deadline:
            raise LaunchError(f"{args.name} not READY after {args.wait_minutes} min: {state}.")
        runner.note(f"{args.name}: {state}; checking again in {args.poll_seconds} s")
        time.sleep(args.poll_seconds)


def provision(args: argparse.Namespace, runner: Runner) -> int:
    """Creates the slice unless a usable one exists, then waits for READY."""
    if runner.dry_run:
        runner.note(f"if {args.name} does not exist (checked with describe below):")
        runner.show(create_command(args))
        return wait_until_ready(args, runner)
    state, _ = describe(args, runner)
    if state != NOT_FOUND and slice_is_gone(state):
        runner.note(f"{args.name} is {state}: deleting it to create it again")
        runner.run(delete_command(args), "deleting the slice")
        state = NOT_FOUND
    if state == NOT_FOUND:
        runner.run(create_command(args), "creating the slice (try --queued if out of capacity)")
    return wait_until_ready(args, runner)


def install(args: argparse.Namespace, runner: Runner) -> None:
    if not args.repo_url:
        runner.run(scp_command(args), "copying the code to the workers")
    runner.run(ssh_all_command(args, install_script(args)), "installing on the workers")


def run_training(args: argparse.Namespace, runner: Runner, num_workers: int) -> int | None:
    statuses: dict[str, int] = {}

    def record(line: str) -> None:
        parsed = parse_status_line(line)
        if parsed:
            statuses[parsed[0]] = parsed[1]

    runner.stream(ssh_all_command(args, train_script(args)), record)
    return combine_worker_statuses(statuses, num_workers)


def launch(args: argparse.Namespace, runner: Runner) -> None:
    runner.require("gcloud", *([] if args.repo_url else ["git"]))
    if not args.repo_url:
        # One archive for every worker and every restart: the code cannot change mid-run.
        runner.run(archive_command(args), f"git archive of {args.git_ref}")
    num_workers = provision(args, runner)
    install(args, runner)
    restarts = 0
    while True:
        status = run_training(args, runner, num_workers)
        if runner.dry_run:
            _note_restart_plan(args, runner)
            break
        state = None if status == EXIT_DONE else describe(args, runner)[0]
        action = next_action(status, state)
        runner.note(f"workers' exit status {status}, slice state {state}: {action.value}")
        if action is Action.DONE:
            break
        if action is Action.FAIL:
            raise LaunchError(
                f"training failed with exit status {status} (2 bad input, 3 diverged); "
                f"the slice {args.name} is kept for inspection."
            )
        restarts += 1
        if restarts > args.max_restarts:
            raise LaunchError(
                f"gave up after --max-restarts={args.max_restarts}; run this command again "
                f"to resume from the checkpoint in {args.workdir}."
            )
        if action is Action.RECREATE:
            num_workers = provision(args, runner)
            install(args, runner)
        else:
            num_workers = wait_until_ready(args, runner)
    if not runner.dry_run:
        os.makedirs(args.results_dir, exist_ok=True)
    runner.run(copy_results_command(args), "copying the results from GCS")
    if args.delete_when_done:
        runner.run(delete_command(args), "deleting the slice")


def _note_restart_plan(args: argparse.Namespace, runner: Runner) -> None:
    runner.note("each worker prints 'SSL_JAX_EXIT_STATUS <host> <status>'; all 0: done; else:")
    if args.queued:
        runner.show(describe_queued_command(args))
    runner.show(describe_node_command(args))
    runner.note("if the slice is gone or PREEMPTED (whatever the status):")
    runner.show(delete_command(args))
    runner.note("  then the create, wait and install commands above, then the training command")
    runner.note("if the status is 75 (preempted, checkpoint saved): the training command again")
    runner.note(f"at most {args.max_restarts} restarts; any other status stops with an error")


def main(argv: list[str] | None = None) -> int:
    return runner_main(parse_args, launch, argv)


if __name__ == "__main__":
    sys.exit(main())
