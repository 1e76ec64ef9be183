"""Readers never write: eval, export, reconstruct and a pretrained encoder open a workdir
read-only, so a run still training there keeps its in-flight checkpoint writes."""

import glob
import json
import os
import shutil
import signal
import time

import pytest
from helpers import config_flags, run_ssl_jax, smoke_config, ssl_jax_process, tree_listing

from ssl_jax import export, pretrained, train
from ssl_jax.evaluate import reconstruct


def _steps(checkpoints):
    return sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit())


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished MAE smoke run (checkpoints at 2 and 4) beside a trainer's saves in
    flight: orbax 0.12 writes step N to ``N.orbax-checkpoint-tmp`` and renames it when done
    (older orbax appended ``-<timestamp>``); a writer opening the folder deletes both."""
    config = smoke_config("mae", evals__at_end=False)
    workdir = str(tmp_path_factory.mktemp("readers") / "run")
    train.pretrain(config, workdir)
    checkpoints = os.path.join(workdir, "checkpoints")
    assert _steps(checkpoints) == [2, 4]
    for name in ("6.orbax-checkpoint-tmp", "8.orbax-checkpoint-tmp-1700000000"):
        shutil.copytree(os.path.join(checkpoints, "4"), os.path.join(checkpoints, name))
    return config, workdir


def test_eval_and_export_leave_the_checkpoints_untouched(finished_run):
    # What `ssl-jax eval` and `ssl-jax export` run (the command itself: the live test).
    config, workdir = finished_run
    checkpoints = os.path.join(workdir, "checkpoints")
    before = tree_listing(checkpoints)
    assert train.evaluate_workdir(config, workdir)["step"] == 4
    assert os.path.exists(os.path.join(workdir, "eval_step4.json"))  # the root: allowed
    export.export_backbone(workdir)
    assert tree_listing(checkpoints) == before


def test_reconstruct_and_encoder_reads_leave_the_checkpoints_untouched(finished_run):
    config, workdir = finished_run
    checkpoints = os.path.join(workdir, "checkpoints")
    before = tree_listing(checkpoints)
    reconstruct.reconstruct_workdir(config, workdir, num_images=2)
    assert pretrained.load_encoder(workdir)[2]["step"] == 4
    assert tree_listing(checkpoints) == before


def test_readers_skip_an_unreadable_newest_step_and_leave_it_there(finished_run, tmp_path):
    config, workdir = finished_run
    run = str(tmp_path / "run")
    shutil.copytree(workdir, run)
    checkpoints = os.path.join(run, "checkpoints")
    with open(os.path.join(checkpoints, "4", "default", "_METADATA"), "w") as f:
        f.write('{"tree_metadata": {')
    before = tree_listing(checkpoints)
    assert pretrained.load_encoder(run)[2]["step"] == 2
    reconstruct.reconstruct_workdir(config, run, num_images=2)
    assert tree_listing(checkpoints) == before


@pytest.mark.slow
def test_eval_of_a_running_run_leaves_the_trainer_undisturbed(tmp_path):
    workdir = str(tmp_path / "live")
    checkpoints = os.path.join(workdir, "checkpoints")
    steps = 10
    flags = config_flags(
        schedule__total_steps=steps,
        ckpt__every_steps=1,  # a save in flight most of the time
        ckpt__keep=steps,  # every checkpoint stays: the end state shows each one
        evals__at_end=False,
        evals__knn_every_steps=0,
    )
    trainer = ssl_jax_process(
        "pretrain", "--config=configs/moco_v2.py:smoke", f"--workdir={workdir}", *flags
    )
    try:
        deadline = time.time() + 240
        while not (os.path.isdir(checkpoints) and _steps(checkpoints)):
            if trainer.poll() is not None or time.time() > deadline:
                pytest.fail(f"no first checkpoint:\n{trainer.communicate()[0]}")
            time.sleep(0.01)
        # Freeze the trainer mid-run, with a save in flight if one shows within 10 s, so
        # the eval surely reads a running run; SIGSTOP stops orbax's threads too.
        until = time.time() + 10
        while time.time() < until and not any("tmp" in d for d in os.listdir(checkpoints)):
            time.sleep(0.002)
        trainer.send_signal(signal.SIGSTOP)
        try:
            frozen = tree_listing(checkpoints)
            evaluated = run_ssl_jax("eval", f"--workdir={workdir}", timeout=240)
            after = tree_listing(checkpoints)
        finally:
            trainer.send_signal(signal.SIGCONT)
        out, _ = trainer.communicate(timeout=300)
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert evaluated.returncode == 0, evaluated.stderr
    assert after == frozen  # the trainer's finished and in-flight writes alike
    assert trainer.returncode == 0, out
    # Every checkpoint finalized and nothing else: no torn or removed write.
    assert set(os.listdir(checkpoints)) == {str(s) for s in range(1, steps + 1)}
    for step in range(1, steps + 1):
        assert os.path.exists(os.path.join(checkpoints, str(step), "default", "_METADATA"))
    (result,) = glob.glob(os.path.join(workdir, "eval_step*.json"))
    with open(result) as f:
        assert json.load(f)["step"] < steps  # read mid-run
