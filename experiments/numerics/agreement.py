"""Where do 1 device, 8 devices and 2 processes x 4 devices part? Step by step.

Runs the same config (a smoke preset by default) as ``ssl-jax pretrain`` three times on
fake CPU devices -- 1 process x 1 device, 1 x 8, and 2 processes x 4 devices joined by
``jax.distributed`` over loopback (gloo) -- and prints, for every logged step, the relative
difference of loss, grad_norm and param_norm of 1x1 and of 2x4 against 1x8. Only the
summation order of the cross-device reductions differs between the three, so the 1x1
column is the float32 noise any reordering makes; the 2x4 column should stay of that size.

    python experiments/numerics/agreement.py --config=configs/moco_v2.py:smoke --steps=12
    python experiments/numerics/agreement.py ... -- --config.moco.bn_groups=2
    python experiments/numerics/agreement.py ... --preempt-at=3   # 2x4: SIGTERM, then resume

Arguments after ``--`` are passed to every run.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from ssl_jax.writer import read_metrics

KEYS = ("loss", "grad_norm", "param_norm")


def _env(devices: int) -> dict[str, str]:
    flags = [
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    flags.append(f"--xla_force_host_platform_device_count={devices}")
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags))


def _command(config: str, workdir: str, steps: int, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ssl_jax.main",
        "pretrain",
        f"--config={config}",
        f"--workdir={workdir}",
        f"--config.schedule.total_steps={steps}",
        "--config.evals.at_end=False",
        "--config.evals.knn_every_steps=0",
        "--config.log_every_steps=1",
        *extra,
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(workdir: str) -> list[dict]:
    """The step rows of the run's metrics (read_metrics skips a line still being written)."""
    return [row for row in read_metrics(workdir) if "loss" in row]


def _two_processes(command: list[str]) -> list[subprocess.Popen]:
    port = _free_port()
    return [
        subprocess.Popen(
            command
            + [
                "--distributed",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            env=_env(4),
        )
        for i in range(2)
    ]


def run_all(
    config: str, steps: int, extra: list[str], root: str, preempt_at: int = 0
) -> dict[str, list[dict]]:
    runs = {}
    for name, devices in (("1x1", 1), ("1x8", 8)):
        workdir = os.path.join(root, name)
        subprocess.run(_command(config, workdir, steps, extra), env=_env(devices), check=True)
        runs[name] = _rows(workdir)
    workdir = os.path.join(root, "2x4")
    command = _command(config, workdir, steps, extra)
    procs = _two_processes(command)
    if preempt_at:  # SIGTERM to process 1 once step `preempt_at` is logged, then resume
        metrics = os.path.join(workdir, "metrics.jsonl")
        while not (os.path.exists(metrics) and len(_rows(workdir)) >= preempt_at):
            time.sleep(0.02)
        procs[1].send_signal(signal.SIGTERM)
        print("preempted:", [p.wait() for p in procs])
        procs = _two_processes(command)
    if any(p.wait() for p in procs):
        raise SystemExit("the 2-process run failed")
    runs["2x4"] = _rows(workdir)
    return runs


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/moco_v2.py:smoke")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--preempt-at", type=int, default=0, help="2x4: SIGTERM after step")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as root:
        runs = run_all(args.config, args.steps, extra, root, args.preempt_at)
    print(f"relative difference to 1x8: {args.config} {' '.join(extra)}")
    print("step | " + " | ".join(f"{k} 1x1  2x4" for k in KEYS))
    for rows in zip(runs["1x1"], runs["1x8"], runs["2x4"], strict=True):
        one, eight, two = rows
        cells = []
        for k in KEYS:
            ref = abs(eight[k]) or 1.0
            cells.append(f"{abs(one[k] - eight[k]) / ref:.1e} {abs(two[k] - eight[k]) / ref:.1e}")
        print(f"{eight['step']:4d} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
