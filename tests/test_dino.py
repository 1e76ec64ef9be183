"""DINO: the multi-crop cross-entropy with centering against NumPy, the center update over
the global batch, the teacher temperature and momentum schedules, the EMA teacher without
gradient, the weight-normalised last layer, and smoke runs (ResNet and ViT)."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ssl_jax import config_base, losses, optim, parallel, train
from ssl_jax.methods import dino, primitives
from ssl_jax.models.heads import DINOHead, WeightNormDense
from ssl_jax.state import TrainState

OUT = 8  # prototypes in the unit-test model


def _config(batch=4, epochs=100.0, total_steps=1000):
    c = config_base.base_config()
    c.method = "dino"
    c.dino = dino.get_config()
    c.dino.update(bottleneck_dim=8)
    c.model.update(backbone="resnet_tiny", stem="cifar")
    c.model.head.update(num_layers=3, hidden_dim=16, out_dim=OUT, use_bn=False, last_bn="none")
    c.input.update(global_batch_size=batch, image_size=8)
    c.schedule.update(epochs=epochs, total_steps=total_steps)
    c.schedule.steps_per_epoch = total_steps // int(epochs)
    return c


class Setup(NamedTuple):
    config: Any
    model: Any
    state: TrainState
    batch: dict
    loss_fn: Any  # jitted (params, state, batch, rng) -> (loss, aux)


@pytest.fixture(scope="module")
def setup():
    """One model, state and jitted loss for the whole file: on a shared 2-core CPU the
    ResNet's compilation dominates, so it happens once."""
    config = _config()
    model = dino.make_model(config)
    init = jax.jit(lambda key: model.init(key, jnp.zeros((1, 8, 8, 3)), train=False))
    variables = init(jax.random.key(0))
    params, stats = variables["params"], variables["batch_stats"]
    extra = dino.init_extra(params, stats, config)
    # A teacher that differs from the student and a non-zero center, so both are visible.
    extra["target_params"] = jax.tree.map(lambda p: 0.5 * p + 0.01, extra["target_params"])
    extra["center"] = jax.random.normal(jax.random.key(7), (OUT,))
    state = TrainState(jnp.zeros((), jnp.int32), params, stats, None, extra)
    b = config.input.global_batch_size
    k1, k2 = jax.random.split(jax.random.key(1))
    batch = dict(
        global_views=jax.random.normal(k1, (b, 2, 8, 8, 3)),
        local_views=jax.random.normal(k2, (b, 2, 4, 4, 3)),
    )
    loss_fn = jax.jit(
        lambda params, state, batch, rng: dino.loss_fn(
            params, state, batch, rng, model=model, config=config
        )
    )
    return Setup(config, model, state, batch, loss_fn)


def _np_dino(student, teacher, center, tau_s, tau_t, same_view_pairs=False):
    """The paper's Algorithm 1 / DINOLoss.forward, crop by crop, in float64."""
    s = student.astype(np.float64) / tau_s
    log_ps = s - s.max(-1, keepdims=True)
    log_ps = log_ps - np.log(np.exp(log_ps).sum(-1, keepdims=True))
    t = (teacher.astype(np.float64) - center) / tau_t
    p_t = np.exp(t - t.max(-1, keepdims=True))
    p_t = p_t / p_t.sum(-1, keepdims=True)
    terms = [
        np.mean(np.sum(-p_t[iq] * log_ps[v], axis=-1))
        for iq in range(teacher.shape[0])
        for v in range(student.shape[0])
        if v != iq or same_view_pairs
    ]
    return np.mean(terms)


def test_loss_matches_numpy_with_cross_view_pairs_and_centering():
    rng = np.random.default_rng(0)
    student = rng.normal(size=(5, 6, 7)).astype(np.float32)  # 2 global + 3 local crops
    teacher = rng.normal(size=(2, 6, 7)).astype(np.float32)
    center = rng.normal(size=(7,)).astype(np.float32)
    loss, p_t = losses.dino_cross_entropy(student, teacher, center, 0.1, 0.04)
    np.testing.assert_allclose(float(loss), _np_dino(student, teacher, center, 0.1, 0.04), 1e-5)
    np.testing.assert_allclose(np.asarray(p_t).sum(-1), 1.0, rtol=1e-5)
    # Same-view pairs are excluded: including them would change the value.
    all_pairs = _np_dino(student, teacher, center, 0.1, 0.04, same_view_pairs=True)
    assert not np.isclose(float(loss), all_pairs)
    # The center matters: without it the loss differs.
    no_center, _ = losses.dino_cross_entropy(student, teacher, 0 * center, 0.1, 0.04)
    assert not np.isclose(float(loss), float(no_center))


