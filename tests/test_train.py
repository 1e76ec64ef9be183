"""The training loop: smoke runs, exact resume, divergence, bad input."""

import contextlib
import glob
import json
import os
import resource
import shutil
import subprocess

import jax
import numpy as np
import pytest
from helpers import load_config, tree_listing

from ssl_jax import parallel, train
from ssl_jax.checkpoint import CheckpointWriteError, IncompatibleCheckpointError


@pytest.fixture(scope="module")
def moco_run(tmp_path_factory):
    """One finished MoCo v2 smoke run: 4 steps, checkpoints at 2 and 4, evals at the end."""
    workdir = str(tmp_path_factory.mktemp("moco") / "run")
    config = load_config("moco_v2")
    report = train.pretrain(config, workdir)
    return config, workdir, report


def test_smoke_run_writes_report_metrics_and_checkpoints(moco_run):
    config, workdir, report = moco_run
    assert report["steps"] == 4
    assert set(report["pretrained"]) == {"knn_top1", "linear_top1", "online_linear_top1"}
    assert set(report["random_init"]) == {"knn_top1", "linear_top1"}
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    for name in ("config.json", "metrics.jsonl", "report.txt", "report.json"):
        assert os.path.exists(os.path.join(workdir, name)), name


def test_collapse_diagnostics_are_logged_and_plotted(moco_run):
    _, workdir, report = moco_run
    rows = [r for r in _rows(workdir) if "loss" in r]
    assert all(0 < r["collapse_std"] < 1 and r["effective_rank"] >= 1 for r in rows)
    plots = {os.path.basename(p) for p in report["plots"]}
    assert {"loss.png", "lr.png", "collapse_std.png", "effective_rank.png"} <= plots
    for path in report["plots"]:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", path  # a PNG file's signature
    with open(os.path.join(workdir, "report.json")) as f:
        assert json.load(f)["plots"] == report["plots"]  # the report names them


def _final_state(config, workdir):
    return jax.device_get(train.restore_state(config, workdir)[1])


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_resume_after_a_crash_is_bitwise_exact(moco_run, tmp_path):
    config, workdir, _ = moco_run
    # A crash after the step-2 checkpoint: step 4 never landed, the log ran ahead.
    crashed = str(tmp_path / "crashed")
    shutil.copytree(workdir, crashed)
    shutil.rmtree(os.path.join(crashed, "checkpoints", "4"))
    train.pretrain(config, crashed)
    expected, resumed = _final_state(config, workdir), _final_state(config, crashed)
    assert int(resumed.step) == 4
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    train_rows = [r for r in _rows(workdir) if "loss" in r]
    assert train_rows == [r for r in _rows(crashed) if "loss" in r]


def test_workdir_of_an_incompatible_config_is_refused_untouched(moco_run, tmp_path):
    config, workdir, _ = moco_run
    other = str(tmp_path / "other")
    shutil.copytree(workdir, other)
    before = {n: open(os.path.join(other, n)).read() for n in ("config.json", "metrics.jsonl")}
    changed = load_config("moco_v2", model__head__out_dim=8)
    with pytest.raises(IncompatibleCheckpointError, match=r"model.head.out_dim: 16 -> 8"):
        train.pretrain(changed, other)
    after = {n: open(os.path.join(other, n)).read() for n in before}
    assert before == after
    assert sorted(os.listdir(os.path.join(other, "checkpoints"))) == ["2", "4"]


@pytest.mark.slow
def test_non_finite_loss_stops_naming_step_and_keeps_last_checkpoint(tmp_path):
    # Warm-up starts the lr at 0, so the first update is harmless and checkpointed; the
    # next one, at lr ~1e29, overflows the parameters.
    config = load_config(
        "simclr",
        optim__lr=1e30,
        schedule__total_steps=6,
        schedule__warmup_epochs=0.5,
        ckpt__every_steps=1,
    )
    workdir = str(tmp_path / "nan")
    with pytest.raises(train.DivergenceError, match=r"at step 1.*last good checkpoint is step 1"):
        train.pretrain(config, workdir)
    steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))
    assert steps and steps == sorted(steps)
    state = _final_state(config, workdir)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


def test_batch_not_divisible_by_devices_is_rejected():
    config = load_config("simclr", input__global_batch_size=12)
    with pytest.raises(ValueError, match=r"global_batch_size=12 is not divisible by the 8"):
        train.build(config, parallel.make_mesh())


@pytest.mark.slow
def test_moco_v1_smoke_preset_trains(tmp_path):
    # Every method steps in tests/test_methods.py; this is the v1 preset end to end.
    config = load_config("moco_v1", evals__random_init_baseline=False)
    report = train.pretrain(config, str(tmp_path / "moco_v1"))
    assert report["steps"] == 4
    assert 0.0 <= report["pretrained"]["knn_top1"] <= 100.0


