"""Schedules at their endpoints, and against NumPy transcriptions of DINO's
cosine_scheduler and SimCLR's step counts."""

import ml_collections
import numpy as np
import pytest

from ssl_jax import catalog
from ssl_jax.schedules import (
    cosine_increase,
    epochs_to_steps,
    linear_warmup_then_constant,
    lr_schedule,
    resolve_steps,
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


# --- DINO's utils.cosine_scheduler and SimCLR's step counts (tf2/model.py) ---------------


def dino_cosine_scheduler(base, final, epochs, niter_per_ep, warmup_epochs):
    """facebookresearch/dino utils.cosine_scheduler (start_warmup_value 0), per iteration:
    np.linspace(0, base, W), then final + (base - final) (1 + cos(pi k / (T - W))) / 2 for
    k = 0 .. T - W - 1."""
    warmup_iters, total = warmup_epochs * niter_per_ep, epochs * niter_per_ep
    warm = np.linspace(0.0, base, warmup_iters) if warmup_epochs > 0 else np.zeros(0)
    k = np.arange(total - warmup_iters)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * k / len(k)))
    return np.concatenate([warm, cosine])


@pytest.mark.parametrize(
    "epochs, niter, warmup_epochs",
    [(4, 3, 1), (5, 2, 2), (6, 1, 1), (3, 1, 2), (3, 4, 0), (2, 3, 2)],
    ids=["W3", "W4", "W1", "W2", "no_warmup", "all_warmup"],
)
def test_warmup_end_inclusive_gives_dino_cosine_scheduler(epochs, niter, warmup_epochs):
    base, final = 0.4, 1e-3
    cfg = schedule_config(
        epochs=float(epochs),
        warmup_epochs=float(warmup_epochs),
        final_lr=final,
        warmup_end_inclusive=True,
    )
    schedule = lr_schedule(base, cfg, niter)
    ours = np.array([float(schedule(s)) for s in range(epochs * niter)])
    expected = dino_cosine_scheduler(base, final, epochs, niter, warmup_epochs)
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-8)


def swav_lr_schedule(base, final, start_warmup, epochs, niter_per_ep, warmup_epochs):
    """facebookresearch/swav main_swav.py: np.linspace(start_warmup, base_lr, W), then
    final + (base - final) (1 + cos(pi t / (T - W))) / 2 for t = 0 .. T - W - 1."""
    warm = np.linspace(start_warmup, base, niter_per_ep * warmup_epochs)
    t = np.arange(niter_per_ep * (epochs - warmup_epochs))
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * t / len(t)))
    return np.concatenate([warm, cosine])


@pytest.mark.parametrize("epochs, niter, warmup_epochs", [(5, 3, 2), (4, 2, 0), (3, 4, 1)])
def test_warmup_start_lr_gives_swav_schedule(epochs, niter, warmup_epochs):
    base, final, start = 4.8, 0.0048, 0.3
    cfg = schedule_config(
        epochs=float(epochs),
        warmup_epochs=float(warmup_epochs),
        final_lr=final,
        warmup_end_inclusive=True,
        warmup_start_lr=start,
    )
    ours = lr_at_spe(cfg, range(epochs * niter), niter, peak=base)
    expected = swav_lr_schedule(base, final, start, epochs, niter, warmup_epochs)
    np.testing.assert_allclose(ours, expected, rtol=2e-6, atol=1e-8)  # float32 of ~4.8
    # Without the inclusive end the line still starts there and reaches base at step W.
    cfg = schedule_config(warmup_epochs=2.0, warmup_start_lr=0.1)
    np.testing.assert_allclose(lr_at(cfg, [0, 10, 20]), [0.1, 0.25, 0.4], rtol=1e-6)


def test_warmup_end_inclusive_moves_only_the_warmup():
    # W = 4, T = 20: DINO reaches the peak at step 3 (and keeps it at step 4, the cosine's
    # start); ours by default at step 4. From step W on both are the same cosine, ending
    # one step short of final_lr as cosine_scheduler does.
    cfg = schedule_config(epochs=5.0, warmup_epochs=1.0, final_lr=0.0)
    steps = range(20)
    exclusive = lr_at_spe(cfg, steps, 4)
    inclusive = lr_at_spe(schedule_config(**cfg, warmup_end_inclusive=True), steps, 4)
    np.testing.assert_allclose(exclusive[:4], [0.0, 0.1, 0.2, 0.3], atol=1e-7)
    np.testing.assert_allclose(inclusive[:4], [0.0, 0.4 / 3, 0.8 / 3, 0.4], rtol=1e-6)
    np.testing.assert_allclose(inclusive[4:], exclusive[4:], rtol=1e-6)
    np.testing.assert_allclose(inclusive[4], 0.4, rtol=1e-6)
    np.testing.assert_allclose(inclusive[19], 0.2 * (1 + np.cos(np.pi * 15 / 16)), rtol=1e-5)


def lr_at_spe(cfg, steps, steps_per_epoch, peak=0.4, **examples):
    schedule = lr_schedule(peak, cfg, steps_per_epoch, **examples)
    return np.array([float(schedule(s)) for s in steps])


