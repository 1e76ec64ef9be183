"""InstDisc: NCE with the estimated Z and the full softmax against NumPy transcriptions of
lemniscate's NCEAverage / NCECriterion / LinearAverage, the bank update at the batch's rows
only, and no gradient into the bank or Z."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import load_config, tiny_state

from ssl_jax import config_base, losses
from ssl_jax.methods import instdisc
from ssl_jax.state import TrainState

N, B, D = 40, 8, 8  # bank rows, batch, embedding


def np_nce_criterion(x, n_data):
    """lib/NCECriterion.py: x [B, K+1] are P(i|v), column 0 the positive."""
    eps, k = 1e-7, x.shape[1] - 1
    pn = 1.0 / n_data
    ln_pmt = np.log(x[:, 0] / (x[:, 0] + k * pn + eps))
    ln_pon = np.log(k * pn / (x[:, 1:] + k * pn + eps))
    return -(ln_pmt.sum() + ln_pon.sum()) / x.shape[0]


def test_nce_matches_lemniscate():
    rng = np.random.default_rng(0)
    x = rng.uniform(1e-6, 1e-2, size=(B, 17)).astype(np.float32)
    np.testing.assert_allclose(
        float(losses.nce(jnp.asarray(x), N)), np_nce_criterion(x, N), rtol=1e-5
    )


def _config(num_negatives=16):
    c = config_base.base_config()
    c.method = "instdisc"
    c.instdisc = instdisc.get_config()
    c.instdisc.update(num_negatives=num_negatives, temperature=0.1)
    c.model.update(backbone="resnet_tiny", stem="cifar")
    c.model.head.update(num_layers=1, out_dim=D, use_bn=False, last_bn="none")
    c.input.update(global_batch_size=B, image_size=8)
    config_base.set_views(c, ml_collections.ConfigDict({"size": 0}))
    c.schedule.update(epochs=1.0, total_steps=5)
    c.schedule.num_examples = N
    return c


class Setup(NamedTuple):
    model: Any
    state: TrainState
    batch: dict


@pytest.fixture(scope="module")
def setup():
    config = _config()
    model = instdisc.make_model(config)
    state = tiny_state(model, config, instdisc.init_extra)
    batch = dict(
        views=jax.random.normal(jax.random.key(1), (B, 1, 8, 8, 3)),
        index=jnp.asarray(np.random.default_rng(2).permutation(N)[:B], jnp.int32),
    )
    return Setup(model, state, batch)


def _loss(setup, config, params=None, extra=None):
    state = setup.state if extra is None else setup.state.replace(extra=extra)
    return instdisc.loss_fn(
        params if params is not None else state.params,
        state,
        setup.batch,
        jax.random.key(3),
        model=setup.model,
        config=config,
    )


def _features(setup):
    from ssl_jax.methods import primitives

    out, _ = primitives.apply_train(
        setup.model, setup.state.params, setup.state.batch_stats, setup.batch["views"][:, 0]
    )
    return np.asarray(losses.l2_normalize(out["projection"]), np.float64)


def test_bank_starts_as_nceaverage_and_z_unset(setup):
    bank = np.asarray(setup.state.extra["bank"])
    stdv = 1 / np.sqrt(D / 3)
    assert bank.shape == (N, D) and np.abs(bank).max() <= stdv
    assert float(setup.state.extra["nce_z"]) == -1.0


def test_nce_loss_estimates_z_on_the_first_step_then_keeps_it(setup):
    config = _config(num_negatives=16)
    loss, aux = _loss(setup, config)
    v, bank = _features(setup), np.asarray(setup.state.extra["bank"], np.float64)
    noise = np.asarray(jax.random.randint(jax.random.key(3), (B, 16), 0, N))
    rows = np.concatenate([np.asarray(setup.batch["index"])[:, None], noise], axis=1)
    out = np.exp(np.einsum("bkd,bd->bk", bank[rows], v) / 0.1)  # NCEFunction.forward
    z = out.mean() * N
    np.testing.assert_allclose(float(aux["extra"]["nce_z"]), z, rtol=1e-5)
    np.testing.assert_allclose(float(loss), np_nce_criterion(out / z, N), rtol=1e-4)
    # With Z set, it is used as it is, not re-estimated.
    extra = dict(setup.state.extra, nce_z=jnp.asarray(3.0 * z, jnp.float32))
    loss_kept, aux_kept = _loss(setup, config, extra=extra)
    np.testing.assert_allclose(float(aux_kept["extra"]["nce_z"]), 3.0 * z, rtol=1e-6)
    np.testing.assert_allclose(float(loss_kept), np_nce_criterion(out / (3 * z), N), rtol=1e-4)


def test_full_softmax_is_the_cross_entropy_over_the_bank(setup):
    config = _config(num_negatives=0)
    loss, _ = _loss(setup, config)
    v, bank = _features(setup), np.asarray(setup.state.extra["bank"], np.float64)
    logits = v @ bank.T / 0.1  # LinearAverageOp.forward
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -log_p[np.arange(B), np.asarray(setup.batch["index"])].mean()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)


@pytest.mark.parametrize("num_negatives", [16, 0])
def test_no_gradient_reaches_the_bank_or_z(setup, num_negatives):
    config = _config(num_negatives)
    extra = dict(setup.state.extra, nce_z=jnp.asarray(50.0, jnp.float32))
    grads = jax.grad(lambda e: _loss(setup, config, extra=e)[0])(extra)
    assert not np.any(grads["bank"]) and float(grads["nce_z"]) == 0.0
    params_grad = jax.grad(lambda p: _loss(setup, config, params=p)[0])(setup.state.params)
    assert np.any(params_grad["head"]["dense0"]["kernel"])


def test_the_bank_moves_at_the_batchs_rows_only(setup):
    config = _config()
    _, aux = _loss(setup, config)
    new = instdisc.update_extra(
        setup.state.extra, params=None, aux=aux, step=jnp.asarray(0), config=config
    )
    old, bank = np.asarray(setup.state.extra["bank"]), np.asarray(new["bank"])
    index = np.asarray(setup.batch["index"])
    rest = np.setdiff1d(np.arange(N), index)
    np.testing.assert_array_equal(bank[rest], old[rest])
    mixed = 0.5 * old[index] + 0.5 * _features(setup)  # NCEFunction.backward, m = 0.5
    np.testing.assert_allclose(
        bank[index], mixed / np.linalg.norm(mixed, axis=1, keepdims=True), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(np.linalg.norm(bank[index], axis=1), 1.0, rtol=1e-5)
    assert float(new["nce_z"]) == float(aux["extra"]["nce_z"]) > 0


def test_the_bank_is_sized_by_the_training_split():
    from ssl_jax import parallel, train

    config = load_config("instdisc", "smoke")
    setup = train.build(config, parallel.make_mesh(jax.devices()[:1]))
    state = jax.eval_shape(setup.init, jax.random.key(0))
    assert state.extra["bank"].shape == (1437, config.model.head.out_dim)  # digits' train split


def test_a_negative_count_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="instdisc.num_negatives=-1"):
        instdisc.validate(load_config("instdisc", "smoke", instdisc__num_negatives=-1))
