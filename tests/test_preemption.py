"""Preemption and crashes of a real `ssl-jax pretrain` process: SIGTERM saves at the next
step boundary and exits 75, Ctrl-C (SIGINT) likewise with 130; SIGKILL at a random step
loses nothing; a notice during the kNN monitor or the final evaluation stops it between
two batches. Either way the same command finishes the run with the final state and the
metrics log of an uninterrupted run, bitwise (same program, same CPU)."""

import os
import random
import signal
import time

import jax
import numpy as np
import pytest
from helpers import config_flags, load_config, ssl_jax_process

from ssl_jax import train
from ssl_jax.preemption import EXIT_INTERRUPTED, EXIT_PREEMPTED
from ssl_jax.writer import read_metrics

# End to end (README, "The tests"): run by `python -m pytest -m slow` and by CI.
pytestmark = pytest.mark.slow

STEPS = 16
# A checkpoint every 8 steps, no evaluation: the run is nothing but steps and saves.
OVERRIDES = dict(
    schedule__total_steps=STEPS,
    ckpt__every_steps=8,
    ckpt__keep=3,
    evals__knn_every_steps=0,
    evals__at_end=False,
)
CONFIG_FLAG = "--config=configs/moco_v2.py:smoke"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    config = load_config("moco_v2", **OVERRIDES)
    workdir = str(tmp_path_factory.mktemp("uninterrupted") / "run")
    train.pretrain(config, workdir)
    return config, workdir


def _start(workdir):
    flags = config_flags(**OVERRIDES)
    return ssl_jax_process("pretrain", CONFIG_FLAG, f"--workdir={workdir}", *flags)


def _wait_for_step(proc, workdir, step, timeout=240):
    """Returns once the run has logged ``step`` (it is then in the steps after it)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = read_metrics(workdir) if os.path.exists(workdir) else []
        if any(r["step"] >= step for r in rows):
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before step {step}:\n{proc.stdout.read()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no step {step} within {timeout} s")


def _finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _checkpoint_steps(workdir):
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def _assert_same_run(config, expected_dir, actual_dir, steps=STEPS):
    expected = jax.device_get(train.restore_state(config, expected_dir)[1])
    actual = jax.device_get(train.restore_state(config, actual_dir)[1])
    assert int(actual.step) == steps
    paths_expected = jax.tree_util.tree_leaves_with_path(expected)
    paths_actual = jax.tree_util.tree_leaves_with_path(actual)
    assert [p for p, _ in paths_expected] == [p for p, _ in paths_actual]
    for (path, a), (_, b) in zip(paths_expected, paths_actual, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    assert read_metrics(actual_dir) == read_metrics(expected_dir)


@pytest.mark.parametrize(
    "signum, exit_status",
    [(signal.SIGTERM, EXIT_PREEMPTED), (signal.SIGINT, EXIT_INTERRUPTED)],
    ids=["SIGTERM", "SIGINT"],
)
def test_a_signal_checkpoints_at_the_next_step_exits_and_resumes_exactly(
    uninterrupted, tmp_path, signum, exit_status
):
    config, expected_dir = uninterrupted
    workdir = str(tmp_path / "run")
    proc = _start(workdir)
    _wait_for_step(proc, workdir, 3)
    proc.send_signal(signum)
    status, out = _finish(proc)
    assert status == exit_status, out
    assert f"preempted ({signal.Signals(signum).name}): saved the checkpoint at step" in out
    assert "Traceback" not in out
    (saved,) = _checkpoint_steps(workdir)  # off the 8-step interval: the preemption save
    assert 3 <= saved < 8, saved
    assert max(r["step"] for r in read_metrics(workdir)) == saved
    if signum == signal.SIGINT:
        return  # the same save as SIGTERM's, whose resume is compared

    status, out = _finish(_start(workdir))
    assert status == 0, out
    # The run says what it does, each phase with its duration, before the first step.
    phases = [
        "Importing TensorFlow for the input pipeline: ",
        "Reading the data set and building the model: ",
        f"moco on digits 'train': {STEPS} steps",
        "Initialising the train state (compiling its init): ",
        "Restoring the latest checkpoint: ",
        f"Resumed from the checkpoint at step {saved}",
        "Compiling the train step (once per process): ",
        f"step {saved + 1}/{STEPS} | ",
    ]
    at = [out.find(p) for p in phases]
    assert -1 not in at and at == sorted(at), out
    _assert_same_run(config, expected_dir, workdir)


def test_sigkill_at_a_random_step_then_restart_matches_an_uninterrupted_run(
    uninterrupted, tmp_path
):
    config, expected_dir = uninterrupted
    kill_after = random.randrange(2, STEPS - 5)
    print(f"SIGKILL after step {kill_after}")  # shown when the test fails
    workdir = str(tmp_path / "run")
    proc = _start(workdir)
    _wait_for_step(proc, workdir, kill_after)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    status, out = _finish(_start(workdir))
    assert status == 0, out
    _assert_same_run(config, expected_dir, workdir)


# The evaluations: a kNN monitor at step 4, the final report (kNN, linear probe) at 8.
EVAL_STEPS = 8
EVAL_OVERRIDES = dict(
    schedule__total_steps=EVAL_STEPS,
    ckpt__every_steps=100,
    evals__knn_every_steps=4,
    evals__linear_epochs=3,
    evals__random_init_baseline=False,
)


def _signal_on_call(monkeypatch, owner, name):
    """The first call of ``owner.name`` sends this process SIGTERM before it starts, as a
    notice arriving in the middle of an evaluation would."""
    original = getattr(owner, name)
    calls = []

    def wrapped(*args, **kwargs):
        if not calls:
            calls.append(name)
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)
    return calls


def test_a_notice_during_an_evaluation_stops_it_between_batches_and_the_rerun_redoes_it(
    tmp_path, monkeypatch
):
    from ssl_jax.evaluate import runner
    from ssl_jax.preemption import Preempted

    config = load_config("moco_v2", **EVAL_OVERRIDES)
    expected_dir, workdir = str(tmp_path / "uninterrupted"), str(tmp_path / "run")
    expected_report = train.pretrain(config, expected_dir)

    # During the kNN monitor at step 4: stopped after one batch, step 4 saved, no kNN row.
    with monkeypatch.context() as patch:
        _signal_on_call(patch, runner.Evaluator, "knn")
        with pytest.raises(Preempted) as stopped:
            train.pretrain(config, workdir)
    assert stopped.value.step == 4 and stopped.value.exit_status == EXIT_PREEMPTED
    assert _checkpoint_steps(workdir) == [4]
    assert not any("knn_top1" in row for row in read_metrics(workdir))

    # During the final linear probe (between its epochs): the last step is saved.
    with monkeypatch.context() as patch:
        calls = _signal_on_call(patch, runner, "linear_probe")
        with pytest.raises(Preempted) as stopped:
            train.pretrain(config, workdir)  # resumes at 4, redoes its kNN monitor first
    assert calls and stopped.value.step == EVAL_STEPS
    assert _checkpoint_steps(workdir) == [4, EVAL_STEPS]
    assert [r["step"] for r in read_metrics(workdir) if "knn_top1" in r] == [4]

    report = train.pretrain(config, workdir)  # the final evaluation again, whole
    assert report["pretrained"] == expected_report["pretrained"]
    _assert_same_run(config, expected_dir, workdir, steps=EVAL_STEPS)
