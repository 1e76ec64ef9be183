"""Weights & Biases as an optional log, in W&B's offline mode (files under the workdir):
the run's rows and config reach W&B's own run file, a resume continues the same W&B run,
and a bad mode or a missing package is one line before anything is written."""

import glob
import os

import pytest
from helpers import load_config
from wandb_records import run_contents

from ssl_jax import train, wandb_log
from ssl_jax.writer import read_metrics

pytest.importorskip("wandb")

WANDB = dict(log__wandb="ssl_jax_tests", log__wandb_mode="offline")


def _runs(workdir):
    return sorted(glob.glob(os.path.join(workdir, "wandb", "offline-run-*")))


@pytest.mark.slow
def test_a_run_logs_its_rows_to_wandb_and_a_resume_continues_the_same_run(tmp_path):
    workdir = str(tmp_path / "run")
    quiet = dict(evals__at_end=False, evals__knn_every_steps=0, ckpt__every_steps=2)
    train.pretrain(load_config("simclr", schedule__total_steps=2, **quiet, **WANDB), workdir)
    train.pretrain(load_config("simclr", schedule__total_steps=3, **quiet, **WANDB), workdir)

    run_id = open(os.path.join(workdir, wandb_log.RUN_ID_FILE)).read().strip()
    first, resumed = (run_contents(d) for d in _runs(workdir))
    for contents in (first, resumed):
        assert contents["run"].run_id == run_id and contents["run"].project == "ssl_jax_tests"
        assert contents["run"].display_name == "run"
    config = {c.key: c.value_json for c in first["run"].config.update}
    assert config["method"] == '"simclr"'
    logged = [row for c in (first, resumed) for row in c["history"]]
    jsonl = read_metrics(workdir)
    assert [row[wandb_log.STEP_KEY] for row in logged] == [row["step"] for row in jsonl]
    for row, expected in zip(logged, jsonl, strict=True):
        assert row["loss"] == pytest.approx(expected["loss"], rel=1e-6)


def test_final_values_also_go_to_the_summary(tmp_path):
    log = wandb_log.WandbLog(
        load_config("simclr", **WANDB).log, str(tmp_path), load_config("simclr")
    )
    log.log(4, {"loss": 1.5})
    log.log(4, {"final_knn_top1": 55.0, "final_linear_top1": 60.0})
    log.close()
    (run_dir,) = _runs(str(tmp_path))
    summary = run_contents(run_dir)["summary"]
    assert summary["final_knn_top1"] == 55.0 and summary["final_linear_top1"] == 60.0


def test_a_bad_mode_or_a_missing_package_is_one_line(monkeypatch):
    with pytest.raises(ValueError, match="log.wandb_mode='sometimes'; valid: '', 'online'"):
        wandb_log.check(load_config("simclr", **{**WANDB, "log__wandb_mode": "sometimes"}).log)
    monkeypatch.setattr(wandb_log.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        ValueError, match=r"needs the wandb package: pip install 'ssl_jax\[wandb\]'"
    ):
        wandb_log.check(load_config("simclr", **WANDB).log)
    wandb_log.check(load_config("simclr").log)  # off: nothing to check
