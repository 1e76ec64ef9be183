"""SwAV: Sinkhorn-Knopp and the swapped prediction against NumPy transcriptions of
main_swav.py, Sinkhorn's marginals and its global-batch view, no gradient through the
codes, unit prototypes, and the feature queue (filled from its epoch, in the problem once
full)."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import load_config, tiny_state
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ssl_jax import config_base, losses, parallel, train
from ssl_jax.methods import swav
from ssl_jax.state import TrainState

K = 12  # prototypes in the unit-test model
B = 8  # global batch


def np_sinkhorn(out, epsilon, iterations):
    """main_swav.py distributed_sinkhorn on one process, in float64 (Q is K x B there)."""
    q = np.exp(out.astype(np.float64) / epsilon).T
    b, k = q.shape[1], q.shape[0]
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= b
    return (q * b).T


def np_swapped_prediction(output, codes, crops_for_assign, temperature):
    """main_swav.py's loss loop: for each assignment crop, the cross-entropy of its codes
    with every other crop's softmax(scores / T), averaged over the other crops, then over
    the assignment crops. ``output`` [V, B, K] (crop-major), ``codes`` [A, B, K]."""
    loss = 0.0
    v_all = output.shape[0]
    for i, crop_id in enumerate(crops_for_assign):
        subloss = 0.0
        for v in np.delete(np.arange(v_all), crop_id):
            x = output[v].astype(np.float64) / temperature
            log_p = x - x.max(-1, keepdims=True)
            log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
            subloss -= np.mean(np.sum(codes[i] * log_p, axis=1))
        loss += subloss / (v_all - 1)
    return loss / len(crops_for_assign)


def cosine_scores(n, k, seed=0, dim=128):
    """Cosines of random unit features with random unit prototypes, as at init."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, dim))
    c = rng.normal(size=(dim, k))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    c /= np.linalg.norm(c, axis=0, keepdims=True)
    return (z @ c).astype(np.float32)


def test_sinkhorn_matches_main_swav_and_its_marginals():
    scores = cosine_scores(64, K)
    q = np.asarray(losses.sinkhorn_knopp(jnp.asarray(scores), 0.05, 3))
    np.testing.assert_allclose(q, np_sinkhorn(scores, 0.05, 3), rtol=2e-5, atol=1e-7)
    # The last step normalises the samples: each code is a distribution.
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-5)

    # Each prototype gets close to N / K of the mass; every iteration gets closer, and
    # iterated on, the columns converge to the equipartition exactly.
    def column_error(q):
        return np.abs(np.asarray(q).sum(axis=0) - 64 / K).max() / (64 / K)

    raw = np.exp(scores / 0.05)
    errors = [column_error(raw / raw.sum(axis=1, keepdims=True))]
    errors += [
        column_error(losses.sinkhorn_knopp(jnp.asarray(scores), 0.05, n)) for n in (1, 3, 50)
    ]
    assert errors == sorted(errors, reverse=True), errors
    assert errors[2] < 0.05 and errors[3] < 1e-5, errors
    # With sharper scores (low-dimensional features) 3 iterations are further from it.
    sharp = cosine_scores(64, K, dim=16)
    assert column_error(losses.sinkhorn_knopp(jnp.asarray(sharp), 0.05, 3)) > 0.1


def test_sinkhorn_leaves_masked_rows_out_of_the_problem():
    scores = cosine_scores(24, K, seed=1)
    junk = cosine_scores(16, K, seed=2)
    valid = jnp.concatenate([jnp.zeros(16), jnp.ones(24)])
    masked = losses.sinkhorn_knopp(jnp.concatenate([junk, scores]), 0.05, 3, valid)
    np.testing.assert_array_equal(masked[:16], 0.0)
    np.testing.assert_allclose(masked[16:], losses.sinkhorn_knopp(scores, 0.05, 3), rtol=1e-5)


def test_sinkhorn_is_one_problem_over_the_global_batch():
    """Sharded over 8 devices, the sums still run over every device's rows (the
    reference's all_reduce), so the codes are those of the whole batch."""
    scores = cosine_scores(64, K, seed=3)
    mesh = parallel.make_mesh(jax.devices()[:8])
    sharded = jax.device_put(scores, NamedSharding(mesh, P("data")))
    codes = jax.jit(lambda s: losses.sinkhorn_knopp(s, 0.05, 3))(sharded)
    np.testing.assert_allclose(codes, np_sinkhorn(scores, 0.05, 3), rtol=2e-5, atol=1e-7)
    # Not 8 problems of 8 rows each.
    per_device = np.concatenate([np_sinkhorn(s, 0.05, 3) for s in np.split(scores, 8)])
    assert not np.allclose(codes, per_device, rtol=1e-2)


