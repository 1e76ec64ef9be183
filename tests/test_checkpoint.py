"""Checkpointer behaviour not covered by the training-loop tests."""

import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config

from ssl_jax import parallel
from ssl_jax.checkpoint import (
    CONFIG_FILE,
    Checkpointer,
    IncompatibleCheckpointError,
    check_and_save_config,
)


def test_first_save_of_small_replicated_arrays_compiles_no_slicing(tmp_path, caplog):
    # orbax's replica-parallel writes slice every replicated array per device, one XLA
    # compile per shape (about 170 for a ResNet state, seconds before the first save).
    mesh = parallel.make_mesh()
    state = parallel.replicate(
        {f"w{n}": np.full((n, 3), n, np.float32) for n in range(1, 21)}, mesh
    )
    ckpt = Checkpointer(str(tmp_path), every_steps=1, keep=1, async_save=False)
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        ckpt.save(1, state, force=True)
        ckpt.wait()
    compiled = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
    assert not compiled, compiled[:3]
    restored, step = ckpt.restore(jax.tree.map(jnp.zeros_like, state))
    ckpt.close()
    assert step == 1
    for name, value in state.items():
        np.testing.assert_array_equal(np.asarray(restored[name]), np.asarray(value))


def _workdir_saved_without(tmp_path, config, key):
    """A workdir with a checkpoint whose config.json predates ``input.<key>``."""
    saved = json.loads(config.to_json_best_effort())
    del saved["input"][key]
    os.makedirs(tmp_path / "checkpoints" / "2")
    (tmp_path / CONFIG_FILE).write_text(json.dumps(saved))
    return str(tmp_path)


def test_a_key_added_after_the_run_resumes_at_its_default_only(tmp_path):
    config = load_config("moco_v2")
    workdir = _workdir_saved_without(tmp_path, config, "augment_on_device")
    check_and_save_config(config, workdir, write=False)  # the default: accepted
    with config.unlocked():
        config.input.augment_on_device = True
    with pytest.raises(IncompatibleCheckpointError, match="input.augment_on_device"):
        check_and_save_config(config, workdir, write=False)


def test_checkpointing_logs_no_warning_of_ours(tmp_path):
    """The small-array handler replaces orbax's default once per process; orbax's own
    "overriding" warning about it is not shown (in a notebook as on the command line)."""
    code = (
        "import logging, sys; logging.basicConfig(level=logging.WARNING)\n"
        "from absl import logging as absl_logging; absl_logging.use_python_logging()\n"
        "from ssl_jax.checkpoint import Checkpointer\n"
        f"Checkpointer({str(tmp_path)!r}).close(); Checkpointer({str(tmp_path)!r}).close()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "WARNING:absl" not in done.stderr and "overriding" not in done.stderr, done.stderr
