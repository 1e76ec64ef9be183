"""Optimizers against NumPy transcriptions of PyTorch SGD, SimCLR's LARS and BYOL's /
MoCo v3's LARS."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ssl_jax import catalog
from ssl_jax.optim import (
    decay_mask,
    layer_decay_scales,
    make_optimizer,
    param_labels,
    scaled_lr,
)

LRS = (0.5, 0.3, 0.1, 0.05)  # a changing lr, to pin where the lr enters the momentum


def optim_config(name, **overrides):
    cfg = dict(
        name=name,
        lr=0.3,
        lr_scaling="linear",
        momentum=0.9,
        nesterov=False,
        weight_decay=1e-2,
        exclude_bias_and_norm=True,
        trust_coefficient=1e-3,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay_end=None,
        clip_grad_per_param=0.0,
        frozen_params=(),
        delayed_params=(),
        delay_epochs=0.0,
        constant_lr_params=(),
    )
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def toy_params():
    rng = np.random.default_rng(0)
    return {
        "dense": {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=(4,))},
        "bn": {"scale": rng.normal(size=(4,)), "bias": np.zeros(4)},  # zero norm: trust 1
    }


def toy_grads(step, params_fn=toy_params):
    rng = np.random.default_rng(step + 1)
    return jax.tree.map(lambda p: rng.normal(size=p.shape), params_fn())


def run_optax(cfg, steps=4, lrs=LRS, params_fn=toy_params):
    schedule = lambda count: jnp.asarray(lrs)[count]
    opt = make_optimizer(cfg, schedule)
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params_fn())
    state = opt.init(params)
    for step in range(steps):
        grads = toy_grads(step, params_fn)
        grads = jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), grads)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def run_numpy(step_fn, cfg, steps=4, lrs=LRS, params_fn=toy_params):
    params = params_fn()
    mask = decay_mask(params)
    buf = jax.tree.map(np.zeros_like, params)
    for step in range(steps):
        grads = toy_grads(step, params_fn)
        out = jax.tree.map(
            lambda w, g, b, decay, lr=lrs[step]: step_fn(w, g, b, decay, lr, cfg),
            params,
            grads,
            buf,
            mask,
        )
        params = jax.tree.map(lambda o: o[0], out, is_leaf=lambda o: isinstance(o, tuple))
        buf = jax.tree.map(lambda o: o[1], out, is_leaf=lambda o: isinstance(o, tuple))
    return params


def torch_sgd_step(w, g, buf, decay, lr, cfg):
    """torch.optim.SGD with coupled weight decay, dampening 0."""
    if decay or not cfg.exclude_bias_and_norm:
        g = g + cfg.weight_decay * w
    buf = cfg.momentum * buf + g
    step = g + cfg.momentum * buf if cfg.nesterov else buf
    return w - lr * step, buf


def simclr_lars_step(w, g, v, decay, lr, cfg):
    """google-research/simclr LARSOptimizer, classic momentum."""
    adapt = decay or not cfg.exclude_bias_and_norm
    if adapt:
        g = g + cfg.weight_decay * w
    trust = 1.0
    w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
    if adapt and w_norm > 0 and g_norm > 0:
        trust = cfg.trust_coefficient * w_norm / g_norm
    v = cfg.momentum * v + lr * trust * g
    update = cfg.momentum * v + lr * trust * g if cfg.nesterov else v
    return w - update, v


def moco_v3_lars_step(w, g, mu, decay, lr, cfg):
    """facebookresearch/moco-v3 moco/optimizer.py LARS (``if p.ndim > 1``: weight decay and
    trust ratio; ``mu = m mu + dp; p -= lr mu``), which is also BYOL's utils/optimizers.py
    lars rebuilt each step with that step's lr (its exclude_bias_and_norm filter picks the
    same leaves here). Nesterov, which neither has, as PyTorch SGD's."""
    if decay or not cfg.exclude_bias_and_norm:
        g = g + cfg.weight_decay * w
        w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
        if w_norm > 0 and g_norm > 0:
            g = g * (cfg.trust_coefficient * w_norm / g_norm)
    mu = cfg.momentum * mu + g
    step = g + cfg.momentum * mu if cfg.nesterov else mu
    return w - lr * step, mu


