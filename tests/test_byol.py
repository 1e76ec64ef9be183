"""BYOL: the symmetric regression loss, the EMA target and its tau schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import config_base
from ssl_jax.methods import byol
from ssl_jax.state import TrainState


def _config(total_steps=100, tau_base=0.9):
    c = config_base.base_config()
    c.method = "byol"
    c.byol = byol.get_config()
    c.byol.tau_base = tau_base
    mlp = dict(num_layers=2, hidden_dim=32, out_dim=8, use_bn=True, last_bn="none", last_bias=False)
    c.model.update(backbone="resnet_tiny", stem="cifar")
    c.model.head.update(**mlp)
    c.model.predictor.update(**mlp)
    c.input.update(global_batch_size=8, image_size=8)
    c.schedule.update(total_steps=total_steps, steps_per_epoch=10)
    return c


def _init(config):
    model = byol.make_model(config)
    init = jax.jit(lambda key: model.init(key, jnp.zeros((1, 8, 8, 3)), train=False))
    variables = init(jax.random.key(0))
    return model, variables["params"], variables["batch_stats"]


@pytest.fixture(scope="module")
def setup():
    """One model, state (with a target unlike the online network, so that mixing the two
    up would show) and batch for the file."""
    config = _config()
    model, params, stats = _init(config)
    extra = byol.init_extra(params, stats, config)
    rng = np.random.default_rng(3)
    extra["target_params"] = jax.tree.map(
        lambda t: np.asarray(t) + 0.05 * rng.standard_normal(t.shape, np.float32),
        extra["target_params"],
    )
    state = TrainState(jnp.zeros((), jnp.int32), params, stats, None, extra)
    views = jax.random.normal(jax.random.key(1), (8, 2, 8, 8, 3))
    return config, model, state, {"views": views}


def _np_regression(q, z):
    q = np.asarray(q, np.float64) / np.linalg.norm(q, axis=1, keepdims=True)
    z = np.asarray(z, np.float64) / np.linalg.norm(z, axis=1, keepdims=True)
    return ((q - z) ** 2).sum(1)  # [B], = 2 - 2 cos


def test_loss_is_sum_over_view_orders_of_mean_normalized_l2(setup):
    config, model, state, batch = setup

    @jax.jit
    def run(state, batch):
        loss, aux = byol.loss_fn(
            state.params, state, batch, jax.random.key(2), model=model, config=config
        )

        def apply(params, stats, x, predict):
            out, _ = model.apply(
                {"params": params, "batch_stats": stats},
                x,
                train=True,
                predict=predict,
                mutable=["batch_stats"],
            )
            return out

        views, extra = batch["views"], state.extra
        online = [apply(state.params, state.batch_stats, views[:, i], True) for i in (0, 1)]
        target = [
            apply(extra["target_params"], extra["target_batch_stats"], views[:, i], False)
            for i in (0, 1)
        ]
        return loss, aux, online, target

    loss, aux, (on1, on2), (t1, t2) = run(state, batch)
    assert "prediction" not in t1
    l12 = _np_regression(on1["prediction"], t2["projection"])
    l21 = _np_regression(on2["prediction"], t1["projection"])
    np.testing.assert_allclose(float(loss), (l12 + l21).mean(), rtol=1e-5)
    np.testing.assert_allclose(float(aux["metrics"]["cos_q1_zt2"]), (1 - l12 / 2).mean(), rtol=1e-5)
    assert float(aux["metrics"]["tau"]) == pytest.approx(config.byol.tau_base)


def test_tau_schedule_endpoints_and_cosine_shape():
    config = _config(total_steps=100, tau_base=0.996)
    tau = lambda k: float(byol.target_decay(k, config))
    assert tau(0) == pytest.approx(0.996, abs=1e-7)
    assert tau(100) == pytest.approx(1.0, abs=1e-7)
    assert tau(50) == pytest.approx(1 - 0.004 * (np.cos(np.pi * 0.5) + 1) / 2, abs=1e-7)
    assert tau(25) < tau(50) < tau(99) < 1.0


def test_ema_update_is_exact_and_uses_the_updated_online_params(setup):
    _, _, state, _ = setup
    config = _config(total_steps=10, tau_base=0.9)
    online = jax.tree.map(lambda p: np.asarray(p) - 0.3, state.params)  # "after the optimizer step"
    aux = dict(extra=dict(target_batch_stats=state.extra["target_batch_stats"]))
    step = 3
    update = jax.jit(
        lambda e, p, a: byol.update_extra(e, params=p, aux=a, step=step, config=config)
    )
    out = update(state.extra, online, aux)
    tau = 1 - 0.1 * (np.cos(np.pi * step / 10) + 1) / 2
    for name in ("backbone", "head"):
        expected = jax.tree.map(
            lambda t, p: tau * np.asarray(t, np.float64) + (1 - tau) * np.asarray(p, np.float64),
            state.extra["target_params"][name],
            online[name],
        )
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
            out["target_params"][name],
            expected,
        )
    assert set(out["target_params"]) == {"backbone", "head"}


def test_no_gradient_reaches_the_target(setup):
    config, model, state, batch = setup

    def wrt_target(target_params):
        s = state.replace(extra=dict(state.extra, target_params=target_params))
        return byol.loss_fn(state.params, s, batch, jax.random.key(0), model=model, config=config)[
            0
        ]

    grads = jax.jit(jax.grad(wrt_target))(state.extra["target_params"])
    leaves = jax.tree.leaves(grads)
    assert leaves
    for leaf in leaves:
        assert np.all(np.asarray(leaf) == 0)


def test_target_is_a_copy_without_predictor(setup):
    config, _, state, _ = setup
    params, stats = state.params, state.batch_stats
    extra = byol.init_extra(params, stats, config)
    assert "predictor" in params and "predictor" in stats
    assert set(extra["target_params"]) == {"backbone", "head"}
    assert set(extra["target_batch_stats"]) == {"backbone", "head"}
    for name in ("backbone", "head"):
        jax.tree.map(np.testing.assert_array_equal, extra["target_params"][name], params[name])
        jax.tree.map(np.testing.assert_array_equal, extra["target_batch_stats"][name], stats[name])


def test_missing_predictor_is_rejected():
    config = _config()
    config.model.predictor.num_layers = 0
    with pytest.raises(ValueError, match=r"predictor.num_layers=0"):
        byol.validate(config)
