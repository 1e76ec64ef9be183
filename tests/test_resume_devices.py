"""Resume onto another device count: a run checkpointed on 8 devices continues on 4 and on
1, as a preempted pod slice restarted on a smaller one would. The global batch and the
data order do not depend on the device count, so the continued run ends where the
uninterrupted 8-device run does, within the float32 noise of a different summation order
(the tolerance of tests/test_methods.py's 1-vs-8-device comparison)."""

import os
import shutil

import numpy as np
import pytest
from helpers import assert_states_close, config_flags, load_config, ssl_jax_process

from ssl_jax import train
from ssl_jax.writer import read_metrics

# End to end (README, "The tests"): run by `python -m pytest -m slow` and by CI.
pytestmark = pytest.mark.slow

STEPS, SAVED = 8, 4
OVERRIDES = dict(
    schedule__total_steps=STEPS,
    ckpt__every_steps=SAVED,
    evals__knn_every_steps=0,
    evals__at_end=False,
)


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
    config = load_config("moco_v2", **OVERRIDES)
    workdir = str(tmp_path_factory.mktemp("resume_devices") / "eight")
    train.pretrain(config, workdir)  # this process has 8 devices
    return config, workdir


def _checkpointed_at_step_4(reference, workdir):
    """The 8-device run as it stood after its step-4 checkpoint."""
    shutil.copytree(reference, workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(STEPS)))


@pytest.mark.parametrize("devices", [4, 1])
def test_a_run_saved_on_8_devices_continues_on_fewer(eight_devices, tmp_path, devices):
    config, reference = eight_devices
    workdir = str(tmp_path / f"on_{devices}")
    _checkpointed_at_step_4(reference, workdir)
    proc = ssl_jax_process(
        "pretrain",
        "--config=configs/moco_v2.py:smoke",
        f"--workdir={workdir}",
        *config_flags(**OVERRIDES),
        devices=devices,
    )
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert f"Resumed from the checkpoint at step {SAVED}" in out

    rows, expected = read_metrics(workdir), read_metrics(reference)
    assert [r["step"] for r in rows] == [r["step"] for r in expected]
    for row, want in zip(rows, expected, strict=True):
        np.testing.assert_allclose(row["loss"], want["loss"], rtol=1e-5)
    assert_states_close(config, workdir, reference, STEPS)