def apex_larc_step(w, g, buf, decay, lr, cfg):
    """NVIDIA apex.parallel.LARC(SGD(momentum, weight_decay), trust_coefficient,
    clip=False), SwAV's optimizer: the gradient rewritten in place, then torch SGD with the
    group's weight decay set to 0 (a tensor with a zero norm keeps its raw gradient)."""
    w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
    adapt = decay or not cfg.exclude_bias_and_norm
    if adapt and w_norm != 0 and g_norm != 0:
        wd = cfg.weight_decay
        adaptive_lr = cfg.trust_coefficient * w_norm / (g_norm + w_norm * wd + 1e-8)
        g = (g + wd * w) * adaptive_lr
    buf = cfg.momentum * buf + g
    step = g + cfg.momentum * buf if cfg.nesterov else buf
    return w - lr * step, buf


def assert_trees_close(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6), a, b)


@pytest.mark.parametrize("exclude", [False, True])
def test_larc_matches_apex(exclude):
    cfg = optim_config("larc", exclude_bias_and_norm=exclude, trust_coefficient=0.5)
    assert_trees_close(run_optax(cfg), run_numpy(apex_larc_step, cfg))
    # Not the trust ratio of 'lars' (||g + wd w|| in the denominator, lr in the momentum).
    lars = run_optax(optim_config("lars", exclude_bias_and_norm=exclude, trust_coefficient=0.5))
    assert not np.allclose(lars["dense"]["kernel"], run_optax(cfg)["dense"]["kernel"])


def test_larc_refuses_a_weight_decay_schedule():
    with pytest.raises(ValueError, match="larc.*constant weight decay"):
        make_optimizer(optim_config("larc", weight_decay_end=0.1), 0.1)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("exclude", [False, True])
def test_sgd_matches_pytorch(nesterov, exclude):
    cfg = optim_config("sgd", nesterov=nesterov, exclude_bias_and_norm=exclude)
    assert_trees_close(run_optax(cfg), run_numpy(torch_sgd_step, cfg))


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("exclude", [False, True])
def test_lars_matches_simclr(nesterov, exclude):
    cfg = optim_config(
        "lars", nesterov=nesterov, exclude_bias_and_norm=exclude, trust_coefficient=0.5
    )
    assert_trees_close(run_optax(cfg), run_numpy(simclr_lars_step, cfg))


# A linear warm-up to 0.4 over 4 steps (0 at step 0, as ours), then constant.
WARMUP_LRS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.4)


def params_with_zero_kernel():
    """toy_params plus a zero 2-D kernel (a zero-initialised last layer): ||w|| = 0, so its
    trust ratio is 1, and with lr 0 at step 0 it is still 0 at step 1."""
    return {**toy_params(), "head": {"kernel": np.zeros((4, 2))}}


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("exclude", [False, True])
@pytest.mark.parametrize(
    "lr_in_momentum, reference",
    [(True, simclr_lars_step), (False, moco_v3_lars_step)],
    ids=["simclr", "byol_moco_v3"],
)
def test_lars_forms_match_their_references_through_a_warmup(
    lr_in_momentum, reference, exclude, nesterov
):
    cfg = optim_config(
        "lars",
        nesterov=nesterov,
        exclude_bias_and_norm=exclude,
        weight_decay=0.05,
        trust_coefficient=0.5,
        lars_lr_in_momentum=lr_in_momentum,
    )
    run = dict(steps=len(WARMUP_LRS), lrs=WARMUP_LRS, params_fn=params_with_zero_kernel)
    ours = run_optax(cfg, **run)
    assert_trees_close(ours, run_numpy(reference, cfg, **run))
    # The zero kernel moved (trust 1, not 0 / 0), and the default form is the first one.
    assert np.all(np.asarray(ours["head"]["kernel"]) != 0.0)
    if lr_in_momentum:
        del cfg.lars_lr_in_momentum
        assert_trees_close(run_optax(cfg, **run), ours)


