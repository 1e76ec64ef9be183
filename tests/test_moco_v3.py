"""MoCo v3: the 2T-scaled symmetric contrastive loss, the momentum schedule and EMA order,
the momentum encoder without predictor or gradient, global-batch keys, smoke runs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ssl_jax import config_base, losses, parallel, train
from ssl_jax.data import pipeline
from ssl_jax.methods import moco_v3, primitives
from ssl_jax.models.encoder import make_encoder
from ssl_jax.state import TrainState


def _config(batch=16, total_steps=10):
    c = config_base.base_config()
    c.method = "moco_v3"
    c.moco_v3 = moco_v3.get_config()
    c.moco_v3.temperature = 0.5
    c.model.update(backbone="resnet_tiny", stem="cifar")
    c.model.head.update(
        num_layers=2, hidden_dim=16, out_dim=8, use_bn=True, last_bn="no_affine", last_bias=False
    )
    c.model.predictor.update(
        num_layers=2, hidden_dim=16, out_dim=8, use_bn=True, last_bn="none", last_bias=False
    )
    c.input.update(global_batch_size=batch, image_size=8)
    c.schedule.total_steps = total_steps
    c.schedule.steps_per_epoch = total_steps
    return c


STEP = 4  # of 10: the momentum is strictly between m0 and 1


@pytest.fixture(scope="module")
def run():
    """One jitted loss + gradient (w.r.t. the online params, the momentum encoder and its
    BN statistics) at step 4, on 16 examples sharded over 8 devices (2 rows each)."""
    config = _config()
    model = moco_v3.make_model(config)
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 8, 8, 3)), train=False))(
        jax.random.key(0)
    )
    params, stats = variables["params"], variables["batch_stats"]
    extra = moco_v3.init_extra(params, stats, config)
    # A momentum encoder that differs from the online one, so the EMA is visible.
    extra["target_params"] = jax.tree.map(lambda p: 0.5 * p + 0.01, extra["target_params"])
    views = jax.random.normal(jax.random.key(1), (16, 2, 8, 8, 3))

    def f(params, target_params, target_stats, views):
        state = TrainState(
            jnp.int32(STEP),
            params,
            stats,
            None,
            dict(target_params=target_params, target_batch_stats=target_stats),
        )
        batch = {"views": views}
        return moco_v3.loss_fn(params, state, batch, jax.random.key(2), model=model, config=config)

    mesh = parallel.make_mesh(jax.devices()[:8])
    sharded = jax.device_put(views, NamedSharding(mesh, P("data")))
    grad_fn = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))
    with jax.set_mesh(mesh):
        (loss, aux), grads = grad_fn(
            params, extra["target_params"], extra["target_batch_stats"], sharded
        )
    # The reference's semantics: one SyncBN forward pass per view.
    reference = make_encoder(config.model, bn_groups=1, image_size=8)

    @functools.partial(jax.jit, static_argnames="predict")
    def per_view(params, stats, x, predict):
        out, _ = reference.apply(
            {"params": params, "batch_stats": stats},
            x,
            train=True,
            predict=predict,
            mutable=["batch_stats"],
        )
        return out["prediction" if predict else "projection"]

    return dict(
        config=config,
        params=params,
        stats=stats,
        extra=extra,
        views=np.asarray(views),
        loss=float(loss),
        aux=aux,
        grads=grads,
        per_view=per_view,
    )


def _np_ctr(q, k, t):
    """2T * mean_i -log softmax(q_i . k_j / T)[j = i], q and k L2-normalised."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    k = k / np.linalg.norm(k, axis=1, keepdims=True)
    logits = q.astype(np.float64) @ k.T.astype(np.float64) / t  # [B, B]
    m = logits.max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(1))
    return 2 * t * np.mean(lse - np.diag(logits))


def test_contrastive_loss_matches_numpy_with_2t_scaling():
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    for t in (0.2, 1.0):
        loss, logits = losses.moco_v3_contrastive(jnp.asarray(q), jnp.asarray(k), t)
        np.testing.assert_allclose(float(loss), _np_ctr(q, k, t), rtol=1e-5)
        assert logits.shape == (6, 6)


