"""Seconds from a preemption notice to a committed checkpoint, on a real `ssl-jax pretrain`.

Starts the run, waits until it has logged ``--after`` steps, sends SIGTERM (or SIGINT with
``--signal=INT``) and measures when the checkpoint of the notice's step appears complete
(orbax renames the temporary directory when the write is done) and when the process
exits. It also prints the run's median step time (from when its metrics rows appear), so
the latency reads in steps: the loop lets at most ``step_metrics.MAX_STEPS_IN_FLIGHT`` updates
run ahead of the device, so the bound is those steps plus one save.

    python experiments/faults/preemption_latency.py --config=configs/moco_v2.py:smoke
    python experiments/faults/preemption_latency.py --config=configs/moco_v2.py:digits --after=30

``--during=knn`` runs the kNN monitor after step ``--after`` and signals as it starts (the
checkpoint is then that step's); ``--during=final`` ends the run at ``--after`` steps and
signals as the final evaluation starts (its checkpoint exists: the figure is the time to
exit, the evaluation stopped between two batches).

Arguments after ``--`` are passed to the run (e.g. ``-- --config.evals.knn_every_steps=0``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from ssl_jax.writer import read_metrics


def _rows(workdir: str) -> list[dict]:
    """The step rows of the run's metrics (read_metrics skips a line still being written)."""
    return [row for row in read_metrics(workdir) if "loss" in row]


def _committed_steps(workdir: str) -> set[int]:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return set()
    return {int(name) for name in os.listdir(directory) if name.isdigit()}


WHEN = {  # --during: the flags that put the signal there
    "steps": lambda after: [],
    "knn": lambda after: [f"--config.evals.knn_every_steps={after}"],
    "final": lambda after: [f"--config.schedule.total_steps={after}"],
}


def measure(config: str, after: int, signum: int, during: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as root:
        workdir = os.path.join(root, "run")
        command = [sys.executable, "-m", "ssl_jax.main", "pretrain", f"--config={config}"]
        command += [f"--workdir={workdir}", "--config.log_every_steps=1", *WHEN[during](after)]
        command += extra
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        seen, arrivals = 0, []  # (time a new metrics row appeared)
        while seen < after:
            if proc.poll() is not None:
                raise SystemExit(f"the run ended before step {after}:\n{proc.stdout.read()}")
            count = len(_rows(workdir))
            if count > seen:
                arrivals.append(time.time())
                seen = count
            time.sleep(0.01)
        before = _committed_steps(workdir)
        notice_step = max(r["step"] for r in _rows(workdir))
        sent = time.time()
        proc.send_signal(signum)
        saved_at = None
        while proc.poll() is None:
            if saved_at is None and _committed_steps(workdir) - before:
                saved_at = time.time()
            time.sleep(0.005)
        exited = time.time()
        output = proc.stdout.read()
        new = sorted(_committed_steps(workdir) - before)
        if saved_at is None and new:
            saved_at = exited
        times = sorted(b - a for a, b in zip(arrivals[1:], arrivals[2:], strict=False))
    if not new and during != "final":
        raise SystemExit(f"no checkpoint after the signal (exit {proc.returncode}):\n{output}")
    return dict(
        during=during,
        exit_status=proc.returncode,
        logged_step_at_notice=notice_step,
        saved_step=new[-1] if new else max(before),
        to_checkpoint_s=round(saved_at - sent, 2) if new else 0.0,
        to_exit_s=round(exited - sent, 2),
        median_step_s=round(times[len(times) // 2], 3) if times else float("nan"),
    )


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/moco_v2.py:smoke")
    parser.add_argument("--after", type=int, default=3, help="logged steps before the signal")
    parser.add_argument("--signal", default="TERM", choices=["TERM", "INT"])
    parser.add_argument("--during", default="steps", choices=sorted(WHEN))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    signum = signal.SIGTERM if args.signal == "TERM" else signal.SIGINT
    for _ in range(args.repeats):
        print(json.dumps(measure(args.config, args.after, signum, args.during, extra)), flush=True)


if __name__ == "__main__":
    main()