@contextlib.contextmanager
def _read_only(directory):
    """No new entries in ``directory``: chmod for a user, the immutable flag for root
    (which ignores permissions)."""
    if os.geteuid() != 0:
        os.chmod(directory, 0o555)
        try:
            yield
        finally:
            os.chmod(directory, 0o755)
        return
    if subprocess.run(["chattr", "+i", directory], capture_output=True).returncode:
        pytest.skip(f"cannot make {directory} read-only as root here (no chattr +i)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", directory], check=True)


@contextlib.contextmanager
def _full_disk():
    """Writes of more than 20 kB fail with EFBIG, as a full disk's fail with ENOSPC."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["read_only", "full_disk"])
def test_unwritable_checkpoint_dir_keeps_last_good(moco_run, tmp_path, failure):
    config, workdir, _ = moco_run
    run = str(tmp_path / "run")
    shutil.copytree(workdir, run)
    checkpoints = os.path.join(run, "checkpoints")
    longer = load_config("moco_v2", schedule__total_steps=6, evals__at_end=False)
    blocked = _read_only(checkpoints) if failure == "read_only" else _full_disk()
    message = (
        r"cannot write the checkpoint at step 6 to .*checkpoints \(.*\); "
        r"the last good checkpoint is step 4, intact"
    )
    with blocked, pytest.raises(CheckpointWriteError, match=message):
        train.pretrain(longer, run)
    assert sorted(d for d in os.listdir(checkpoints) if d.isdigit()) == ["2", "4"]
    assert int(np.asarray(train.restore_state(longer, run)[1].step.addressable_data(0))) == 4
    if failure == "full_disk":
        # orbax's threads of the failed save live on in this process (they end with the
        # command in a real run), so the rerun is shown on the read-only case.
        return
    # The same command, once the disk is writable again, resumes from step 4 and finishes.
    report = train.pretrain(longer, run)
    assert report["steps"] == 6
    assert int(_final_state(longer, run).step) == 6


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["array_bytes", "metadata"])
def test_unreadable_latest_checkpoint_is_skipped_by_readers_and_moved_aside_by_the_trainer(
    moco_run, tmp_path, caplog, damage
):
    config, workdir, _ = moco_run
    run = str(tmp_path / "run")
    shutil.copytree(workdir, run)
    checkpoints = os.path.join(run, "checkpoints")
    latest = os.path.join(checkpoints, "4", "default")
    if damage == "array_bytes":
        damaged = glob.glob(os.path.join(latest, "ocdbt.process_0", "d", "*"))
        assert damaged
        for path in damaged:
            with open(path, "wb") as f:
                f.write(b"torn write")
    else:
        damaged = [os.path.join(latest, "_METADATA")]
        with open(damaged[0], "w") as f:
            f.write('{"tree_metadata": {')
    # A reader falls back to the previous step and moves nothing.
    before = tree_listing(checkpoints)
    state = train.restore_state(config, run)[1]
    assert int(np.asarray(state.step.addressable_data(0))) == 2
    assert "checkpoint step 4 is unreadable" in caplog.text
    assert tree_listing(checkpoints) == before
    # The trainer (the same command again) moves step 4 aside, kept, and rewrites it.
    report = train.pretrain(load_config("moco_v2", evals__at_end=False), run)
    assert report["steps"] == 4
    aside = os.path.join(checkpoints, "4.unreadable-1")
    assert f"moved the unreadable checkpoint step 4 to {aside}" in caplog.text
    for path in damaged:
        with open(path.replace(os.path.join(checkpoints, "4"), aside), "rb") as f:
            assert f.read() == (
                b"torn write" if damage == "array_bytes" else b'{"tree_metadata": {'
            )
    assert sorted(d for d in os.listdir(checkpoints) if d.isdigit()) == ["2", "4"]
    assert int(_final_state(config, run).step) == 4


def test_rerun_with_fewer_steps_is_refused_and_a_rerun_keeps_one_final_row(moco_run, tmp_path):
    config, workdir, _ = moco_run
    run = str(tmp_path / "run")
    shutil.copytree(workdir, run)
    before = {n: open(os.path.join(run, n)).read() for n in ("config.json", "metrics.jsonl")}
    shorter = load_config("moco_v2", schedule__total_steps=2)
    message = (
        r"holds a checkpoint at step 4, past schedule.total_steps=2; "
        r"use a new --workdir or total_steps >= 4\.$"
    )
    with pytest.raises(IncompatibleCheckpointError, match=message):
        train.pretrain(shorter, run)
    assert before == {n: open(os.path.join(run, n)).read() for n in before}
    # The same command again (a kill during the final evaluation, say) re-runs only the
    # final evaluation, whose values replace the earlier ones.
    report = train.pretrain(config, run)
    assert report["steps"] == 4
    finals = [r for r in _rows(run) if any(k.startswith("final_") for k in r)]
    assert [r["step"] for r in finals] == [4]
    assert [r for r in _rows(run) if "loss" in r] == [r for r in _rows(workdir) if "loss" in r]