def fixed_point_updates(lr_in_momentum, lrs, momentum=0.9):
    """The LARS updates of len(lrs) steps at fixed params and gradient (so the trust-scaled
    decayed gradient u is the same at every step): the momentum buffers alone differ."""
    cfg = optim_config(
        "lars", momentum=momentum, trust_coefficient=0.5, lars_lr_in_momentum=lr_in_momentum
    )
    opt = make_optimizer(cfg, lambda count: jnp.asarray(lrs, jnp.float32)[count])
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), toy_params())
    grads = jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), toy_grads(0))
    update = jax.jit(opt.update)
    state, out = opt.init(params), []
    for _ in lrs:
        u, state = update(grads, state, params)
        out.append(np.asarray(u["dense"]["kernel"], np.float64))
    return np.stack(out)


def test_lars_forms_agree_at_constant_lr_and_differ_in_the_warmup():
    """With u fixed, inside_t = -u sum_s m^(t-s) lr_s and outside_t = -u lr_t sum_s m^(t-s):
    equal while the lr has been constant since step 0; in a linear warm-up (lr_s = c s / W)
    inside / outside = 1 - (sum_k k m^k) / (t sum_k m^k) -> 1 - 9 / t at m = 0.9; after it,
    the gap shrinks by m per step."""
    m, steps = 0.9, 110
    constant = [0.3] * 8
    np.testing.assert_allclose(
        fixed_point_updates(True, constant), fixed_point_updates(False, constant), rtol=1e-6
    )
    np.testing.assert_allclose(
        run_optax(optim_config("lars", trust_coefficient=0.5), 6, constant)["dense"]["kernel"],
        run_optax(
            optim_config("lars", trust_coefficient=0.5, lars_lr_in_momentum=False), 6, constant
        )["dense"]["kernel"],
        rtol=1e-6,
    )

    warmup = 100
    lrs = [0.3 * min(t / warmup, 1.0) for t in range(steps)]
    inside, outside = fixed_point_updates(True, lrs), fixed_point_updates(False, lrs)
    # The same direction u at every step, so each update is a multiple of the first
    # non-zero outside one; compare those multiples with the unrolled sums.
    u = outside[0] / lrs[0] if lrs[0] else outside[1] / (lrs[1] * (1 + m))
    decays = [m ** np.arange(t + 1)[::-1] for t in range(steps)]
    expected_in = np.array([np.dot(d, lrs[: t + 1]) for t, d in enumerate(decays)])
    expected_out = np.array([lrs[t] * d.sum() for t, d in enumerate(decays)])
    np.testing.assert_allclose(inside, expected_in[:, None, None] * u, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(outside, expected_out[:, None, None] * u, rtol=1e-4, atol=1e-9)
    ratio = expected_in[1:warmup] / expected_out[1:warmup]
    assert np.all(ratio < 1.0)  # the inside form's warm-up steps are smaller
    # t (1 - ratio) = sum_k k m^k / sum_k m^k, which tends to m / (1 - m) = 9 once m^t ~ 0.
    t = np.arange(1, warmup)
    np.testing.assert_allclose((t * (1.0 - ratio))[-20:], m / (1 - m), rtol=1e-2)
    gap = expected_out[warmup:] - expected_in[warmup:]
    np.testing.assert_allclose(gap[1:] / gap[:-1], m, rtol=1e-9)
    k = np.abs(u).argmax()
    gap_ours = (inside - outside).reshape(steps, -1)[warmup:, k]
    np.testing.assert_allclose(gap_ours[1:6] / gap_ours[:5], m, rtol=1e-3)


def test_lars_lr_in_momentum_must_be_a_bool():
    with pytest.raises(ValueError, match="lars_lr_in_momentum"):
        make_optimizer(optim_config("lars", lars_lr_in_momentum="outside"), 0.1)


def lars_presets(names):
    for name in names:
        module = catalog.config_module(name)
        for preset in module.PRESETS:
            config = module.get_config(preset)
            if config.optim.name == "lars":
                yield f"{name}:{preset}", config


def test_byol_moco_v3_and_solo_learn_lars_presets_apply_the_lr_after_the_momentum():
    # byol: all 6 presets; moco_v3: the 4 ResNet ones; dino: cifar10_resnet18 (solo-learn's
    # LARS, PyTorch SGD with LARS-scaled gradients).
    found = dict(lars_presets(["byol", "moco_v3", "dino"]))
    assert len(found) >= 11
    assert {k for k, c in found.items() if c.optim.lars_lr_in_momentum} == set()
    simclr = dict(lars_presets(["simclr"]))
    assert simclr and all(c.optim.lars_lr_in_momentum for c in simclr.values())


def test_lars_excluded_leaf_is_plain_momentum_sgd():
    cfg = optim_config("lars", weight_decay=0.5, trust_coefficient=1e-3)
    params = run_optax(cfg, steps=1)
    expected = toy_params()["dense"]["bias"] - LRS[0] * toy_grads(0)["dense"]["bias"]
    np.testing.assert_allclose(params["dense"]["bias"], expected, rtol=1e-5)


def test_adamw_mask_skips_decay_on_bias_and_norm():
    cfg = optim_config("adamw", weight_decay=0.1)
    opt = make_optimizer(cfg, 0.01)
    params = jax.tree.map(lambda p: jnp.ones_like(p, jnp.float32), toy_params())
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(zeros, opt.init(params), params)
    # With zero gradients Adam's step is 0, leaving only the decoupled decay -lr*wd*w.
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.01 * 0.1, rtol=1e-6)
    np.testing.assert_array_equal(updates["dense"]["bias"], 0.0)
    np.testing.assert_array_equal(updates["bn"]["scale"], 0.0)


