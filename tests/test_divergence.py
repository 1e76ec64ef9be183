"""The divergence guard: non-finite metrics, a vanished gradient and parameters blowing up
while finite each stop the run naming the step, the metric and the last good checkpoint."""

import jax.numpy as jnp
import pytest
from helpers import load_config

from ssl_jax import step_metrics, train

HEALTHY = dict(loss=1.0, grad_norm=2.0, param_norm=10.0)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(loss=float("nan")), r"loss is nan in the update at step 3.*Lower optim.lr"),
        (dict(param_norm=float("inf")), r"param_norm is inf in the update at step 3"),
        (dict(grad_norm=0.0), r"grad_norm is 0: the loss no longer depends"),
        (dict(param_norm=1001.0), r"param_norm is 1001, more than 100x its 10 at the start"),
    ],
    ids=["nan_loss", "inf_param_norm", "zero_grad_norm", "param_norm_blow_up"],
)
def test_a_diverged_step_stops_naming_step_metric_and_checkpoint(bad, match):
    buffer = step_metrics.MetricBuffer(start_param_norm=10.0)
    for step in range(3):
        buffer.add(step, {k: jnp.float32(v) for k, v in HEALTHY.items()})
    buffer.flush(last_good_step=None)
    buffer.add(3, {k: jnp.float32(v) for k, v in {**HEALTHY, **bad}.items()})
    with pytest.raises(train.DivergenceError, match=match) as error:
        buffer.flush(last_good_step=2)
    assert "the last good checkpoint is step 2" in str(error.value)


def test_a_healthy_growth_of_the_parameters_trains_on():
    buffer = step_metrics.MetricBuffer(start_param_norm=10.0)
    for step, norm in enumerate([10.0, 30.0, 900.0]):  # 90x: within the limit
        buffer.add(step, {k: jnp.float32(v) for k, v in {**HEALTHY, "param_norm": norm}.items()})
    assert buffer.flush(last_good_step=None)["param_norm"] == 900.0


@pytest.mark.slow
def test_a_huge_lr_that_stays_finite_is_stopped(tmp_path):
    """lr 1e6 keeps every number finite while the parameters explode (here 1e4x in the
    first update); the guard stops it at once, measured against the initial norm."""
    config = load_config(
        "moco_v2",
        optim__lr=1e6,
        evals__knn_every_steps=0,
        evals__at_end=False,
        schedule__total_steps=2,
    )
    finite_blow_up = r"param_norm is [0-9.e+]+, more than 100x .* in the update at step 0"
    with pytest.raises(train.DivergenceError, match=finite_blow_up):
        train.pretrain(config, str(tmp_path / "run"))
