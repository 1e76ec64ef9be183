"""The supervised method: the linear protocol leaves the backbone bit-identical and keeps
no optimizer state for it, the BN head has no parameters, MAE's head inits, the
soft-target cross-entropy against NumPy, the fine-tuning step trains everything,
validation errors, and the presets' MAE hyper-parameters."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config

from ssl_jax import losses, parallel, train
from ssl_jax.methods import supervised

B = 16


class Run(NamedTuple):
    config: Any
    setup: Any
    before: Any  # host copy of the fresh state
    after: Any  # host copy after one step
    metrics: dict


def _one_step(preset: str) -> Run:
    config = load_config("supervised", preset)
    mesh = parallel.make_mesh(jax.devices()[:1])  # one device: compiles fastest
    setup = train.build(config, mesh)
    init_key, base_key = train.keys(config)
    state = setup.init(init_key)
    before = jax.device_get(state)
    k1, k2 = jax.random.split(jax.random.key(3))
    batch = dict(
        views=jax.random.normal(k1, (B, 1, 16, 16, 3)),
        label=jax.random.randint(k2, (B,), 0, 10),
    )
    with jax.set_mesh(mesh):
        state, metrics = setup.update(state, batch, base_key)
    return Run(config, setup, before, jax.device_get(state), jax.device_get(metrics))


@pytest.fixture(scope="module")
def linear():
    return _one_step("smoke_linear")


@pytest.fixture(scope="module")
def finetune():
    return _one_step("smoke")


def _leaves(tree):
    return {
        jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)
    }


def test_linear_protocol_leaves_the_backbone_bit_identical(linear):
    before, after = linear.before, linear.after
    jax.tree.map(np.testing.assert_array_equal, before.params["backbone"], after.params["backbone"])
    assert np.any(before.params["head"]["fc"]["bias"] != after.params["head"]["fc"]["bias"])
    assert np.any(
        before.batch_stats["head"]["bn"]["mean"] != after.batch_stats["head"]["bn"]["mean"]
    )
    assert np.isfinite(linear.metrics["loss"]) and "top1" in linear.metrics


def test_linear_protocol_keeps_no_optimizer_state_for_the_backbone(linear):
    head_size = sum(p.size for p in jax.tree.leaves(linear.before.params["head"]))
    state_size = sum(np.size(s) for s in jax.tree.leaves(linear.after.opt_state))
    assert state_size <= head_size + 8  # LARS momentum of the head, plus counters


def test_linear_head_is_batchnorm_without_affine_then_dense(linear):
    params, stats = linear.before.params["head"], linear.before.batch_stats["head"]
    assert set(params) == {"fc"}  # BatchNorm1d(affine=False): no scale, no offset
    assert set(stats["bn"]) == {"mean", "var"}
    kernel = params["fc"]["kernel"]  # [32, 10]
    assert 0.007 < kernel.std() < 0.013  # trunc_normal_(std=0.01)
    assert not np.any(params["fc"]["bias"])


def test_finetune_head_init_is_maes(finetune):
    fc = finetune.before.params["head"]["fc"]
    assert 1.4e-5 < fc["kernel"].std() < 2.6e-5  # trunc_normal_(std=2e-5)
    assert not np.any(fc["bias"])


def test_finetune_step_trains_the_backbone_too(finetune):
    before, after = _leaves(finetune.before.params), _leaves(finetune.after.params)
    frozen = [k for k in before if np.array_equal(before[k], after[k])]
    assert not frozen
    m = finetune.metrics
    assert np.isfinite(m["loss"]) and 0.0 <= m["mix_lam"] <= 1.0 and 0 <= m["top1"] <= 100


def test_embed_and_classify_shapes(finetune):
    model, state = finetune.setup.model, finetune.before
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    x = jnp.zeros((2, 16, 16, 3))
    assert model.apply(variables, x, train=False, method="embed").shape == (2, 32)
    assert model.apply(variables, x, train=False, method="classify").shape == (2, 10)


def test_soft_target_cross_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 5)).astype(np.float32)
    targets = rng.dirichlet(np.ones(5), size=4).astype(np.float32)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
    expected = np.mean(np.sum(-targets * log_p, -1))
    got = losses.soft_cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_linear_protocol_needs_a_frozen_backbone_and_no_mixing():
    params = {"backbone": {"w": jnp.zeros((2, 2))}, "head": {"w": jnp.zeros((2,))}}
    config = load_config("supervised", "smoke_linear", optim__frozen_params=())
    with pytest.raises(ValueError, match="leaves \\['backbone/w'\\] trainable"):
        supervised.init_extra(params, {}, config)
    config = load_config("supervised", "smoke_linear", supervised__mixup_alpha=0.8)
    with pytest.raises(ValueError, match="mixup_alpha=0.8"):
        supervised.init_extra(params, {}, config)
    config = load_config("supervised", "smoke", supervised__protocol="probe")
    with pytest.raises(ValueError, match="protocol='probe'"):
        supervised.init_extra(params, {}, config)


def test_classifier_protocol_text():
    assert supervised.classifier_protocol(load_config("supervised", "smoke")) == (
        "fine-tuned classifier top-1"
    )
    assert supervised.classifier_protocol(load_config("supervised", "smoke_linear")) == (
        "linear probe (MAE protocol) top-1"
    )


def test_imagenet_presets_carry_maes_hyper_parameters():
    base = load_config("supervised", "finetune_imagenet_vit_base")
    assert base.input.global_batch_size == 1024 and base.model.backbone == "vit_base"
    assert (base.optim.name, base.optim.lr, base.optim.layer_decay) == ("adamw", 5e-4, 0.65)
    assert (base.optim.weight_decay, base.model.vit.drop_path, base.model.vit.pool) == (
        0.05,
        0.1,
        "gap",
    )
    assert (base.supervised.mixup_alpha, base.supervised.cutmix_alpha) == (0.8, 1.0)
    assert (base.supervised.smoothing, base.schedule.epochs, base.schedule.warmup_epochs) == (
        0.1,
        100.0,
        5.0,
    )
    large = load_config("supervised", "finetune_imagenet_vit_large")
    assert (large.schedule.epochs, large.optim.layer_decay, large.model.vit.drop_path) == (
        50.0,
        0.75,
        0.2,
    )
    lin = load_config("supervised", "linear_imagenet_vit_base")
    assert (lin.input.global_batch_size, lin.optim.name, lin.optim.lr) == (16384, "lars", 0.1)
    assert (lin.optim.weight_decay, lin.schedule.epochs, lin.schedule.warmup_epochs) == (
        0.0,
        90.0,
        10.0,
    )
    assert lin.model.vit.pool == "cls" and lin.optim.frozen_params == ("^backbone/",)


@pytest.mark.parametrize(
    "preset", ["finetune_digits", "linear_digits", "finetune_cifar10", "linear_cifar10"]
)
def test_small_presets_are_single_view_vit_tiny_4(preset):
    c = load_config("supervised", preset)
    assert list(c.input.views) == ["view1"]
    assert (c.model.backbone, c.model.vit.patch_size, c.supervised.num_classes) == (
        "vit_tiny",
        4,
        10,
    )
    supervised.validate(c)