def test_every_key_of_the_batch_is_a_negative():
    # Changing the key of another row must change query 0's loss term: the logits are
    # B x B, not a positive plus a local subset.
    rng = np.random.default_rng(1)
    q, k = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    k2 = k.copy()
    k2[4] = -k2[4]
    _, logits = losses.moco_v3_contrastive(jnp.asarray(q), jnp.asarray(k), 1.0)
    _, logits2 = losses.moco_v3_contrastive(jnp.asarray(q), jnp.asarray(k2), 1.0)
    lp = jax.nn.log_softmax(logits)[0, 0]
    lp2 = jax.nn.log_softmax(logits2)[0, 0]
    assert abs(float(lp) - float(lp2)) > 1e-3


def test_momentum_schedule_endpoints():
    config = _config(total_steps=100)
    assert float(moco_v3.momentum(0, config)) == pytest.approx(0.99, abs=1e-7)
    assert float(moco_v3.momentum(100, config)) == pytest.approx(1.0, abs=1e-7)
    # The last step taken (99) sits just below 1, as epoch + i/iters < epochs in the
    # reference: 1 - 0.01 * (1 + cos(pi * 0.99)) / 2.
    expected = 1 - 0.01 * (1 + np.cos(np.pi * 99 / 100)) / 2
    assert float(moco_v3.momentum(99, config)) == pytest.approx(expected, abs=1e-7)
    assert float(moco_v3.momentum(50, config)) == pytest.approx(0.995, abs=1e-7)
    with config.unlocked():
        config.moco_v3.cosine_momentum = False
    assert float(moco_v3.momentum(50, config)) == pytest.approx(0.99, abs=1e-7)


def test_ema_is_applied_before_the_keys_are_computed(run):
    config, aux, old = run["config"], run["aux"], run["extra"]["target_params"]
    m = float(moco_v3.momentum(STEP, config))
    assert 0.99 < m < 1.0
    expected = jax.tree.map(
        lambda t, p: m * t + (1 - m) * p, old, primitives.without(run["params"])
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        aux["extra"]["target_params"],
        expected,
    )
    target_stats = run["extra"]["target_batch_stats"]
    for v in range(2):
        x = run["views"][:, v]
        k_new = run["per_view"](expected, target_stats, x, predict=False)
        np.testing.assert_allclose(aux["extra"]["keys"][v], k_new, rtol=1e-4, atol=1e-5)
        k_old = run["per_view"](old, target_stats, x, predict=False)
        assert not np.allclose(aux["extra"]["keys"][v], k_old, rtol=1e-4, atol=1e-5)


def test_loss_is_symmetric_sum_over_the_whole_global_batch(run):
    # The views were sharded over 8 devices (2 rows each); the loss must still be the
    # NumPy ctr(q1, k2) + ctr(q2, k1) over 16 x 16 logits.
    q, k = np.asarray(run["aux"]["extra"]["queries"]), np.asarray(run["aux"]["extra"]["keys"])
    assert q.shape == k.shape == (2, 16, 8)
    t = run["config"].moco_v3.temperature
    expected = _np_ctr(q[0], k[1], t) + _np_ctr(q[1], k[0], t)
    np.testing.assert_allclose(run["loss"], expected, rtol=1e-5)
    # Not the other pairing: the positives really are the other view's keys.
    assert abs(run["loss"] - (_np_ctr(q[0], k[0], t) + _np_ctr(q[1], k[1], t))) > 1e-4


def test_queries_are_per_view_global_bn_predictions(run):
    # The one grouped pass equals the reference's one SyncBN forward pass per view.
    q = np.asarray(run["aux"]["extra"]["queries"])
    for v in range(2):
        expected = run["per_view"](run["params"], run["stats"], run["views"][:, v], predict=True)
        np.testing.assert_allclose(q[v], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        run["aux"]["embeddings"], q[0] / np.linalg.norm(q[0], axis=1, keepdims=True), atol=1e-6
    )


def test_no_gradient_reaches_the_momentum_encoder(run):
    g_online, g_target, g_stats = run["grads"]
    leaves = jax.tree.leaves((g_target, g_stats))
    assert leaves and all(np.all(np.asarray(leaf) == 0) for leaf in leaves)
    # The online encoder and predictor do learn.
    assert float(jnp.abs(g_online["predictor"]["dense1"]["kernel"]).sum()) > 0
    assert float(jnp.abs(g_online["backbone"]["conv1"]["kernel"]).sum()) > 0


def test_momentum_encoder_has_no_predictor(run):
    assert set(run["params"]) == {"backbone", "head", "predictor"}
    assert set(run["extra"]["target_params"]) == {"backbone", "head"}
    assert set(run["extra"]["target_batch_stats"]) == {"backbone", "head"}
    assert set(run["aux"]["extra"]["target_params"]) == {"backbone", "head"}


