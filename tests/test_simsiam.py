"""SimSiam: the symmetric negative-cosine loss, the stop-gradient, the predictor's lr rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config

from ssl_jax import config_base
from ssl_jax.methods import simsiam
from ssl_jax.optim import param_labels
from ssl_jax.state import TrainState


def _config(stop_gradient=True):
    c = config_base.base_config()
    c.method = "simsiam"
    c.simsiam = simsiam.get_config()
    c.simsiam.stop_gradient = stop_gradient
    c.model.update(backbone="resnet_tiny", stem="cifar")
    c.model.head.update(num_layers=3, hidden_dim=32, out_dim=16, use_bn=True, last_bn="no_affine")
    c.model.predictor.update(num_layers=2, hidden_dim=8, out_dim=16, use_bn=True, last_bias=True)
    c.input.update(global_batch_size=8, image_size=8)
    return c


def _outputs(model, params, stats, x):
    """Projection and prediction of one view, BN in train mode (as the method runs it)."""
    out, _ = model.apply(
        {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
    )
    return out["projection"], out["prediction"]


def _neg_cos(p, z):
    return -jnp.mean(jnp.sum(p * z, 1) / (jnp.linalg.norm(p, axis=1) * jnp.linalg.norm(z, axis=1)))


@pytest.fixture(scope="module")
def results():
    """Everything the loss tests compare, from one model, state and batch, in one jitted
    computation (a shared 2-core CPU pays dearly for op-by-op dispatch and compiles)."""
    config = _config()
    model = simsiam.make_model(config)
    init = jax.jit(lambda key: model.init(key, jnp.zeros((1, 8, 8, 3)), train=False))
    variables = init(jax.random.key(0))
    params, stats = variables["params"], variables["batch_stats"]
    state = TrainState(jnp.zeros((), jnp.int32), params, stats, None, {})
    views = jax.random.normal(jax.random.key(1), (8, 2, 8, 8, 3))

    def method(params, cfg):
        def loss(p):
            return simsiam.loss_fn(
                p, state, {"views": views}, jax.random.key(2), model=model, config=cfg
            )

        return jax.value_and_grad(loss, has_aux=True)(params)

    def by_hand(params):
        # The gradient with z1, z2 held constant, the paper's sg(z) written out: they
        # enter the differentiated function as inputs, not as functions of the params.
        (z1, p1), (z2, p2) = (_outputs(model, params, stats, views[:, i]) for i in (0, 1))

        def loss(params, z1, z2):
            _, p1 = _outputs(model, params, stats, views[:, 0])
            _, p2 = _outputs(model, params, stats, views[:, 1])
            return 0.5 * _neg_cos(p1, z2) + 0.5 * _neg_cos(p2, z1)

        return (z1, p1, z2, p2), jax.grad(loss)(params, z1, z2)

    @jax.jit
    def run(params):
        return dict(
            method=method(params, config),
            no_stop_gradient=method(params, _config(stop_gradient=False)),
            by_hand=by_hand(params),
        )

    return run(params)


def _np_neg_cos(p, z):
    p, z = np.asarray(p, np.float64), np.asarray(z, np.float64)
    cos = (p * z).sum(1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(z, axis=1))
    return -cos.mean()


def test_loss_is_half_sum_of_negative_cosines_in_both_orders(results):
    (loss, aux), _ = results["method"]
    (z1, p1, z2, p2), _ = results["by_hand"]
    expected = 0.5 * _np_neg_cos(p1, z2) + 0.5 * _np_neg_cos(p2, z1)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    z1n = np.asarray(z1) / np.linalg.norm(np.asarray(z1), axis=1, keepdims=True)
    np.testing.assert_allclose(aux["embeddings"], z1n, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(aux["metrics"]["cos_p1_z2"]), -_np_neg_cos(p1, z2), rtol=1e-5)


def _trees_close(a, b):
    return all(
        np.allclose(x, y, rtol=1e-4, atol=1e-5)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_stop_gradient_blocks_the_gradient_through_the_target_branch(results):
    assert _trees_close(results["method"][1], results["by_hand"][1])


def test_without_stop_gradient_the_target_branch_adds_gradient(results):
    # The collapse ablation of paper Fig. 2; shows the test above can tell the two apart.
    assert not _trees_close(results["no_stop_gradient"][1], results["by_hand"][1])


def _param_labels(config):
    model = simsiam.make_model(config)
    size = config.input.image_size
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
    )
    labels = param_labels(config.optim)(shapes["params"])
    flat = jax.tree_util.tree_flatten_with_path(labels)[0]
    return {"/".join(k.key for k in path): label for path, label in flat}


@pytest.mark.parametrize("preset", ["smoke", "digits", "cifar10", "imagenet"])
def test_constant_lr_pattern_matches_exactly_the_predictor(preset):
    labels = _param_labels(load_config("simsiam", preset))
    constant = {p for p, label in labels.items() if label == "constant"}
    predictor = {p for p in labels if p.startswith("predictor/")}
    assert predictor == {
        "predictor/dense0/kernel",
        "predictor/bn0/scale",
        "predictor/bn0/bias",
        "predictor/dense1/kernel",
        "predictor/dense1/bias",
    }
    assert constant == predictor
    assert {label for p, label in labels.items() if p not in predictor} == {"default"}


def test_missing_predictor_is_rejected():
    config = _config()
    config.model.predictor.num_layers = 0
    with pytest.raises(ValueError, match=r"predictor.num_layers=0"):
        simsiam.validate(config)
