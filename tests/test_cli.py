"""The command line: bad input reads like a sentence and names the offending value."""

import os
import subprocess
import sys

import pytest
from helpers import ROOT, load_config

from ssl_jax import methods


def _ssl_jax(*args, cwd=ROOT):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "ssl_jax.main", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_misspelt_config_override_fails_naming_the_key(tmp_path):
    out = _ssl_jax(
        "pretrain",
        "--config=configs/simclr.py:smoke",
        "--config.optim.lrr=0.1",
        f"--workdir={tmp_path}",
    )
    assert out.returncode != 0
    assert "lrr" in out.stderr
    assert not os.listdir(tmp_path)  # nothing was written


def test_wrong_type_for_a_config_key_is_refused(tmp_path):
    out = _ssl_jax(
        "pretrain",
        "--config=configs/simclr.py:smoke",
        "--config.optim.lr=fast",
        f"--workdir={tmp_path}",
    )
    assert out.returncode != 0
    assert "fast" in out.stderr


def test_unknown_preset_lists_the_valid_ones(tmp_path):
    out = _ssl_jax("pretrain", "--config=configs/moco_v2.py:cifar100", f"--workdir={tmp_path}")
    assert out.returncode != 0
    assert "unknown config preset 'cifar100'" in out.stderr
    assert "digits, cifar10, imagenet, smoke" in out.stderr


def test_unknown_command_is_a_usage_error(tmp_path):
    out = _ssl_jax("train", f"--workdir={tmp_path}")
    assert out.returncode != 0
    assert "expected one command out of pretrain, eval" in out.stderr


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown method 'byol2'; valid methods: moco, simclr"):
        methods.get_method("byol2")


def test_unknown_data_set_is_reported_before_training(tmp_path):
    from ssl_jax import train

    config = load_config("simclr", input__dataset="not_a_dataset_xyz")
    with pytest.raises(ValueError, match="not_a_dataset_xyz"):
        train.pretrain(config, str(tmp_path / "run"))


def test_eval_of_a_workdir_without_checkpoint_says_so(tmp_path):
    out = _ssl_jax("eval", "--config=configs/simclr.py:smoke", f"--workdir={tmp_path}")
    assert out.returncode == 2
    assert "no checkpoint under" in out.stderr
    assert not os.listdir(tmp_path)
