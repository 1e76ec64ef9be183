"""SimCLR: one forward over both views with global BN, NT-Xent over the global batch."""

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import config_base
from ssl_jax.methods import simclr
from ssl_jax.state import TrainState


def _config():
    c = config_base.base_config()
    c.method = "simclr"
    c.simclr = simclr.get_config()
    c.simclr.temperature = 0.5
    c.model.update(backbone="resnet_tiny", stem="cifar")
    c.model.head.update(num_layers=2, hidden_dim=16, out_dim=8, use_bn=True, last_bn="scale")
    return c


def test_loss_is_nt_xent_of_both_views_projections():
    config = _config()
    model = simclr.make_model(config)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
    state = TrainState(
        jnp.zeros((), jnp.int32), variables["params"], variables["batch_stats"], None, {}
    )
    views = jax.random.normal(jax.random.key(1), (6, 2, 8, 8, 3))
    loss, aux = simclr.loss_fn(
        state.params, state, {"views": views}, jax.random.key(2), model=model, config=config
    )
    # Reference: the projections of all 2N views from one train-mode forward pass.
    x = jnp.concatenate([views[:, 0], views[:, 1]])
    out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    z = np.asarray(out["projection"])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    sim = z @ z.T / 0.5
    n = 6
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        others = np.delete(sim[i], i)
        total += -sim[i, j] + np.log(np.exp(others).sum())
    np.testing.assert_allclose(float(loss), total / n, rtol=1e-4)  # loss_a + loss_b
    assert aux["embeddings"].shape == (6, 8)
    assert 0.0 <= float(aux["metrics"]["contrast_acc"]) <= 100.0


def test_keeps_no_extra_state():
    assert simclr.init_extra({}, {}, _config()) == {}