@pytest.mark.parametrize("crops_for_assign", [(0, 1), (1,), (0, 2)])
def test_swapped_prediction_matches_main_swav(crops_for_assign):
    rng = np.random.default_rng(4)
    output = rng.normal(size=(4, B, K)).astype(np.float32)  # 2 global + 2 local crops
    codes = np.stack([np_sinkhorn(output[c], 0.05, 3) for c in crops_for_assign])
    log_p = jax.nn.log_softmax(jnp.asarray(output) / 0.1, axis=-1)
    ours = losses.cross_crop_entropy(jnp.asarray(codes), log_p, jnp.asarray(crops_for_assign))
    expected = np_swapped_prediction(output, codes, crops_for_assign, 0.1)
    np.testing.assert_allclose(float(ours), expected, rtol=1e-5)


def _config(queue_length=0, epoch_queue_starts=0, steps_per_epoch=4):
    c = config_base.base_config()
    c.method = "swav"
    c.swav = swav.get_config()
    c.swav.update(
        num_prototypes=K, queue_length=queue_length, epoch_queue_starts=epoch_queue_starts
    )
    c.model.update(backbone="resnet_tiny", stem="cifar")
    c.model.head.update(num_layers=2, hidden_dim=16, out_dim=8, use_bn=True, last_bn="none")
    c.input.update(global_batch_size=B, image_size=8)
    config_base.set_views(c, *[ml_collections.ConfigDict({"size": 0})] * 2)
    c.schedule.update(epochs=10.0, total_steps=10 * steps_per_epoch)
    c.schedule.steps_per_epoch = steps_per_epoch
    return c


class Setup(NamedTuple):
    config: Any
    model: Any
    state: TrainState
    batch: dict


@pytest.fixture(scope="module")
def setup():
    config = _config()
    model = swav.make_model(config)
    state = tiny_state(model, config)
    k1, k2 = jax.random.split(jax.random.key(1))
    batch = dict(
        global_views=jax.random.normal(k1, (B, 2, 8, 8, 3)),
        local_views=jax.random.normal(k2, (B, 2, 4, 4, 3)),
    )
    return Setup(config, model, state, batch)


def _loss(setup, params, extra=None, config=None):
    config = config or setup.config
    state = setup.state.replace(extra=extra or {})
    return swav.loss_fn(
        params, state, setup.batch, jax.random.key(2), model=setup.model, config=config
    )


def test_prototypes_start_and_stay_unit_vectors(setup):
    kernel = setup.state.params["head"]["prototypes"]["kernel"]  # [d, K]
    np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-6)
    moved = jax.tree.map(lambda p: p * 3.0 + 0.1, setup.state.params)
    renormed = swav.after_update(moved, setup.config)
    norms = np.linalg.norm(renormed["head"]["prototypes"]["kernel"], axis=0)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-6)
    # Nothing else is touched.
    np.testing.assert_array_equal(
        renormed["backbone"]["conv1"]["kernel"], moved["backbone"]["conv1"]["kernel"]
    )


def test_loss_is_the_swapped_prediction_of_the_models_scores(setup):
    """The loss from the model's own scores equals the reference loop on them, and its
    gradient is that of the cross-entropy with the codes held constant: no gradient
    flows through Sinkhorn."""
    loss_and_grad = jax.jit(jax.value_and_grad(lambda p: _loss(setup, p), has_aux=True))
    (loss, aux), grads = loss_and_grad(setup.state.params)

    def scores_of(params):
        from ssl_jax.methods import primitives

        groups = primitives.crop_groups(setup.batch, 2)
        _, (scores, _), _ = primitives.multicrop_forward(
            setup.model, params, setup.state.batch_stats, groups, jax.random.key(2), swav._head
        )
        return scores

    scores = np.asarray(scores_of(setup.state.params))  # [V, B, K]
    codes = np.stack([np_sinkhorn(scores[c], 0.05, 3) for c in (0, 1)]).astype(np.float32)
    np.testing.assert_allclose(
        float(loss), np_swapped_prediction(scores, codes, (0, 1), 0.1), rtol=1e-4
    )

    def fixed_codes_loss(params):
        log_p = jax.nn.log_softmax(scores_of(params) / 0.1, axis=-1)
        return losses.cross_crop_entropy(jnp.asarray(codes), log_p, jnp.arange(2))

    expected = jax.jit(jax.grad(fixed_codes_loss))(setup.state.params)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-6), grads, expected
    )
    assert aux["features"].shape == (2 * B, 128)
    assert 0 < float(aux["metrics"]["prototypes_used"]) <= 1


