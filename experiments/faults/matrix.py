"""The fault matrix of the reliability issue, through the real `ssl-jax` command: one line
per case, `PASS` or `FAIL`, the exit status and the first line the command printed.

    python experiments/faults/matrix.py            # every case, about 10 minutes on 2 cores
    python experiments/faults/matrix.py --only=sig # the cases whose name contains "sig"

Bad input must exit 2 with one line naming the value and leave no workdir behind; the run
faults (signals, a kill, a corrupt checkpoint, a reader beside a live trainer, a blow-up, a
full disk) must end with their documented status and lose nothing: the rerun of the same
command finishes. The bitwise comparisons with an uninterrupted run are in the tests
(`tests/test_preemption.py`, `tests/test_train.py`); this script is the user's-eye view.
The full-disk case mounts a 10 MB tmpfs and is skipped where that needs privileges the
user lacks.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from ssl_jax.writer import read_metrics

SMOKE = "--config=configs/moco_v2.py:smoke"
# Short runs without evaluation unless a case needs one: each run case costs one compile.
QUICK = ["--config.evals.at_end=False", "--config.evals.knn_every_steps=0"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def ssl_jax(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ssl_jax.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ssl_jax.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )


def first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def wait_for_step(proc: subprocess.Popen, workdir: str, step: int, key: str = "loss") -> None:
    deadline = time.time() + 300
    while not any(r["step"] >= step and key in r for r in read_metrics(workdir)):
        if proc.poll() is not None or time.time() > deadline:
            raise AssertionError(f"the run ended or hung before step {step}")
        time.sleep(0.01)


def checkpoints(workdir: str) -> list[int]:
    directory = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


# ------------------------------------------------------------------------- bad input

BAD_INPUT = [  # (name, command-line arguments, what the one line must contain)
    ("misspelt key", [SMOKE, "--config.optim.lrr=0.1"], "unknown config key 'optim.lrr'"),
    ("wrong type", [SMOKE, "--config.optim.lr=fast"], "could not convert string to float"),
    ("unknown preset", ["--config=configs/moco_v2.py:cifar100"], "unknown config preset"),
    ("missing config file", ["--config=configs/nope.py:smoke"], "cannot load config file"),
    ("unknown method", [SMOKE, "--config.method=byol2"], "unknown method 'byol2'"),
    ("negative lr", [SMOKE, "--config.optim.lr=-0.1"], "optim.lr=-0.1 must be > 0"),
    ("zero lr", [SMOKE, "--config.optim.lr=0"], "optim.lr=0.0 must be > 0"),
    ("total_steps=-5", [SMOKE, "--config.schedule.total_steps=-5"], "total_steps=-5"),
    ("image_size=0", [SMOKE, "--config.input.image_size=0"], "input.image_size=0"),
    ("log_every_steps=0", [SMOKE, "--config.log_every_steps=0"], "log_every_steps=0"),
    ("ckpt.every_steps=0", [SMOKE, "--config.ckpt.every_steps=0"], "ckpt.every_steps=0"),
    ("ckpt.keep=0", [SMOKE, "--config.ckpt.keep=0"], "ckpt.keep=0 must be >= 1"),
    ("mean of 2 values", [SMOKE, "--config.input.mean=(0.5,0.5)"], "must have 3 values"),
    ("temperature 0", [SMOKE, "--config.moco.temperature=0"], "moco.temperature=0.0"),
    ("bad queue size", [SMOKE, "--config.moco.queue_size=60"], "moco.queue_size"),
    ("bad BN groups", [SMOKE, "--config.moco.bn_groups=3"], "bn_groups"),
    ("missing eval split", [SMOKE, "--config.input.eval_test_split=validation"], "validation"),
    ("unknown data set", [SMOKE, "--config.input.dataset=nope_xyz"], "unknown data set"),
    ("no config", [], "pretrain needs --config"),
]


def one_line(args: list[str], expected: str) -> tuple[int, str]:
    """Runs ``ssl-jax *args``: it must exit 2 with one line that contains ``expected``."""
    out = ssl_jax(*args)
    line = first_line(out.stderr)
    assert out.returncode == 2, f"exit {out.returncode}: {line}"
    assert out.stderr.strip().count("\n") == 0, "more than one line"
    assert expected in line, line
    return out.returncode, line


def bad_input_case(args: list[str], expected: str) -> Callable[[str], tuple[int, str]]:
    def case(root: str) -> tuple[int, str]:
        workdir = os.path.join(root, "run")
        result = one_line(["pretrain", *args, f"--workdir={workdir}"], expected)
        assert not os.path.exists(workdir), "the workdir was written"
        return result

    return case


def usage_case(args: list[str], expected: str) -> Callable[[str], tuple[int, str]]:
    return lambda root: one_line(args, expected)


def workdir_file(root: str) -> tuple[int, str]:
    path = os.path.join(root, "a_file")
    open(path, "w").close()
    return one_line(["pretrain", SMOKE, f"--workdir={path}"], "is a file, not a directory")


def long_name(root: str) -> tuple[int, str]:
    workdir = os.path.join(root, "r" * 300, "run")
    return one_line(["pretrain", SMOKE, f"--workdir={workdir}"], "has 300 characters")


def empty_npz(root: str) -> tuple[int, str]:
    import numpy as np

    path = os.path.join(root, "empty.npz")
    np.savez(path)
    return bad_input_case([SMOKE, f"--config.input.dataset=npz:{path}"], "found keys []")(root)


def truncated_config_json(root: str) -> tuple[int, str]:
    with open(os.path.join(root, "config.json"), "w") as f:
        f.write('{"method": "moco", "mod')
    return one_line(["eval", f"--workdir={root}"], "config.json is not valid JSON")


# ------------------------------------------------------------------------ run faults


def _signal_mid_run(signum: int, status: int) -> Callable[[str], tuple[int, str]]:
    def case(root: str) -> tuple[int, str]:
        workdir = os.path.join(root, "run")
        flags = [SMOKE, f"--workdir={workdir}", "--config.schedule.total_steps=12", *QUICK]
        proc = start("pretrain", *flags, "--config.ckpt.every_steps=100")
        wait_for_step(proc, workdir, 3)
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == status, f"exit {proc.returncode}: {first_line(out)}"
        assert "Traceback" not in out
        (saved,) = checkpoints(workdir)
        rerun = ssl_jax("pretrain", *flags, "--config.ckpt.every_steps=100")
        assert rerun.returncode == 0, first_line(rerun.stderr)
        assert f"Resumed from the checkpoint at step {saved}" in rerun.stdout
        return proc.returncode, first_line(out)

    return case


def sigkill_mid_run(root: str) -> tuple[int, str]:
    workdir = os.path.join(root, "run")
    flags = [SMOKE, f"--workdir={workdir}", "--config.schedule.total_steps=12", *QUICK]
    proc = start("pretrain", *flags, "--config.ckpt.every_steps=4")
    wait_for_step(proc, workdir, 6)
    proc.kill()
    proc.communicate(timeout=60)
    rerun = ssl_jax("pretrain", *flags, "--config.ckpt.every_steps=4")
    assert rerun.returncode == 0, first_line(rerun.stderr)
    assert checkpoints(workdir)[-1] == 12
    return proc.returncode, f"killed after step 6; {first_line(rerun.stdout)}"


def sigterm_during_knn(root: str) -> tuple[int, str]:
    workdir = os.path.join(root, "run")
    flags = [SMOKE, f"--workdir={workdir}", "--config.schedule.total_steps=8"]
    flags += ["--config.evals.knn_every_steps=4", "--config.evals.at_end=False"]
    flags += ["--config.input.eval_train_split=train", "--config.ckpt.every_steps=100"]
    proc = start("pretrain", *flags)
    wait_for_step(proc, workdir, 4)  # the monitor starts as step 4's row is written
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, f"exit {proc.returncode}: {first_line(out)}"
    assert checkpoints(workdir) == [4], checkpoints(workdir)
    rerun = ssl_jax("pretrain", *flags)
    assert rerun.returncode == 0, first_line(rerun.stderr)
    knn_steps = [r["step"] for r in read_metrics(workdir) if "knn_top1" in r]
    assert knn_steps == [4], knn_steps
    return proc.returncode, first_line(out)


def sigterm_during_final_eval(root: str) -> tuple[int, str]:
    workdir = os.path.join(root, "run")
    flags = [SMOKE, f"--workdir={workdir}", "--config.schedule.total_steps=4"]
    flags += ["--config.evals.knn_every_steps=0", "--config.evals.linear_epochs=100"]
    flags += ["--config.input.eval_train_split=train"]
    proc = start("pretrain", *flags)
    wait_for_step(proc, workdir, 4)
    while 4 not in (checkpoints(workdir) if os.path.isdir(f"{workdir}/checkpoints") else []):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, f"exit {proc.returncode}: {first_line(out)}"
    rerun = ssl_jax("pretrain", *flags)
    assert rerun.returncode == 0, first_line(rerun.stderr)
    finals = [r for r in read_metrics(workdir) if "final_knn_top1" in r]
    assert len(finals) == 1, finals
    return proc.returncode, first_line(out)


def corrupt_latest_checkpoint(root: str) -> tuple[int, str]:
    workdir = os.path.join(root, "run")
    flags = [SMOKE, f"--workdir={workdir}", "--config.schedule.total_steps=4", *QUICK]
    assert ssl_jax("pretrain", *flags).returncode == 0
    with open(os.path.join(workdir, "checkpoints", "4", "default", "_METADATA"), "w") as f:
        f.write('{"tree_metadata": {')
    longer = [f.replace("total_steps=4", "total_steps=6") for f in flags]
    rerun = ssl_jax("pretrain", *longer)
    assert rerun.returncode == 0, first_line(rerun.stderr)
    assert "Resumed from the checkpoint at step 2" in rerun.stdout
    moved = [d for d in os.listdir(os.path.join(workdir, "checkpoints")) if "unreadable" in d]
    assert moved == ["4.unreadable-1"], moved
    return rerun.returncode, "resumed from step 2; step 4 kept as 4.unreadable-1"


def shorter_rerun(root: str) -> tuple[int, str]:
    workdir = os.path.join(root, "run")
    flags = [SMOKE, f"--workdir={workdir}", "--config.schedule.total_steps=4", *QUICK]
    assert ssl_jax("pretrain", *flags).returncode == 0
    shorter = [f.replace("total_steps=4", "total_steps=2") for f in flags]
    out = ssl_jax("pretrain", *shorter)
    line = first_line(out.stderr)
    assert out.returncode == 2 and "total_steps" in line, f"exit {out.returncode}: {line}"
    return out.returncode, line


def reader_beside_a_live_trainer(root: str) -> tuple[int, str]:
    workdir = os.path.join(root, "run")
    flags = [SMOKE, f"--workdir={workdir}", "--config.schedule.total_steps=30", *QUICK]
    proc = start("pretrain", *flags, "--config.ckpt.every_steps=1", "--config.ckpt.keep=30")
    wait_for_step(proc, workdir, 2)
    out = ssl_jax("eval", f"--workdir={workdir}")
    trainer_out, _ = proc.communicate(timeout=300)
    assert out.returncode == 0, first_line(out.stderr)
    assert proc.returncode == 0, first_line(trainer_out)
    assert checkpoints(workdir) == list(range(1, 31)), checkpoints(workdir)
    return out.returncode, "eval read a running run; all 30 of the trainer's checkpoints intact"


def blow_up(root: str) -> tuple[int, str]:
    workdir = os.path.join(root, "run")
    out = ssl_jax("pretrain", SMOKE, f"--workdir={workdir}", "--config.optim.lr=1e6", *QUICK)
    line = first_line(out.stderr)
    assert out.returncode == 3 and "diverged" in line, f"exit {out.returncode}: {line}"
    return out.returncode, line


def full_disk(root: str) -> tuple[int, str]:
    disk = os.path.join(root, "disk")
    os.makedirs(disk)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", disk])
    if mounted.returncode:
        return -1, "SKIP: cannot mount a 10 MB tmpfs here"
    try:
        workdir = os.path.join(disk, "run")
        flags = [SMOKE, f"--workdir={workdir}", "--config.schedule.total_steps=8", *QUICK]
        out = ssl_jax("pretrain", *flags)
        line = first_line(out.stderr)
        assert out.returncode == 74, f"exit {out.returncode}: {line}"
        assert "Traceback" not in out.stderr and out.stderr.strip().count("\n") == 0, out.stderr
        assert checkpoints(workdir), "no checkpoint kept"
        return out.returncode, line
    finally:
        subprocess.run(["umount", disk])


CASES: list[tuple[str, Callable[[str], tuple[int, str]]]] = [
    *((name, bad_input_case(args, expected)) for name, args, expected in BAD_INPUT),
    ("no command", usage_case([], "expected one command")),
    ("unknown command", usage_case(["train"], "expected one command")),
    ("no workdir", usage_case(["eval"], "eval needs --workdir")),
    ("workdir is a file", workdir_file),
    ("300-character name", long_name),
    ("empty npz", empty_npz),
    ("truncated config.json", truncated_config_json),
    ("SIGTERM mid-run", _signal_mid_run(signal.SIGTERM, 75)),
    ("SIGINT mid-run", _signal_mid_run(signal.SIGINT, 130)),
    ("SIGKILL mid-run", sigkill_mid_run),
    ("SIGTERM during the kNN monitor", sigterm_during_knn),
    ("SIGTERM during the final evaluation", sigterm_during_final_eval),
    ("corrupt latest checkpoint", corrupt_latest_checkpoint),
    ("rerun with fewer total_steps", shorter_rerun),
    ("eval beside a live trainer", reader_beside_a_live_trainer),
    ("lr 1e6 blows up finitely", blow_up),
    ("full disk", full_disk),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    args = parser.parse_args()
    failed = 0
    for name, case in CASES:
        if args.only.lower() not in name.lower():
            continue
        root = tempfile.mkdtemp(prefix="ssl_jax_fault_")
        start_time = time.time()
        try:
            status, line = case(root)
            verdict = "SKIP" if line.startswith("SKIP") else "PASS"
        except (AssertionError, subprocess.TimeoutExpired) as e:
            status, line, verdict = -1, str(e).splitlines()[0] if str(e) else repr(e), "FAIL"
            failed += 1
        finally:
            shutil.rmtree(root, ignore_errors=True)
        seconds = time.time() - start_time
        print(f"{verdict}  {name:<38} exit {status:>3}  {seconds:5.1f} s  {line[:150]}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