def test_decay_mask_is_rank_based():
    assert decay_mask(toy_params()) == {
        "dense": {"kernel": True, "bias": False},
        "bn": {"scale": False, "bias": False},
    }


@pytest.mark.parametrize("rule, expected", [("linear", 0.3 * 2), ("sqrt", 0.3 * 32), ("none", 0.3)])
def test_scaled_lr(rule, expected):
    assert scaled_lr(optim_config("sgd", lr_scaling=rule), 1024 if rule == "sqrt" else 512) == (
        pytest.approx(expected)
    )


def test_scaled_lr_unknown_rule():
    with pytest.raises(ValueError, match="sqrt"):
        scaled_lr(optim_config("sgd", lr_scaling="cubic"), 256)


def test_unknown_optimizer_lists_valid_names():
    with pytest.raises(ValueError, match="lars"):
        make_optimizer(optim_config("adam"), 0.1)


def plain_sgd(**overrides):
    """SGD without momentum or decay: the update is exactly -lr * g."""
    return optim_config("sgd", momentum=0.0, weight_decay=0.0, **overrides)


def ones_like_params():
    return jax.tree.map(lambda p: jnp.ones_like(p, jnp.float32), toy_params())


def test_param_labels_follow_rule_order():
    cfg = optim_config(
        "sgd", frozen_params=("^bn/",), delayed_params=("bias",), constant_lr_params=("dense",)
    )
    assert param_labels(cfg)(toy_params()) == {
        "dense": {"kernel": "constant", "bias": "delayed"},
        "bn": {"scale": "frozen", "bias": "frozen"},
    }


def test_constant_lr_params_ignore_the_schedule():
    cfg = plain_sgd(constant_lr_params=("^dense/kernel$",))
    opt = make_optimizer(cfg, lambda count: 0.1 / (count + 1), peak_lr=0.5)
    params, grads = ones_like_params(), ones_like_params()
    state = opt.init(params)
    for step in range(3):
        updates, state = opt.update(grads, state, params)
        np.testing.assert_allclose(updates["dense"]["kernel"], -0.5)  # peak lr, every step
        np.testing.assert_allclose(updates["dense"]["bias"], -0.1 / (step + 1), rtol=1e-6)


def test_frozen_params_never_move_and_hold_no_state():
    cfg = optim_config("adamw", weight_decay=0.1, frozen_params=("^bn/",))
    opt = make_optimizer(cfg, 0.01)
    params = ones_like_params()
    state = opt.init(params)
    updates, _ = opt.update(ones_like_params(), state, params)
    np.testing.assert_array_equal(updates["bn"]["scale"], 0.0)
    np.testing.assert_array_equal(updates["bn"]["bias"], 0.0)
    assert np.all(np.asarray(updates["dense"]["kernel"]) != 0.0)
    sizes = sum(np.size(x) for x in jax.tree.leaves(state))
    moments = 2 * sum(np.size(x) for x in jax.tree.leaves(toy_params()["dense"]))
    assert sizes < moments + 10  # Adam moments only for the dense leaves, plus counts


