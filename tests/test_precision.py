"""Mixed precision and memory switches: ``model.dtype="bfloat16"`` computes in bfloat16
while parameters, BatchNorm statistics, optimizer state, EMA targets, MoCo's queue,
losses and metrics stay float32; ``model.vit.remat`` changes neither values, gradients,
parameter names nor the sown attention; the donated train state is fully reusable."""

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config

from ssl_jax import losses, methods, parallel, schedules, train
from ssl_jax.data import pipeline
from ssl_jax.models.mae import MAE
from ssl_jax.models.vit import ViT

STEPS = 2
# Smoke presets covering every distinct precision path at ~14 s of CPU compile each:
# ResNet + grouped BN + queue + EMA target (MoCo v2), ViT with drop path and learned
# position embedding + DINO head + center + EMA teacher (DINO smoke_vit), ViT encoder +
# decoder + pixel MSE (MAE). SimCLR, SimSiam, BYOL, MoCo v3 and supervised add no state or
# model path of another precision (their losses are checked below; the classifier head is
# float32); add ("byol", "smoke") etc. here to run them too (all pass; ~14 s each).
FAMILIES = [
    ("moco_v2", "smoke"),
    ("dino", "smoke_vit"),
    ("mae", "smoke"),
]


class Bf16Run(NamedTuple):
    losses: list[float]  # bfloat16 losses of the first STEPS updates
    loss_f32_at_init: float  # the float32 model's loss on the first step's batch and rng
    state: Any  # host copy after STEPS updates
    metrics: dict  # of the last update
    donated: bool  # every leaf of the first state was deleted by the first update
    warnings: list[str]


