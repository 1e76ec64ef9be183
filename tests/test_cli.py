"""The command line's own usage errors (the bad-input matrix is tests/test_bad_input.py)."""

import os
import subprocess
import sys

from helpers import ROOT


def _ssl_jax(*args, cwd=ROOT):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "ssl_jax.main", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_unknown_command_is_a_usage_error(tmp_path):
    out = _ssl_jax("train", f"--workdir={tmp_path}")
    assert out.returncode != 0
    assert "expected one command out of pretrain, eval" in out.stderr


def test_eval_of_a_workdir_without_checkpoint_says_so(tmp_path):
    out = _ssl_jax("eval", "--config=configs/simclr.py:smoke", f"--workdir={tmp_path}")
    assert out.returncode == 2
    assert "no checkpoint under" in out.stderr
    assert not os.listdir(tmp_path)