def simclr_steps(num_examples, train_epochs, warmup_epochs, batch):
    """google-research/simclr tf2/model.py: get_train_steps and WarmUpAndCosineDecay."""
    total = num_examples * train_epochs // batch + 1
    warmup = int(round(warmup_epochs * num_examples // batch))
    return total, warmup


def simclr_lr(step, peak, total, warmup):
    """WarmUpAndCosineDecay: step / warmup * peak, then CosineDecay(peak, total - warmup)."""
    if step < warmup:
        return step / float(warmup) * peak
    t = min(step - warmup, total - warmup)
    return peak * 0.5 * (1 + np.cos(np.pi * t / (total - warmup)))


@pytest.mark.parametrize(
    "num_examples, batch, epochs, warmup_epochs",
    [(1281167, 4096, 100, 10.0), (50000, 512, 1000, 10.0), (1437, 128, 60, 5.0), (100, 7, 3, 0.5)],
    ids=["imagenet", "cifar10", "digits", "small"],
)
def test_per_example_plus_one_matches_simclr(num_examples, batch, epochs, warmup_epochs):
    total, warmup = simclr_steps(num_examples, epochs, warmup_epochs, batch)
    cfg = schedule_config(
        epochs=float(epochs), warmup_epochs=warmup_epochs, step_count="per_example_plus_one"
    )
    examples = dict(num_examples=num_examples, global_batch_size=batch)
    spe = num_examples // batch
    assert total_steps(cfg, spe, **examples) == total
    assert epochs_to_steps(warmup_epochs, cfg, spe, **examples) == warmup
    steps = sorted({0, 1, warmup - 1, warmup, warmup + 1, total // 2, total - 2, total - 1})
    steps = [s for s in steps if s >= 0]
    expected = [simclr_lr(s, 0.4, total, warmup) for s in steps]
    np.testing.assert_allclose(
        lr_at_spe(cfg, steps, spe, **examples), expected, rtol=2e-5, atol=1e-8
    )
    # The copy resolve_steps returns carries N and B: the same schedule without them.
    config = ml_collections.ConfigDict(dict(schedule=cfg, input=dict(global_batch_size=batch)))
    resolved = resolve_steps(config, spe, num_examples=num_examples)
    assert resolved.schedule.total_steps == total
    assert (resolved.schedule.num_examples, resolved.schedule.global_batch_size) == (
        num_examples,
        batch,
    )
    assert epochs_to_steps(warmup_epochs, resolved.schedule, spe) == warmup
    np.testing.assert_allclose(
        lr_at_spe(resolved.schedule, steps, spe), expected, rtol=2e-5, atol=1e-8
    )


def test_simclr_count_differs_from_per_epoch_on_imagenet():
    # SimCLR ImageNet, 100 epochs at batch 4096: 31279 steps with 3127 of warm-up, where
    # round(epochs * (N // B)) gives 31200 and 3120.
    n, b, spe = 1281167, 4096, 1281167 // 4096
    per_epoch = schedule_config(epochs=100.0, warmup_epochs=10.0)
    simclr = schedule_config(epochs=100.0, warmup_epochs=10.0, step_count="per_example_plus_one")
    examples = dict(num_examples=n, global_batch_size=b)
    assert total_steps(per_epoch, spe, **examples) == 31200
    assert epochs_to_steps(10.0, per_epoch, spe, **examples) == 3120
    assert total_steps(simclr, spe, **examples) == 31279
    assert epochs_to_steps(10.0, simclr, spe, **examples) == 3127


def test_per_example_needs_the_example_count_unless_total_steps_is_set():
    cfg = schedule_config(step_count="per_example_plus_one")
    with pytest.raises(ValueError, match="num_examples"):
        total_steps(cfg, STEPS_PER_EPOCH)
    # A set total_steps (smoke runs) compresses the schedule and needs neither N nor B.
    smoke = schedule_config(step_count="per_example_plus_one", total_steps=20, decay="step")
    np.testing.assert_allclose(
        lr_at(smoke, [0, 1, 2, 12, 16]), [0.0, 0.2, 0.4, 0.04, 0.004], rtol=1e-5
    )
    assert epochs_to_steps(2.0, smoke, STEPS_PER_EPOCH, 1000, 100) == 2


def test_unknown_step_count():
    with pytest.raises(ValueError, match="per_example"):
        total_steps(schedule_config(step_count="per_batch"), STEPS_PER_EPOCH)


def test_callers_without_examples_keep_the_per_epoch_rule():
    config = ml_collections.ConfigDict(
        dict(schedule=schedule_config(), input=dict(global_batch_size=32))
    )
    resolved = resolve_steps(config, STEPS_PER_EPOCH)
    assert resolved.schedule.total_steps == 200
    assert "num_examples" not in resolved.schedule
    assert epochs_to_steps(2.0, resolved.schedule, STEPS_PER_EPOCH) == 20


def presets(name):
    module = catalog.config_module(name)
    return {preset: module.get_config(preset) for preset in module.PRESETS}


def test_presets_use_their_references_warmup_and_step_count():
    assert all(c.schedule.warmup_end_inclusive for c in presets("dino").values())
    simclr = presets("simclr").values()
    assert all(c.schedule.step_count == "per_example_plus_one" for c in simclr)
    byol = presets("byol")
    assert {p for p, c in byol.items() if c.schedule.step_count == "per_example"} == {
        "imagenet",
        "imagenet300",
        "imagenet100",
    }
    others = [*presets("moco_v3").values(), *byol.values()]
    assert not any(c.schedule.warmup_end_inclusive for c in others)
    assert all(c.schedule.step_count == "per_epoch" for c in presets("moco_v3").values())


def test_per_example_matches_byol_max_steps_and_warmup():
    # byol/configs/byol.py with TRAIN_AND_VALID (1,281,167 images): max_steps =
    # num_epochs * N // B and warmup_steps = 10 * N // B, no "+ 1".
    n, b = 1281167, 4096
    for epochs, total in [(1000, 312784), (300, 93835), (100, 31278)]:
        assert total == epochs * n // b
        cfg = schedule_config(epochs=float(epochs), warmup_epochs=10.0, step_count="per_example")
        assert total_steps(cfg, n // b, n, b) == total
        assert epochs_to_steps(10.0, cfg, n // b, n, b) == 10 * n // b == 3127