def test_update_extra_keeps_the_encoder_that_made_the_keys(run):
    aux, extra = run["aux"], run["extra"]
    new = moco_v3.update_extra(extra, params=None, aux=aux, step=STEP, config=run["config"])
    assert new["target_params"] is aux["extra"]["target_params"]
    # The key pass moved the momentum encoder's own BN running statistics.
    before = extra["target_batch_stats"]["head"]["bn1"]["mean"]
    assert not np.allclose(new["target_batch_stats"]["head"]["bn1"]["mean"], before)


def test_missing_predictor_is_rejected():
    config = _config()
    with config.unlocked():
        config.model.predictor.num_layers = 0
    with pytest.raises(ValueError, match=r"predictor.num_layers=0"):
        moco_v3.validate(config)


def test_resnet50_heads_are_the_reference_builders():
    config = load_config("moco_v3", "imagenet")
    model = moco_v3.make_model(config)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    )
    shape = jax.tree.map(lambda s: s.shape, shapes["params"])
    # Projector: Linear(2048, 4096, bias=False) BN ReLU Linear(4096, 256, bias=False)
    # BN(affine=False) -> no parameters in bn1, only running statistics.
    assert shape["head"] == {
        "dense0": {"kernel": (2048, 4096)},
        "bn0": {"scale": (4096,), "bias": (4096,)},
        "dense1": {"kernel": (4096, 256)},
    }
    assert set(shapes["batch_stats"]["head"]) == {"bn0", "bn1"}
    # Predictor: Linear(256, 4096, bias=False) BN ReLU Linear(4096, 256, bias=False).
    assert shape["predictor"] == {
        "dense0": {"kernel": (256, 4096)},
        "bn0": {"scale": (4096,), "bias": (4096,)},
        "dense1": {"kernel": (4096, 256)},
    }
    assert set(shapes["batch_stats"]["predictor"]) == {"bn0"}


def test_vit_heads_are_the_reference_builders():
    config = load_config("moco_v3", "imagenet_vit_small")
    assert config.model.vit.frozen_patch_embed and config.model.vit.pos_embed == "sincos"
    model = moco_v3.make_model(config)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    )
    shape = jax.tree.map(lambda s: s.shape, shapes["params"])
    # Projector _build_mlp(3, 384, 4096, 256), predictor _build_mlp(2, 256, 4096, 256):
    # bias-free Linears, affine BN on hidden layers, a last BN without affine in both.
    assert shape["head"] == {
        "dense0": {"kernel": (384, 4096)},
        "bn0": {"scale": (4096,), "bias": (4096,)},
        "dense1": {"kernel": (4096, 4096)},
        "bn1": {"scale": (4096,), "bias": (4096,)},
        "dense2": {"kernel": (4096, 256)},
    }
    assert set(shapes["batch_stats"]["head"]) == {"bn0", "bn1", "bn2"}
    assert shape["predictor"] == {
        "dense0": {"kernel": (256, 4096)},
        "bn0": {"scale": (4096,), "bias": (4096,)},
        "dense1": {"kernel": (4096, 256)},
    }
    assert set(shapes["batch_stats"]["predictor"]) == {"bn0", "bn1"}
    assert "pos_embed" not in shape["backbone"]  # fixed sin-cos, not a parameter


def test_smoke_vit_preset_trains_with_frozen_patch_projection():
    config = load_config("moco_v3", "smoke_vit")
    mesh = parallel.make_mesh()
    setup = train.build(config, mesh)
    init_key, base_key = train.keys(config)
    state0 = jax.device_get(setup.init(init_key))
    state = setup.init(init_key)
    batches = pipeline.pretrain_iterator(config.input, seed=config.seed)
    with jax.set_mesh(mesh):
        state, metrics = setup.update(state, parallel.to_global(next(batches), mesh), base_key)
    assert np.isfinite(float(metrics["loss"]))
    state = jax.device_get(state)
    assert int(state.step) == 1
    for name in ("kernel", "bias"):
        frozen = state0.params["backbone"]["patch_embed"][name]
        np.testing.assert_array_equal(state.params["backbone"]["patch_embed"][name], frozen)
        # The target's EMA m * p + (1 - m) * p of equal values is p up to float rounding.
        target = state.extra["target_params"]["backbone"]["patch_embed"][name]
        np.testing.assert_allclose(target, frozen, rtol=1e-6, atol=1e-7)
    assert not np.allclose(
        state.params["backbone"]["cls_token"], state0.params["backbone"]["cls_token"]
    )
