"""Schedules at their endpoints."""

import ml_collections
import numpy as np
import pytest

from ssl_jax.schedules import (
    cosine_increase,
    linear_warmup_then_constant,
    lr_schedule,
    total_steps,
)

STEPS_PER_EPOCH = 10


def schedule_config(**overrides):
    cfg = dict(epochs=20.0, warmup_epochs=2.0, decay="cosine", milestones=(12, 16), total_steps=0)
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def lr_at(cfg, steps, peak=0.4):
    schedule = lr_schedule(peak, cfg, STEPS_PER_EPOCH)
    return np.array([float(schedule(s)) for s in steps])


def test_total_steps_from_epochs_or_override():
    assert total_steps(schedule_config(), STEPS_PER_EPOCH) == 200
    assert total_steps(schedule_config(total_steps=7), STEPS_PER_EPOCH) == 7


def test_cosine_warmup_endpoints():
    lrs = lr_at(schedule_config(), [0, 10, 20, 110, 200])
    np.testing.assert_allclose(lrs, [0.0, 0.2, 0.4, 0.2, 0.0], atol=1e-6)


def test_step_decay_multiplies_by_tenth_at_milestones():
    cfg = schedule_config(decay="step", warmup_epochs=0.0)
    lrs = lr_at(cfg, [0, 119, 120, 159, 160, 199])
    np.testing.assert_allclose(lrs, [0.4, 0.4, 0.04, 0.04, 0.004, 0.004], rtol=1e-5)


def test_constant_after_warmup():
    lrs = lr_at(schedule_config(decay="constant"), [0, 20, 199])
    np.testing.assert_allclose(lrs, [0.0, 0.4, 0.4], rtol=1e-6)


def test_total_steps_override_compresses_epochs():
    # 20 epochs squeezed into 20 steps: warm-up 2 steps, milestones at steps 12 and 16.
    cfg = schedule_config(decay="step", total_steps=20)
    lrs = lr_at(cfg, [0, 1, 2, 11, 12, 16])
    np.testing.assert_allclose(lrs, [0.0, 0.2, 0.4, 0.4, 0.04, 0.004], rtol=1e-5)


def test_unknown_decay():
    with pytest.raises(ValueError, match="cosine"):
        lr_schedule(0.1, schedule_config(decay="poly"), STEPS_PER_EPOCH)


def test_cosine_increase_endpoints():
    values = [float(cosine_increase(0.996, 1.0, s, 100)) for s in (0, 50, 100)]
    np.testing.assert_allclose(values, [0.996, 0.998, 1.0], rtol=1e-7)


def test_linear_warmup_then_constant_endpoints():
    values = [float(linear_warmup_then_constant(0.04, 0.07, s, 30)) for s in (0, 15, 30, 90)]
    np.testing.assert_allclose(values, [0.04, 0.055, 0.07, 0.07], rtol=1e-6)


def test_cosine_ends_at_final_lr():
    lrs = lr_at(schedule_config(final_lr=0.1), [20, 110, 200])
    np.testing.assert_allclose(lrs, [0.4, 0.25, 0.1], atol=1e-6)