def _float32_loss(config, state, batch, rng) -> float:
    """The same loss_fn with the float32 model on the same params, batch and rng."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.model.dtype = "float32"
    config = schedules.resolve_steps(config, pipeline.steps_per_epoch(config.input, 1))
    method = methods.get_method(config.method)
    model = method.make_model(config)
    loss_fn = jax.jit(lambda s, b, r: method.loss_fn(s.params, s, b, r, model=model, config=config))
    return float(loss_fn(state, batch, rng)[0])


@pytest.fixture(scope="module", params=FAMILIES, ids=[f"{n}:{p}" for n, p in FAMILIES])
def bf16_run(request) -> Bf16Run:
    name, preset = request.param
    config = load_config(name, preset, model__dtype="bfloat16")
    mesh = parallel.make_mesh(jax.devices()[:1])  # one device: compiles fastest
    setup = train.build(config, mesh)
    init_key, base_key = train.keys(config)
    state = setup.init(init_key)
    batch = pipeline.synthetic_batch(config.input, seed=7)
    with jax.set_mesh(mesh):
        loss_f32 = _float32_loss(config, state, batch, jax.random.fold_in(base_key, 0))
        first_state, values = state, []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(STEPS):
                state, metrics = setup.update(state, batch, base_key)
                values.append(float(metrics["loss"]))
    donated = all(leaf.is_deleted() for leaf in jax.tree.leaves(first_state))
    return Bf16Run(
        values,
        loss_f32,
        jax.device_get(state),
        jax.device_get(metrics),
        donated,
        [str(w.message) for w in caught],
    )


def _inexact_dtypes(tree) -> dict[str, str]:
    return {
        jax.tree_util.keystr(path): str(leaf.dtype)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        if jnp.issubdtype(leaf.dtype, jnp.inexact)
    }


def test_bf16_training_is_finite_with_float32_state_and_metrics(bf16_run):
    assert np.all(np.isfinite(bf16_run.losses)), bf16_run.losses
    for part in ("params", "batch_stats", "opt_state", "extra"):
        dtypes = _inexact_dtypes(getattr(bf16_run.state, part))
        wrong = {k: v for k, v in dtypes.items() if v != "float32"}
        assert not wrong, f"{part} leaves not float32: {wrong}"
    wrong = {k: str(v.dtype) for k, v in bf16_run.metrics.items() if v.dtype != np.float32}
    assert not wrong, f"metrics not float32: {wrong}"
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(bf16_run.state.params))


def test_bf16_loss_is_close_to_float32_loss_at_init(bf16_run):
    # Same params, batch and rng; only the compute dtype differs. bfloat16 keeps 8
    # significant bits (relative rounding 2**-9 = 0.2% per op); over every smoke preset
    # the losses differed by at most 0.6% (MoCo v2; SimCLR 5e-6, DINO 1e-4 to 3e-3).
    # 3% leaves room for that rounding across platforms while a wrong loss path (another
    # temperature, a missing normalisation, an overflow) is far off or non-finite.
    np.testing.assert_allclose(bf16_run.losses[0], bf16_run.loss_f32_at_init, rtol=0.03)


def test_donated_state_is_consumed_without_unusable_buffers(bf16_run):
    # A leaf aliasing another (an EMA target that is not a copy) could not be donated
    # twice; an output without a matching input leaves a donated buffer unused.
    assert bf16_run.donated
    unusable = [w for w in bf16_run.warnings if "donated buffers were not usable" in w]
    assert not unusable, unusable


def _bf16(*shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.bfloat16)


@pytest.mark.parametrize(
    "name, fn",
    [
        ("info_nce", lambda: losses.info_nce(_bf16(4, 8), _bf16(4, 8, seed=1), _bf16(6, 8), 0.2)),
        ("nt_xent", lambda: losses.nt_xent(_bf16(4, 8), _bf16(4, 8, seed=1), 0.1)),
        ("moco_v3", lambda: losses.moco_v3_contrastive(_bf16(4, 8), _bf16(4, 8, seed=1), 0.2)),
        ("neg_cosine", lambda: losses.negative_cosine(_bf16(4, 8), _bf16(4, 8, seed=1))),
        ("byol", lambda: losses.normalized_l2(_bf16(4, 8), _bf16(4, 8, seed=1))),
        (
            "dino",
            lambda: losses.dino_cross_entropy(
                _bf16(3, 4, 8), _bf16(2, 4, 8, seed=1), _bf16(8, seed=2), 0.1, 0.04
            ),
        ),
        (
            "mae",
            lambda: losses.masked_patch_mse(
                _bf16(2, 4, 12),
                losses.normalize_patches(_bf16(2, 4, 12, seed=1)),
                jnp.array([[0, 1, 1, 0]] * 2, jnp.bfloat16),
            ),
        ),
        ("ce", lambda: losses.cross_entropy(_bf16(4, 10), jnp.arange(4))),
        (
            "soft_ce",
            lambda: losses.soft_cross_entropy(_bf16(4, 10), jax.nn.softmax(_bf16(4, 10, seed=1))),
        ),
    ],
)
def test_losses_return_float32_for_bfloat16_inputs(name, fn):
    out = fn()
    for leaf in jax.tree.leaves(out):
        assert leaf.dtype == jnp.float32, (name, leaf.dtype)
        assert np.all(np.isfinite(leaf)), name


def test_bf16_loss_matches_float32_loss_of_the_same_bfloat16_inputs():
    # The cast at entry: a bfloat16 input gives the float32 loss of its (exact) float32
    # value, not a loss accumulated in bfloat16.
    q, k = _bf16(64, 32), _bf16(64, 32, seed=1)
    got = losses.nt_xent(q, k, 0.1)[0]
    want = losses.nt_xent(q.astype(jnp.float32), k.astype(jnp.float32), 0.1)[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)


# --- rematerialisation -------------------------------------------------------------------

VIT = dict(width=32, depth=2, heads=2, patch_size=4, image_size=16, drop_path=0.2)


def _assert_close_gradient(a, b):
    # Remat recomputes the same float32 ops, but XLA may fuse them differently: rounding
    # of ~1 ulp of the leaf's largest entries, nothing like a wrong mask or a dropped term.
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.max(np.abs(a))))


def _param_names(tree) -> list[str]:
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def _remat_pair(build, x, **apply_kwargs):
    """Parameter names of ``build(False)`` and ``build(True)``, and the gradients of one
    loss through each on the same (non-remat) params."""
    plain, remat = build(False), build(True)
    params = jax.jit(lambda k: plain.init(k, x, train=False)["params"])(jax.random.key(0))
    shapes = jax.eval_shape(lambda k: remat.init(k, x, train=False)["params"], jax.random.key(0))
    if "cls_token" in params:
        # A unit-scale class token: at its init (std 1e-6) the final LayerNorm of the class
        # token divides rounding noise by ~1e-6, and its gradient depends on fusion order.
        params["cls_token"] = jax.random.normal(jax.random.key(2), params["cls_token"].shape)

    def loss(p, model):
        y = model.apply({"params": p}, x, train=True, **apply_kwargs)
        y = y["pred"] if isinstance(y, dict) else y
        target = jax.random.normal(jax.random.key(3), y.shape)
        return jnp.mean(jnp.square(y - target))

    grads = [jax.jit(jax.value_and_grad(lambda p, m=m: loss(p, m)))(params) for m in (plain, remat)]
    return _param_names(params), _param_names(shapes), grads


def _images(seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(4, 16, 16, 3)), jnp.float32)


def test_vit_remat_keeps_loss_gradients_and_param_names():
    names, names_remat, ((loss_a, grads_a), (loss_b, grads_b)) = _remat_pair(
        lambda remat: ViT(**VIT, remat=remat), _images(), rngs={"dropout": jax.random.key(1)}
    )
    assert names == names_remat
    assert "['blocks_1']['attn']['qkv']['kernel']" in names
    # Drop path (rate 0.2) draws the same masks in the recomputation as in the forward.
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    jax.tree.map(_assert_close_gradient, grads_a, grads_b)


def test_vit_remat_still_sows_last_block_attention():
    model = ViT(**VIT, remat=True)
    x = jnp.zeros((2, 16, 16, 3))
    variables = jax.eval_shape(lambda k: model.init(k, x, train=False), jax.random.key(0))
    variables = jax.tree.map(lambda s: jnp.full(s.shape, 0.02, s.dtype), variables)
    _, state = jax.jit(lambda v: model.apply(v, x, train=False, mutable=["intermediates"]))(
        variables
    )
    (probs,) = state["intermediates"]["attention"]
    assert probs.shape == (2, 2, 17, 17) and probs.dtype == jnp.float32
    np.testing.assert_allclose(np.sum(probs, axis=-1), 1.0, rtol=1e-5)


def test_mae_remat_checkpoints_encoder_and_decoder_blocks_with_same_params():
    # The gradients of a remat block are checked above; here only that the MAE's decoder
    # blocks are rematerialised too (one checkpoint per block in the traced gradient,
    # no compilation needed) and that its parameter names do not change.
    def build(remat):
        backbone = ViT(**{**VIT, "depth": 2, "drop_path": 0.0}, remat=remat)
        return MAE(backbone, decoder_width=16, decoder_depth=3, decoder_heads=2)

    x, noise = jnp.zeros((2, 16, 16, 3)), jnp.zeros((2, 16))
    init = lambda m: jax.eval_shape(
        lambda k: m.init(k, x, train=False)["params"], jax.random.key(0)
    )
    params = init(build(False))
    assert _param_names(params) == _param_names(init(build(True)))
    assert "['decoder_blocks_2']['mlp']['fc1']['kernel']" in _param_names(params)

    def checkpoints(remat):
        loss = lambda p: jnp.sum(build(remat).apply({"params": p}, x, True, noise=noise)["pred"])
        eqns = jax.make_jaxpr(jax.grad(loss))(params).jaxpr.eqns
        # jax.checkpoint's primitive: "remat2" in jax 0.10, "checkpoint" in some versions.
        return sum(e.primitive.name in ("remat2", "checkpoint") for e in eqns)

    assert checkpoints(False) == 0
    assert checkpoints(True) == 2 + 3
