"""The method contract, for every method of ``methods.METHODS`` (a method added to the
registry with a config is covered without editing this file):

- the loaded method is complete and its loss returns exactly the `Aux` keys;
- a smoke step gives a finite loss and changes the params, and the online probe learns;
- the result does not depend on the device count, nor on the online linear probe: two
  steps on 1 fake CPU device with the probe end where 8 devices without it do, within
  float32 summation noise (the end-to-end tier, ``-m slow``: the 8-device compile of
  every method costs ~20 s each here);
- the probe leaves the method's update bit-for-bit unchanged (shown on one method: the
  probe's step is the trainer's, apart from every method's loss)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import configs_by_method, smoke_config

from ssl_jax import methods, parallel, schedules, train
from ssl_jax.data import pipeline

STEPS = 2


def test_every_registered_method_has_a_config_with_a_smoke_preset():
    assert set(methods.METHODS) <= set(configs_by_method())


@pytest.mark.parametrize("name", methods.METHODS)
def test_the_loaded_method_is_complete(name):
    method = methods.get_method(name)
    for hook in methods.REQUIRED + tuple(h for h in methods.OPTIONAL if h != "ENCODER"):
        assert callable(getattr(method, hook)), hook
    assert isinstance(method.ENCODER, methods.EncoderAt)
    assert set(method.get_config()) <= set(smoke_config(name)[name])  # its own section


@pytest.mark.parametrize("name", methods.METHODS)
def test_loss_returns_the_aux_of_the_contract(name):
    config = smoke_config(name)
    setup = train.build(config, parallel.make_mesh(jax.devices()[:1]))
    state = jax.eval_shape(setup.init, jax.random.key(0))
    batch = pipeline.synthetic_batch(config.input)
    resolved = schedules.resolve_steps(config, setup.steps_per_epoch)
    loss, aux = jax.eval_shape(
        lambda s, b: setup.method.loss_fn(
            s.params, s, b, jax.random.key(1), model=setup.model, config=resolved
        ),
        state,
        batch,
    )
    assert set(aux) == set(methods.Aux.__annotations__)
    assert loss.shape == ()
    b = config.input.global_batch_size
    dim = state.probe["params"]["kernel"].shape[0]  # the evaluated encoder's embed width
    views, rem = divmod(aux["features"].shape[0], b)
    assert views >= 1 and rem == 0 and aux["features"].shape[1:] == (dim,)
    assert aux["embeddings"].shape[0] == b
    assert jax.tree.structure(aux["batch_stats"]) == jax.tree.structure(state.batch_stats)


def _run(config, devices):
    mesh = parallel.make_mesh(jax.devices()[:devices])
    setup = train.build(config, mesh)
    init_key, base_key = train.keys(config)
    state = setup.init(init_key)
    start = jax.device_get(state)
    batch = next(pipeline.pretrain_iterator(config.input, seed=config.seed))
    losses, metrics = [], None
    with jax.set_mesh(mesh):
        for _ in range(STEPS):
            state, metrics = setup.update(state, parallel.to_global(batch, mesh), base_key)
            losses.append(float(metrics["loss"]))
    return dict(start=start, end=jax.device_get(state), losses=losses, metrics=metrics)


@pytest.fixture(scope="module", params=methods.METHODS)
def one_device(request):
    """``(name, run)``: two steps of the method's smoke preset on 1 device with the probe."""
    return request.param, _run(smoke_config(request.param), 1)


def test_a_smoke_step_is_finite_changes_the_params_and_trains_the_probe(one_device):
    _, one = one_device
    assert np.all(np.isfinite(one["losses"]))
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), one["start"].params, one["end"].params)
    assert any(jax.tree.leaves(moved))
    assert int(one["end"].step) == STEPS
    assert np.any(one["end"].probe["params"]["kernel"] != 0)  # it started at zero
    assert 0.0 <= float(one["metrics"]["online_linear_top1"]) <= 100.0


@pytest.mark.slow
def test_result_depends_on_neither_the_device_count_nor_the_probe(one_device):
    name, one = one_device
    eight = _run(smoke_config(name, evals__online_linear=False), 8)
    assert eight["end"].probe == {} and "online_linear_top1" not in eight["metrics"]
    np.testing.assert_allclose(one["losses"], eight["losses"], rtol=1e-5)
    for field in ("step", "params", "batch_stats", "opt_state", "extra"):
        leaves = jax.tree_util.tree_leaves_with_path(getattr(one["end"], field))
        for (path, a), b in zip(leaves, jax.tree.leaves(getattr(eight["end"], field)), strict=True):
            a, b = _without_key_bias(path, np.asarray(a)), _without_key_bias(path, np.asarray(b))
            # Summation order differs across device counts: float32 noise of ~1e-6 on
            # weights of ~0.05; a semantic difference (per-device BN, per-shard negatives,
            # a probe leaking into the update) is far larger.
            np.testing.assert_allclose(
                a, b, rtol=2e-4, atol=1e-5, err_msg=f"{field}{jax.tree_util.keystr(path)}"
            )


def test_the_online_probe_leaves_the_method_bitwise_unchanged():
    with_probe = _run(smoke_config("simclr"), 1)
    without = _run(smoke_config("simclr", evals__online_linear=False), 1)
    for field in ("params", "batch_stats", "opt_state", "extra"):
        jax.tree.map(
            np.testing.assert_array_equal,
            getattr(with_probe["end"], field),
            getattr(without["end"], field),
        )
    assert with_probe["losses"] == without["losses"]


def test_without_labels_there_is_no_probe(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (32, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "unlabelled.npz", images=images)
    config = smoke_config(
        "simclr",
        input__dataset=f"npz:{tmp_path / 'unlabelled.npz'}",
        evals__at_end=False,
        evals__knn_every_steps=0,
    )
    setup = train.build(config, parallel.make_mesh(jax.devices()[:1]))
    assert setup.probe_classes == 0
    assert jax.eval_shape(setup.init, jax.random.key(0)).probe == {}


def test_encoder_at_reads_the_declared_variables():
    state = dataclasses.make_dataclass("S", ["params", "batch_stats", "extra"])(
        params={"backbone": 1},
        batch_stats={},
        extra={"target_params": {"backbone": jnp.ones(2)}, "target_batch_stats": {"b": 3}},
    )
    teacher = methods.EncoderAt("extra/target_params", "extra/target_batch_stats")
    assert teacher.variables(state)["batch_stats"] == {"b": 3}
    assert methods.EncoderAt().variables(state) == {"params": {"backbone": 1}, "batch_stats": {}}


def _without_key_bias(path, leaf):
    """A ViT's attention key bias has an exactly zero gradient (softmax over the keys is
    invariant to the per-query constant q . b_k), so its float32 gradient is rounding noise
    that AdamW normalises into lr-sized steps of random sign: only q and v biases compare."""
    if not jax.tree_util.keystr(path).endswith("['qkv']['bias']"):
        return leaf
    q, _, v = np.split(leaf, 3, axis=-1)
    return np.concatenate([q, v], axis=-1)