def test_delayed_params_start_like_fresh_pytorch_params_after_the_delay():
    delay, lrs = 2, [0.1, 0.2, 0.3, 0.4]
    cfg = optim_config("adamw", weight_decay=0.5, delayed_params=("^dense/kernel$",))
    schedule = lambda count: jnp.asarray(lrs)[count]
    opt = make_optimizer(cfg, schedule, delay_steps=delay)
    params = ones_like_params()
    state = opt.init(params)
    kernels = []
    for step in range(4):
        grads = jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), toy_grads(step))
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        kernels.append(np.asarray(params["dense"]["kernel"]))
    np.testing.assert_array_equal(kernels[0], 1.0)  # frozen: no Adam step, no decay
    np.testing.assert_array_equal(kernels[1], 1.0)
    # Step 2 is the parameter's first AdamW step (bias correction t=1: m/v-hat = g, g^2,
    # so the Adam direction is g/|g|) at the global lr of step 2, decay on the weights.
    g = toy_grads(2)["dense"]["kernel"]
    expected = 1.0 - lrs[2] * (g / (np.abs(g) + 1e-8) + 0.5 * 1.0)
    np.testing.assert_allclose(kernels[2], expected, rtol=1e-5)
    assert not np.allclose(kernels[3], kernels[2])


def test_clip_grad_per_param_clips_each_tensor_to_its_own_norm():
    cfg = plain_sgd(clip_grad_per_param=1.0)
    opt = make_optimizer(cfg, 1.0)
    grads = toy_grads(0)
    updates, _ = opt.update(
        jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), grads),
        opt.init(toy_params()),
        toy_params(),
    )
    for path in (("dense", "kernel"), ("dense", "bias"), ("bn", "scale")):
        g = grads[path[0]][path[1]]
        norm = np.linalg.norm(g)
        expected = g / (norm + 1e-6) if norm > 1.0 else g
        np.testing.assert_allclose(-updates[path[0]][path[1]], expected, rtol=1e-5)


def test_weight_decay_end_is_a_cosine_from_start_to_end():
    cfg = optim_config("adamw", weight_decay=0.04, weight_decay_end=0.4)
    opt = make_optimizer(cfg, 1.0, total_steps=4)
    params = ones_like_params()
    zeros = jax.tree.map(jnp.zeros_like, params)
    state = opt.init(params)
    decays = []
    for _ in range(5):
        updates, state = opt.update(zeros, state, params)
        decays.append(-float(updates["dense"]["kernel"][0, 0]))  # lr 1 x wd(t) x w=1
    np.testing.assert_allclose(decays[0], 0.04, rtol=1e-6)
    np.testing.assert_allclose(decays[2], 0.22, rtol=1e-6)
    np.testing.assert_allclose(decays[4], 0.4, rtol=1e-6)


# --- MAE's layer-wise lr decay and no_weight_decay_list (util/lr_decay.py) ---------------


def vit_like_params():
    """The parameter names of a 2-block ViT backbone (see ssl_jax/models/vit.py) + a head."""
    rng = np.random.default_rng(3)
    leaf = lambda *shape: rng.normal(size=shape).astype(np.float32)
    block = lambda: {"attn": {"qkv": {"kernel": leaf(4, 12), "bias": leaf(12)}}}
    return {
        "backbone": {
            "cls_token": leaf(1, 4),
            "pos_embed": leaf(5, 4),
            "patch_embed": {"kernel": leaf(2, 2, 3, 4), "bias": leaf(4)},
            "blocks_0": block(),
            "blocks_1": block(),
            "norm": {"scale": leaf(4), "bias": leaf(4)},
        },
        "head": {"fc": {"kernel": leaf(4, 3), "bias": leaf(3)}},
    }


def test_layer_decay_multipliers_follow_mae_layer_ids():
    # L = 2 blocks, decay 0.5: decay ** (L + 1 - layer_id) with ids 0 (embeddings),
    # i + 1 (block i), L + 1 (final norm, head), as MAE's get_layer_id_for_vit.
    scales = layer_decay_scales(vit_like_params(), 0.5)
    b = scales["backbone"]
    assert b["cls_token"] == b["pos_embed"] == 0.125
    assert b["patch_embed"] == {"kernel": 0.125, "bias": 0.125}
    assert b["blocks_0"]["attn"]["qkv"] == {"kernel": 0.25, "bias": 0.25}
    assert b["blocks_1"]["attn"]["qkv"] == {"kernel": 0.5, "bias": 0.5}
    assert b["norm"] == {"scale": 1.0, "bias": 1.0}
    assert scales["head"]["fc"] == {"kernel": 1.0, "bias": 1.0}