def test_loss_fn_is_the_numpy_loss_of_student_and_teacher_crops(setup):
    config, model, state, batch, loss_fn = setup
    loss, aux = loss_fn(state.params, state, batch, jax.random.key(0))
    teacher = dino.make_model(config, teacher=True)

    @jax.jit
    def reference_logits(state, g, loc):
        # Teacher: both global crops, crop-major, with its own train-mode forward.
        out_t, _ = teacher.apply(
            {
                "params": state.extra["target_params"],
                "batch_stats": state.extra["target_batch_stats"],
            },
            jnp.concatenate([g[:, 0], g[:, 1]]),
            train=True,
            mutable=["batch_stats"],
        )
        # Student: the backbone per resolution group (its BN statistics per group), then
        # the head on all crops together.
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        feats = [
            model.apply(variables, x, train=True, method="embed", mutable=["batch_stats"])[0]
            for x in (jnp.concatenate([g[:, 0], g[:, 1]]), jnp.concatenate([loc[:, 0], loc[:, 1]]))
        ]
        s, _ = model.apply(
            variables,
            jnp.concatenate(feats),
            method=lambda m, f: m.head(f, True),
            mutable=["batch_stats"],
        )
        return s, out_t["projection"]

    s, t = reference_logits(state, batch["global_views"], batch["local_views"])
    np.testing.assert_allclose(aux["extra"]["teacher_output"], t, rtol=1e-5, atol=1e-6)
    b = config.input.global_batch_size
    s = np.asarray(s).reshape(4, b, OUT)
    t = np.asarray(t).reshape(2, b, OUT)
    center = np.asarray(state.extra["center"])
    expected = _np_dino(s, t, center, config.dino.student_temp, 0.04)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert aux["embeddings"].shape == (b, config.dino.bottleneck_dim)
    np.testing.assert_allclose(np.linalg.norm(aux["embeddings"], axis=1), 1.0, rtol=1e-5)
    kl = aux["metrics"]["kl"]
    np.testing.assert_allclose(kl + aux["metrics"]["teacher_entropy"], loss, rtol=1e-6)
    assert float(kl) >= 0.0


def test_teacher_sees_only_the_global_crops(setup):
    _, _, state, batch, loss_fn = setup
    loss1, aux1 = loss_fn(state.params, state, batch, jax.random.key(0))
    other = dict(batch, local_views=batch["local_views"] + 1.0)
    loss2, aux2 = loss_fn(state.params, state, other, jax.random.key(0))
    np.testing.assert_array_equal(aux1["extra"]["teacher_output"], aux2["extra"]["teacher_output"])
    assert not np.isclose(float(loss1), float(loss2))  # the student does see them


def test_views_batch_uses_its_first_two_views_as_global_crops(setup):
    config, _, state, batch, loss_fn = setup
    views = {"views": batch["global_views"]}
    loss, aux = loss_fn(state.params, state, views, jax.random.key(0))
    assert aux["extra"]["teacher_output"].shape == (2 * config.input.global_batch_size, OUT)
    assert np.isfinite(float(loss))
    with pytest.raises(ValueError, match="2 global crops"):
        primitives.crop_groups({"views": batch["global_views"][:, :1]}, dino.NUM_GLOBAL)


