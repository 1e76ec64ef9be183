"""MoCo: momentum update, queue, shuffle BN, and the loss against a NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import config_base
from ssl_jax.methods import moco
from ssl_jax.state import TrainState


def _config(batch=8, queue=32, groups=2, symmetric=False):
    c = config_base.base_config()
    c.method = "moco"
    c.moco = moco.get_config()
    c.moco.update(queue_size=queue, momentum=0.9, temperature=0.2, bn_groups=groups)
    c.moco.symmetric = symmetric
    c.model.update(backbone="resnet_tiny", stem="cifar")
    c.model.head.update(num_layers=2, hidden_dim=16, out_dim=8)
    c.input.update(global_batch_size=batch, image_size=8)
    return c


def _setup(config, seed=0):
    model = moco.make_model(config)
    variables = model.init(jax.random.key(seed), jnp.zeros((1, 8, 8, 3)), train=False)
    params, stats = variables["params"], variables["batch_stats"]
    extra = moco.init_extra(params, stats, config)
    # Make the target differ from the online network so the EMA is visible.
    extra["target_params"] = jax.tree.map(lambda p: 0.5 * p + 0.01, extra["target_params"])
    state = TrainState(jnp.zeros((), jnp.int32), params, stats, None, extra)
    views = jax.random.normal(
        jax.random.key(seed + 1), (config.input.global_batch_size, 2, 8, 8, 3)
    )
    return model, state, {"views": views}


def test_momentum_update_is_exact_ema_before_keys():
    config = _config()
    model, state, batch = _setup(config)
    _, aux = moco.loss_fn(state.params, state, batch, jax.random.key(0), model=model, config=config)
    m = config.moco.momentum
    expected = jax.tree.map(
        lambda t, p: m * t + (1 - m) * p, state.extra["target_params"], state.params
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        aux["extra"]["target_params"],
        expected,
    )


def test_loss_equals_numpy_infonce_of_its_queries_and_keys():
    config = _config()
    model, state, batch = _setup(config)
    loss, aux = moco.loss_fn(
        state.params, state, batch, jax.random.key(3), model=model, config=config
    )
    q, k, queue, t = (
        np.asarray(aux["embeddings"]),
        np.asarray(aux["extra"]["keys"]),
        np.asarray(state.extra["queue"]),
        config.moco.temperature,
    )
    logits = np.concatenate([(q * k).sum(1, keepdims=True), q @ queue.T], 1) / t
    m = logits.max(1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(1, keepdims=True)))[:, 0]
    np.testing.assert_allclose(float(loss), np.mean(lse - logits[:, 0]), rtol=1e-5)


def test_no_gradient_reaches_the_key_encoder_or_queue():
    config = _config()
    model, state, batch = _setup(config)

    def wrt_target(target_params, queue):
        extra = dict(state.extra, target_params=target_params, queue=queue)
        s = state.replace(extra=extra)
        return moco.loss_fn(state.params, s, batch, jax.random.key(0), model=model, config=config)[
            0
        ]

    grads = jax.grad(wrt_target, argnums=(0, 1))(state.extra["target_params"], state.extra["queue"])
    for leaf in jax.tree.leaves(grads):
        assert np.all(np.asarray(leaf) == 0)


def test_enqueue_replaces_oldest_slice_and_wraps_around():
    config = _config(batch=4, queue=8)
    queue = jnp.arange(8 * 2, dtype=jnp.float32).reshape(8, 2)
    extra = dict(target_params={}, target_batch_stats={}, queue=queue, queue_ptr=jnp.int32(4))
    keys = -jnp.ones((4, 2))
    aux = dict(extra=dict(keys=keys, target_params={}, target_batch_stats={}))
    out = moco.update_extra(extra, params=None, aux=aux, step=0, config=config)
    np.testing.assert_array_equal(out["queue"][:4], queue[:4])  # untouched
    np.testing.assert_array_equal(out["queue"][4:], keys)  # oldest slice replaced
    assert int(out["queue_ptr"]) == 0  # wrapped around
    out2 = moco.update_extra(
        out, params=None, aux=dict(extra=dict(aux["extra"], keys=keys * 2)), step=1, config=config
    )
    np.testing.assert_array_equal(out2["queue"][:4], keys * 2)
    assert int(out2["queue_ptr"]) == 4


def test_symmetric_loss_enqueues_both_views_keys_in_order():
    config = _config(batch=8, queue=32, symmetric=True)
    model, state, batch = _setup(config)
    _, aux = moco.loss_fn(state.params, state, batch, jax.random.key(0), model=model, config=config)
    assert aux["extra"]["keys"].shape == (16, 8)
    assert set(aux["metrics"]) == {"acc_12", "acc_21"}


def test_shuffle_restores_key_order_under_global_bn():
    # With one BN group the statistics do not depend on the order, so shuffled and
    # unshuffled keys must agree row by row once the order is restored.
    config = _config(groups=1)
    model, state, batch = _setup(config)
    x = batch["views"][:, 1]
    args = (model, state.extra["target_params"], state.extra["target_batch_stats"], x)
    k_shuffled, _ = moco._key(*args, jax.random.key(5), True)
    k_plain, _ = moco._key(*args, jax.random.key(5), False)
    np.testing.assert_allclose(k_shuffled, k_plain, rtol=1e-4, atol=1e-5)


def test_shuffle_changes_bn_groups_composition():
    # With per-group BN the keys depend on which examples share a group: the shuffle
    # must actually move examples across groups.
    config = _config(groups=4)
    model, state, batch = _setup(config)
    x = batch["views"][:, 1]
    args = (model, state.extra["target_params"], state.extra["target_batch_stats"], x)
    k_shuffled, _ = moco._key(*args, jax.random.key(5), True)
    k_plain, _ = moco._key(*args, jax.random.key(5), False)
    assert not np.allclose(k_shuffled, k_plain, atol=1e-4)


def test_queue_not_multiple_of_batch_is_rejected():
    with pytest.raises(ValueError, match=r"queue_size=30 .*multiple.* 8"):
        moco.validate(_config(batch=8, queue=30))


def test_symmetric_queue_must_hold_two_batches():
    with pytest.raises(ValueError, match=r"16 = global batch 8 x 2"):
        moco.validate(_config(batch=8, queue=24, symmetric=True))


def test_batch_not_divisible_by_bn_groups_is_rejected():
    with pytest.raises(ValueError, match=r"global_batch_size=12 .*bn_groups=8"):
        moco.validate(_config(batch=12, queue=48, groups=8))


def test_queue_starts_as_unit_vectors():
    config = _config()
    model, state, _ = _setup(config)
    norms = np.linalg.norm(np.asarray(state.extra["queue"]), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    assert state.extra["queue"].shape == (32, 8)


def test_the_nce_form_is_cmcs_memory_moco_with_z_set_on_the_first_step():
    """HobbitLong/CMC MemoryMoCo + NCECriterion: P = exp(l / T) / Z over [positive, queue],
    Z = N mean(exp(l / T)) on the first step and kept; NCE with uniform noise 1/N."""
    config = _config()
    num_examples = 500
    with config.unlocked():
        config.moco.loss = "nce"
        config.schedule.num_examples = num_examples
    model, state, batch = _setup(config)
    assert float(state.extra["nce_z"]) < 0  # not set yet
    loss, aux = moco.loss_fn(
        state.params, state, batch, jax.random.key(3), model=model, config=config
    )
    q, k = np.asarray(aux["embeddings"]), np.asarray(aux["extra"]["keys"])
    queue, t = np.asarray(state.extra["queue"]), config.moco.temperature
    scores = np.exp(np.concatenate([(q * k).sum(1, keepdims=True), q @ queue.T], 1) / t)
    z = scores.mean() * num_examples
    np.testing.assert_allclose(float(aux["extra"]["nce_z"]), z, rtol=1e-5)
    p, k_noise, noise = scores / z, queue.shape[0], 1.0 / num_examples
    expected = (
        -(
            np.log(p[:, 0] / (p[:, 0] + k_noise * noise)).sum()
            + np.log(k_noise * noise / (p[:, 1:] + k_noise * noise)).sum()
        )
        / q.shape[0]
    )
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)

    extra = moco.update_extra(state.extra, params=None, aux=aux, step=0, config=config)
    assert float(extra["nce_z"]) == float(aux["extra"]["nce_z"])  # kept from now on
    later = state.replace(extra=extra)
    _, aux2 = moco.loss_fn(
        state.params, later, batch, jax.random.key(4), model=model, config=config
    )
    assert float(aux2["extra"]["nce_z"]) == float(extra["nce_z"])
    bound = 1 / np.sqrt(config.model.head.out_dim / 3)  # MemoryMoCo's uniform queue init
    assert np.abs(queue).max() <= bound and np.abs(queue).max() > 0.5 * bound


def test_an_unknown_loss_is_refused_naming_it():
    config = _config()
    with config.unlocked():
        config.moco.loss = "hinge"
    with pytest.raises(ValueError, match="moco.loss='hinge' is none of"):
        moco.validate(config)