def test_layer_decay_of_a_12_block_vit_matches_mae_values():
    # MAE ViT-B, layer_decay 0.65: block 0 gets 0.65 ** 12, block 11 gets 0.65, the
    # embeddings 0.65 ** 13 (lr_decay.py: layer_scales[i] = decay ** (num_layers - i)).
    params = {"backbone": {f"blocks_{i}": {"w": np.zeros((2, 2))} for i in range(12)}}
    params["backbone"]["cls_token"] = np.zeros((1, 2))
    scales = layer_decay_scales(params, 0.65)["backbone"]
    np.testing.assert_allclose(scales["blocks_0"]["w"], 0.65**12)
    np.testing.assert_allclose(scales["blocks_11"]["w"], 0.65)
    np.testing.assert_allclose(scales["cls_token"], 0.65**13)


def test_layer_decay_scales_adamw_update_including_weight_decay():
    """Two steps of AdamW with and without layer decay: each leaf's update is its
    multiplier times the undecayed one, weight-decay term included (PyTorch lr_scale)."""
    params = jax.tree.map(jnp.asarray, vit_like_params())
    rng = np.random.default_rng(4)
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)]
    grads.append(jax.tree.map(lambda g: 0.5 * g, grads[0]))

    def updates(layer_decay):
        cfg = optim_config("adamw", weight_decay=0.05, layer_decay=layer_decay)
        opt = make_optimizer(cfg, lambda count: jnp.asarray(LRS)[count])
        state, out = opt.init(params), []
        for g in grads:  # at fixed params, so both runs decay the same weights
            u, state = opt.update(g, state, params)
            out.append(u)
        return out

    plain, decayed = updates(1.0), updates(0.5)
    scales = layer_decay_scales(params, 0.5)
    for u0, u1 in zip(plain, decayed, strict=True):
        jax.tree.map(
            lambda a, b, s: np.testing.assert_allclose(b, s * a, rtol=1e-5, atol=1e-9),
            u0,
            u1,
            scales,
        )
    # The weight-decay part alone (zero gradient): -lr * scale * wd * w on a decayed leaf.
    cfg = optim_config("adamw", weight_decay=0.05, layer_decay=0.5)
    opt = make_optimizer(cfg, lambda count: jnp.asarray(LRS)[count])
    zero = jax.tree.map(jnp.zeros_like, params)
    u, _ = opt.update(zero, opt.init(params), params)
    w = params["backbone"]["blocks_0"]["attn"]["qkv"]["kernel"]
    np.testing.assert_allclose(
        u["backbone"]["blocks_0"]["attn"]["qkv"]["kernel"], -LRS[0] * 0.25 * 0.05 * w, rtol=1e-5
    )


def test_layer_decay_needs_a_vit():
    opt = make_optimizer(optim_config("adamw", layer_decay=0.5), 0.1)
    params = jax.tree.map(jnp.asarray, toy_params())
    with pytest.raises(ValueError, match="needs a ViT backbone"):
        opt.update(params, opt.init(params), params)


def test_no_decay_params_exempt_matching_leaves_from_adamw_decay():
    # MAE fine-tuning: no weight decay on cls_token / pos_embed besides 1-D params.
    params = jax.tree.map(jnp.asarray, vit_like_params())
    zero = jax.tree.map(jnp.zeros_like, params)
    cfg = optim_config("adamw", weight_decay=0.05, no_decay_params=("cls_token", "pos_embed"))
    opt = make_optimizer(cfg, 0.1)
    u, _ = opt.update(zero, opt.init(params), params)
    b = u["backbone"]
    assert not np.any(b["cls_token"]) and not np.any(b["pos_embed"])
    assert not np.any(b["norm"]["scale"])  # 1-D: the rank rule still holds
    np.testing.assert_allclose(
        b["patch_embed"]["kernel"],
        -0.1 * 0.05 * params["backbone"]["patch_embed"]["kernel"],
        rtol=1e-5,
    )