def test_center_is_ema_of_teacher_mean_over_the_global_batch():
    config = _config(batch=8)
    rng = np.random.default_rng(1)
    center = rng.normal(size=(OUT,)).astype(np.float32)
    teacher = rng.normal(size=(16, OUT)).astype(np.float32)  # 2 global crops x 8 examples
    expected = 0.9 * center + 0.1 * teacher.mean(0)
    mesh = parallel.make_mesh(jax.devices()[:8])
    sharded = jax.device_put(teacher, NamedSharding(mesh, P("data")))
    with jax.set_mesh(mesh):
        got = jax.jit(dino.update_center, static_argnums=2)(jnp.asarray(center), sharded, 0.9)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    extra = dict(target_params={}, target_batch_stats={}, center=jnp.asarray(center))
    aux = dict(extra=dict(teacher_output=teacher, target_batch_stats={}))
    out = dino.update_extra(extra, params={}, aux=aux, step=0, config=config)
    np.testing.assert_allclose(out["center"], expected, rtol=1e-5, atol=1e-6)


def test_teacher_temperature_warms_up_per_epoch_then_stays():
    config = _config(epochs=100.0, total_steps=1000)  # 10 steps per epoch

    def temp(step):
        return float(dino.teacher_temperature(step, config))

    assert temp(0) == pytest.approx(0.04)
    assert temp(9) == pytest.approx(0.04)  # constant within epoch 0
    assert temp(10) == pytest.approx(0.04 + 0.03 / 29)  # np.linspace(0.04, 0.07, 30)[1]
    assert temp(289) == pytest.approx(0.04 + 0.03 * 28 / 29)
    assert temp(290) == pytest.approx(0.07)  # epoch 29 = the last linspace entry
    assert temp(999) == pytest.approx(0.07)
    config.dino.warmup_teacher_temp_epochs = 0
    assert temp(0) == pytest.approx(0.07)


def test_teacher_momentum_endpoints_and_exact_ema(setup):
    config, _, state, batch, loss_fn = setup  # total_steps 1000
    assert float(dino.teacher_momentum(0, config)) == pytest.approx(0.996)
    assert float(dino.teacher_momentum(500, config)) == pytest.approx(0.998)
    assert float(dino.teacher_momentum(1000, config)) == pytest.approx(1.0)
    state = state.replace(step=jnp.asarray(250, jnp.int32))
    _, aux = loss_fn(state.params, state, batch, jax.random.key(0))
    new_params = jax.tree.map(lambda p: p + 1.0, state.params)  # the student after its step
    out = dino.update_extra(state.extra, params=new_params, aux=aux, step=250, config=config)
    m = 1 - (1 - 0.996) * (np.cos(np.pi * 0.25) + 1) / 2
    expected = jax.tree.map(
        lambda t, p: m * t + (1 - m) * p, state.extra["target_params"], new_params
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        out["target_params"],
        expected,
    )
    assert out["target_batch_stats"] is aux["extra"]["target_batch_stats"]


def test_no_gradient_reaches_the_teacher_or_the_center(setup):
    config, model, state, batch, _ = setup

    def loss(params, target_params, center):
        extra = dict(state.extra, target_params=target_params, center=center)
        s = state.replace(extra=extra)
        return dino.loss_fn(params, s, batch, jax.random.key(0), model=model, config=config)[0]

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(
        state.params, state.extra["target_params"], state.extra["center"]
    )
    for leaf in jax.tree.leaves(grads[1:]):
        assert np.all(np.asarray(leaf) == 0)
    assert float(jnp.abs(grads[0]["backbone"]["conv1"]["kernel"]).sum()) > 0


def test_normalised_last_layer_has_unit_columns_and_no_gain():
    layer = WeightNormDense(5, trainable_scale=False)
    params = layer.init(jax.random.key(0), jnp.zeros((1, 3)))["params"]
    assert set(params) == {"kernel"}
    w = layer.apply({"params": {"kernel": 7.0 * params["kernel"]}}, jnp.eye(3))  # [in, out]
    np.testing.assert_allclose(np.linalg.norm(w, axis=0), 1.0, rtol=1e-6)
    gained = WeightNormDense(5, trainable_scale=True)
    params = gained.init(jax.random.key(0), jnp.zeros((1, 3)))["params"]
    np.testing.assert_array_equal(params["scale"], np.ones((1, 5)))
    params = dict(params, scale=jnp.arange(1.0, 6.0)[None])
    w = gained.apply({"params": params}, jnp.eye(3))
    np.testing.assert_allclose(np.linalg.norm(w, axis=0), np.arange(1.0, 6.0), rtol=1e-6)


