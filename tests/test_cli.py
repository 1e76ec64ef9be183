"""The command line's own usage errors (the bad-input matrix is tests/test_bad_input.py)."""

import os

from helpers import run_ssl_jax


def test_unknown_command_is_a_usage_error(tmp_path):
    out = run_ssl_jax("train", f"--workdir={tmp_path}")
    assert out.returncode != 0
    assert "expected one command out of pretrain, eval" in out.stderr


def test_eval_of_a_workdir_without_checkpoint_says_so(tmp_path):
    out = run_ssl_jax("eval", "--config=configs/simclr.py:smoke", f"--workdir={tmp_path}")
    assert out.returncode == 2
    assert "no checkpoint under" in out.stderr
    assert not os.listdir(tmp_path)