def test_queue_fills_from_its_epoch_and_joins_sinkhorn_when_full(setup):
    config = _config(queue_length=2 * B, epoch_queue_starts=1, steps_per_epoch=4)
    params = setup.state.params
    extra = swav.init_extra(params, setup.state.batch_stats, config)
    assert extra["queue"].shape == (2, 2 * B, 8) and not extra["queue"].any()
    loss_no_queue, _ = _loss(setup, params)
    z = [jax.random.normal(jax.random.key(s), (2, B, 8)) for s in range(3)]
    z = [losses.l2_normalize(x) for x in z]

    def step(extra, t, zt):
        aux = dict(extra=dict(assigned=zt))
        return swav.update_extra(extra, params=params, aux=aux, step=jnp.asarray(t), config=config)

    # Epoch 0 (steps 0-3): nothing is queued.
    extra = step(extra, 3, z[0])
    assert not extra["queue"].any() and int(extra["queue_filled"]) == 0
    # Steps 4 and 5 fill the two slices; until the queue is full it is left out.
    extra = step(extra, 4, z[0])
    np.testing.assert_array_equal(extra["queue"][:, :B], z[0])
    loss_half, aux = _loss(setup, params, extra, config)
    np.testing.assert_allclose(loss_half, loss_no_queue, rtol=1e-6)
    assert float(aux["metrics"]["queue_in_use"]) == 0.0
    extra = step(extra, 5, z[1])
    np.testing.assert_array_equal(extra["queue"][:, B:], z[1])
    assert int(extra["queue_filled"]) == 2 * B
    loss_full, aux = _loss(setup, params, extra, config)
    assert float(aux["metrics"]["queue_in_use"]) == 1.0
    assert abs(float(loss_full) - float(loss_no_queue)) > 1e-4
    # Full: the codes are those of the (queue + batch) problem's batch rows.
    scores = jnp.asarray(np.random.default_rng(5).normal(size=(B, K)), jnp.float32)
    kernel = params["head"]["prototypes"]["kernel"]
    ours = swav.assignment_codes(scores, params, extra, 1, config)
    both = np_sinkhorn(np.concatenate([np.asarray(extra["queue"][1] @ kernel), scores]), 0.05, 3)
    np.testing.assert_allclose(ours, both[2 * B :], rtol=1e-4, atol=1e-7)
    # The oldest slice is overwritten next.
    extra = step(extra, 6, z[2])
    np.testing.assert_array_equal(extra["queue"][:, :B], z[2])
    np.testing.assert_array_equal(extra["queue"][:, B:], z[1])


@pytest.mark.slow
def test_the_smoke_run_freezes_the_prototypes_then_renormalises_them():
    """Two real steps of the smoke preset: step 0 leaves the prototypes as initialised
    (frozen) and fills the one-batch queue, step 1 moves them (unit vectors again) and
    uses the queue."""
    config = load_config("swav", "smoke", schedule__total_steps=4)
    mesh = parallel.make_mesh(jax.devices()[:1])
    setup = train.build(config, mesh)
    state = setup.init(jax.random.key(0))
    kernel0 = np.asarray(state.params["head"]["prototypes"]["kernel"])
    backbone0 = np.asarray(state.params["backbone"]["conv1"]["kernel"])
    from ssl_jax.data import pipeline

    batch = pipeline.synthetic_batch(config.input)
    state, metrics = setup.update(state, batch, jax.random.key(1))
    # Frozen: no update, only the renormalisation of unit vectors (float32 rounding).
    np.testing.assert_allclose(state.params["head"]["prototypes"]["kernel"], kernel0, atol=2e-7)
    assert not np.array_equal(state.params["backbone"]["conv1"]["kernel"], backbone0)
    assert int(state.extra["queue_filled"]) == config.swav.queue_length
    assert float(metrics["queue_in_use"]) == 0.0
    state, metrics = setup.update(state, batch, jax.random.key(1))
    assert float(metrics["queue_in_use"]) == 1.0
    kernel2 = np.asarray(state.params["head"]["prototypes"]["kernel"])
    assert not np.allclose(kernel2, kernel0)
    np.testing.assert_allclose(np.linalg.norm(kernel2, axis=0), 1.0, rtol=1e-5)
    assert np.isfinite(float(metrics["loss"]))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("swav.queue_length", 20, "multiple of input.global_batch_size"),
        ("swav.crops_for_assign", (0, 7), "crops_for_assign"),
        ("swav.epsilon", 0.0, "epsilon"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(key, value, message):
    config = load_config("swav", "smoke", **{key.replace(".", "__"): value})
    with pytest.raises(ValueError, match=message):
        swav.validate(config)