def test_head_last_layer_sits_under_last_layer_for_the_delayed_optimizer():
    head = DINOHead(out_dim=OUT, hidden_dim=16, bottleneck_dim=8, norm_last_layer=False)
    params = head.init(jax.random.key(0), jnp.zeros((2, 4)), train=False)["params"]
    cfg = config_base.base_config().optim
    cfg.delayed_params = ("last_layer",)
    labels = optim.param_labels(cfg)({"head": params})["head"]
    assert labels["last_layer"] == {"kernel": "delayed", "scale": "delayed"}
    assert labels["dense0"]["kernel"] == "default"
    # Reference init: hidden layers normal std .02 with zero bias, bottleneck L2-normalised.
    k = np.asarray(params["dense1"]["kernel"])
    assert abs(k.std() - 0.02) < 0.003 and not np.any(params["dense1"]["bias"])
    logits, z = head.apply({"params": params}, jnp.ones((2, 4)), False, return_bottleneck=True)
    assert logits.shape == (2, OUT)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-6)


def test_teacher_is_built_without_stochastic_depth():
    config = load_config("dino", "smoke_vit")
    assert dino.make_model(config).backbone.drop_path == 0.1
    assert dino.make_model(config, teacher=True).backbone.drop_path == 0.0


@pytest.mark.parametrize(
    "preset, crops, local_size, global_scale, local_scale",
    [
        ("imagenet", 10, 96, (0.4, 1.0), (0.05, 0.4)),
        ("imagenet_resnet50", 10, 96, (0.14, 1.0), (0.05, 0.14)),
        ("cifar10", 8, 16, (0.4, 1.0), (0.05, 0.4)),
    ],
)
def test_presets_use_the_reference_multi_crop(preset, crops, local_size, global_scale, local_scale):
    config = load_config("dino", preset)
    dino.validate(config)
    views = config.input.views
    assert len(views) == crops
    assert [views[f"view{i}"].size for i in (1, 2, 3)] == [0, 0, local_size]
    assert tuple(views.view1.crop_scale) == global_scale
    assert tuple(views.view3.crop_scale) == local_scale
    assert (views.view1.blur_p, views.view2.blur_p, views.view2.solarize_p) == (1.0, 0.1, 0.2)


def test_evaluations_read_the_teacher():
    """The kNN monitor, the final report and `evaluate` embed with the teacher's
    parameters and running statistics (eval_knn.py --checkpoint_key teacher)."""
    config = load_config("dino", "smoke", input__eval_test_split="test[:64]")
    mesh = parallel.make_mesh()
    setup = train.build(config, mesh)
    assert setup.method.ENCODER == dino.ENCODER
    state = setup.init(jax.random.key(0))
    teacher = jax.tree.map(lambda p: 0.5 * p + 0.01, state.extra["target_params"])
    state = state.replace(extra={**state.extra, "target_params": teacher})
    as_student = state.replace(params=teacher, batch_stats=state.extra["target_batch_stats"])
    split = config.input.eval_test_split
    own = train.Evaluator(config, setup.model, mesh)  # no hook: the state's own params
    with jax.set_mesh(mesh):
        x_teacher, _ = setup.evaluator(config).features(state, split)
        x_student, _ = own.features(state, split)
        x_expected, _ = own.features(as_student, split)
    np.testing.assert_allclose(x_teacher, x_expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(x_teacher, x_student, atol=1e-3)


def test_cifar10_resnet18_preset_is_solo_learns_two_crop_recipe():
    config = load_config("dino", "cifar10_resnet18")
    assert sorted(config.input.views) == ["view1", "view2"]  # no local crops
    assert config.input.views.view2.solarize_p == 0.2 and config.input.views.view1.blur_p == 0
    assert (config.optim.name, config.optim.lr, config.optim.trust_coefficient) == (
        "lars",
        0.3,
        0.02,
    )
    assert (config.dino.teacher_temp, config.dino.warmup_teacher_temp_epochs) == (0.07, 0)
    assert config.model.head.out_dim == 4096 and config.dino.momentum_teacher == 0.9995
    dino.validate(config)
