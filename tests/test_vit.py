"""ViT backbone: timm parameter counts, shapes, sin-cos / learned position embeddings,
stochastic depth, the frozen patch projection, sown attention and input validation."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.special

from ssl_jax.config_base import base_config
from ssl_jax.models import make_backbone
from ssl_jax.models.encoder import Encoder
from ssl_jax.models.heads import MLPHead
from ssl_jax.models.vit import (
    VITS,
    DropPath,
    ViT,
    interpolate_pos_embed,
    sincos_pos_embed,
)

WIDTH, DEPTH, HEADS = 32, 2, 2  # tiny ViT for everything that runs


def vit_config(backbone="vit_small", **vit) -> ml_collections.ConfigDict:
    model = base_config().model
    model.backbone = backbone
    model.vit.update(vit)
    return model


def tiny(**kwargs) -> ViT:
    return ViT(**{"width": WIDTH, "depth": DEPTH, "heads": HEADS, "patch_size": 8, **kwargs})


def images(size=16, batch=2) -> jnp.ndarray:
    # NumPy noise: a jax.random draw would cost a second of CPU compile on its own.
    return jnp.asarray(np.random.default_rng(0).normal(size=(batch, size, size, 3)), jnp.float32)


@functools.cache
def init_variables(pos_embed: str = "sincos") -> dict:
    """One init per position-embedding kind, shared by the tests: every other
    option (pool, heads, drop_path, frozen, dtype) leaves the parameter shapes unchanged."""
    return tiny(pos_embed=pos_embed, image_size=32).init(jax.random.key(0), images(), train=False)


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def param_shapes(model, size=224):
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)[
        "params"
    ]


@pytest.mark.parametrize(
    "name,expected",
    [("vit_small", 21_665_664), ("vit_base", 85_798_656)],  # timm /16 224 px, num_classes=0
)
def test_param_count_matches_timm_and_sincos_drops_pos_embed(name, expected):
    learned = param_shapes(make_backbone(vit_config(name, pos_embed="learned")))
    sincos = param_shapes(make_backbone(vit_config(name, pos_embed="sincos")))
    width = VITS[name][0]
    assert count(learned) == expected
    assert count(sincos) == expected - (1 + 14 * 14) * width
    assert "pos_embed" not in sincos


def test_learned_pos_embed_grid_follows_image_size():
    params = param_shapes(tiny(pos_embed="learned", image_size=32), size=16)
    assert params["pos_embed"].shape == (1 + 4 * 4, WIDTH)


@pytest.mark.parametrize("pool", ["cls", "gap"])
def test_pooled_output_shape_and_dtype(pool):
    out = tiny(pool=pool).apply(init_variables(), images(), train=False)
    assert out.shape == (2, WIDTH) and out.dtype == jnp.float32


def test_tokens_are_normalised_and_pools_read_them():
    x, variables = images(), init_variables()
    tokens = tiny(pool="gap").apply(variables, x, method=ViT.tokens)
    assert tokens["cls"].shape == (2, WIDTH) and tokens["patch_tokens"].shape == (2, 4, WIDTH)
    # LayerNorm at init (scale 1, bias 0): every token has mean 0 and variance ~1.
    np.testing.assert_allclose(np.mean(tokens["patch_tokens"], -1), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.var(tokens["cls"], -1), 1.0, rtol=1e-3)
    cls_out = tiny(pool="cls").apply(variables, x, train=False)
    np.testing.assert_allclose(cls_out, tokens["cls"], rtol=1e-6, atol=1e-6)


def numpy_layer_norm(x, p, eps=1e-6):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def numpy_vit_tokens(params, x, patch, heads):
    """timm/DINO VisionTransformer forward (conv patch embed, cls, sin-cos pos, pre-norm
    blocks, final norm) transcribed to NumPy in float64; returns [B, 1+N, D]."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x = np.asarray(x, np.float64)
    b, h, w, _ = x.shape
    gh, gw = h // patch, w // patch
    kernel = p["patch_embed"]["kernel"]  # [p, p, C, D], a stride-p conv
    tokens = (
        np.stack(
            [
                np.einsum(
                    "buvc,uvcd->bd",
                    x[:, i * patch : (i + 1) * patch, j * patch : (j + 1) * patch],
                    kernel,
                )
                for i in range(gh)
                for j in range(gw)
            ],
            axis=1,
        )
        + p["patch_embed"]["bias"]
    )  # row-major over the grid, as conv.flatten(2)
    d = tokens.shape[-1]
    cls = np.broadcast_to(p["cls_token"][None], (b, 1, d))
    t = np.concatenate([cls, tokens], 1) + moco_v3_sincos(d, gh, gw)
    for i in range(len([k for k in p if k.startswith("blocks_")])):
        blk = p[f"blocks_{i}"]
        y = numpy_layer_norm(t, blk["norm1"])
        qkv = y @ blk["attn"]["qkv"]["kernel"] + blk["attn"]["qkv"]["bias"]
        qkv = qkv.reshape(b, -1, 3, heads, d // heads).transpose(2, 0, 3, 1, 4)
        attn = qkv[0] @ qkv[1].transpose(0, 1, 3, 2) * (d // heads) ** -0.5
        attn = np.exp(attn - attn.max(-1, keepdims=True))
        attn /= attn.sum(-1, keepdims=True)
        y = (attn @ qkv[2]).transpose(0, 2, 1, 3).reshape(b, -1, d)
        t = t + y @ blk["attn"]["proj"]["kernel"] + blk["attn"]["proj"]["bias"]
        y = (
            numpy_layer_norm(t, blk["norm2"]) @ blk["mlp"]["fc1"]["kernel"]
            + blk["mlp"]["fc1"]["bias"]
        )
        y = 0.5 * y * (1.0 + scipy.special.erf(y / np.sqrt(2.0)))  # nn.GELU()
        t = t + y @ blk["mlp"]["fc2"]["kernel"] + blk["mlp"]["fc2"]["bias"]
    return numpy_layer_norm(t, p["norm"])


def test_tokens_match_numpy_timm_forward():
    # Random (not init) LayerNorm affines and biases so every parameter matters.
    params = init_variables()["params"]
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda a: a + 0.1 * rng.normal(size=a.shape).astype(np.float32), params)
    x = images(16)
    tokens = tiny().apply({"params": params}, x, method=ViT.tokens)
    expected = numpy_vit_tokens(params, x, patch=8, heads=HEADS)
    np.testing.assert_allclose(tokens["cls"], expected[:, 0], atol=1e-4)
    np.testing.assert_allclose(tokens["patch_tokens"], expected[:, 1:], atol=1e-4)


def test_gap_is_final_norm_of_mean_patch_token():
    # MAE's global_pool order: average the patch tokens, then normalise (ours reuses `norm`).
    model, x, variables = tiny(pool="gap"), images(16), init_variables()
    out = model.apply(variables, x, train=False)
    pre_norm = model.bind(variables)._encode(x, False)[:, 1:]  # [B, N, D]
    mean = np.mean(np.asarray(pre_norm), axis=1)
    expected = (mean - mean.mean(-1, keepdims=True)) / np.sqrt(mean.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(out, expected, atol=1e-4)


def moco_v3_sincos(width, h, w, temperature=10000.0):
    """MoCo v3 vits.py build_2d_sincos_position_embedding, transcribed to NumPy."""
    grid_w, grid_h = np.meshgrid(
        np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32), indexing="ij"
    )
    pos_dim = width // 4
    omega = 1.0 / temperature ** (np.arange(pos_dim, dtype=np.float32) / pos_dim)
    out_w = np.einsum("m,d->md", grid_w.flatten(), omega)
    out_h = np.einsum("m,d->md", grid_h.flatten(), omega)
    pos = np.concatenate([np.sin(out_w), np.cos(out_w), np.sin(out_h), np.cos(out_h)], axis=1)
    return np.concatenate([np.zeros((1, width), np.float32), pos], axis=0)


def test_sincos_matches_moco_v3():
    np.testing.assert_allclose(sincos_pos_embed(64, 4, 4), moco_v3_sincos(64, 4, 4), atol=1e-6)


def test_sincos_model_adds_embedding_for_input_grid():
    # With all params zero, the patches, class token and every residual branch are zero,
    # so the tokens before the final norm are exactly the position embedding.
    x = images(16)
    params = jax.tree.map(jnp.zeros_like, init_variables()["params"])
    pre_norm = tiny().bind({"params": params})._encode(x, False)
    expected = sincos_pos_embed(WIDTH, 2, 2)
    np.testing.assert_allclose(pre_norm, np.broadcast_to(expected, (2, 5, WIDTH)), atol=1e-6)


def test_interpolate_pos_embed_identity_on_same_grid():
    pos = jnp.asarray(np.random.default_rng(0).normal(size=(1 + 16, 8)), jnp.float32)
    np.testing.assert_array_equal(interpolate_pos_embed(pos, (4, 4)), pos)


def test_interpolate_pos_embed_new_grid_keeps_class_row():
    pos = jnp.asarray(np.random.default_rng(0).normal(size=(1 + 16, 8)), jnp.float32)
    out = interpolate_pos_embed(pos, (2, 3))
    assert out.shape == (1 + 6, 8)
    np.testing.assert_array_equal(out[0], pos[0])


def test_local_crop_runs_through_model_initialised_larger():
    # DINO: params for the 32-px global grid (4x4), a 16-px local crop uses a 2x2 grid.
    model = tiny(pos_embed="learned", image_size=32)
    tokens = model.apply(init_variables("learned"), images(16), method=ViT.tokens)
    assert tokens["patch_tokens"].shape == (2, 4, WIDTH)


def test_drop_path_identity_in_eval():
    x, variables = images(16), init_variables()
    ref = tiny(drop_path=0.0).apply(variables, x, train=False)
    out = tiny(drop_path=0.5).apply(variables, x, train=False)
    np.testing.assert_array_equal(out, ref)


def test_drop_path_drops_whole_samples_and_keeps_expectation():
    rate, batch = 0.25, 4000
    x = jnp.ones((batch, 3, 2))
    y = DropPath(rate).apply({}, x, True, rngs={"dropout": jax.random.key(0)})
    per_sample = np.asarray(y).reshape(batch, -1)
    assert np.all(per_sample == per_sample[:, :1])  # one decision per sample
    np.testing.assert_allclose(np.unique(per_sample), [0.0, 1.0 / (1 - rate)], rtol=1e-6)
    assert abs(np.mean(per_sample[:, 0] == 0.0) - rate) < 0.03
    assert abs(np.mean(per_sample) - 1.0) < 0.04
    np.testing.assert_array_equal(DropPath(rate).apply({}, x, False), x)


def test_drop_path_rates_linear_in_depth_and_train_changes_output():
    rates = tiny(depth=3, drop_path=0.5).apply(
        init_variables(), method=lambda m: [b.drop_path for b in m.blocks]
    )
    assert rates == [0.0, 0.25, 0.5]
    model, x, variables = tiny(drop_path=0.5), images(), init_variables()
    train = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)})
    same_rng = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)})
    np.testing.assert_array_equal(train, same_rng)
    assert not np.allclose(train, model.apply(variables, x, train=False))


def test_train_without_drop_path_needs_no_rng():
    model, variables = tiny(), init_variables()
    np.testing.assert_array_equal(
        model.apply(variables, images(), train=True), model.apply(variables, images(), train=False)
    )


def test_frozen_patch_embed_gets_zero_gradient():
    x = images()

    def grads(frozen):
        model = tiny(frozen_patch_embed=frozen)
        loss = lambda p: jnp.sum(jnp.square(model.apply({"params": p}, x, train=False)[:, :4]))
        return jax.grad(loss)

    # One compiled program for both models keeps the test cheap on CPU.
    frozen, free = jax.jit(lambda p: (grads(True)(p), grads(False)(p)))(init_variables()["params"])
    abs_sum = lambda tree: sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(tree))
    assert abs_sum(frozen["patch_embed"]) == 0.0
    assert abs_sum(free["patch_embed"]) > 0.0
    rest = {k: v for k, v in frozen.items() if k != "patch_embed"}
    assert all(abs_sum(v) > 0.0 for v in jax.tree.leaves(rest))


def test_last_block_attention_is_sown():
    model, x = tiny(heads=4), images(16)
    _, state = model.apply(init_variables(), x, train=False, mutable=["intermediates"])
    (attention,) = state["intermediates"]["attention"]
    assert attention.shape == (2, 4, 5, 5)
    np.testing.assert_allclose(np.sum(attention, -1), 1.0, rtol=1e-5)


def test_init_follows_moco_v3():
    d, p = WIDTH, 8
    params = init_variables()["params"]
    qkv = np.asarray(params["blocks_0"]["attn"]["qkv"]["kernel"])
    limit = np.sqrt(6.0 / (d + d))  # q, k, v each a D x D xavier-uniform
    assert np.abs(qkv).max() <= limit and np.abs(qkv).max() > 0.95 * limit
    fc1 = np.asarray(params["blocks_0"]["mlp"]["fc1"]["kernel"])  # plain xavier-uniform
    fc1_limit = np.sqrt(6.0 / (d + 4 * d))
    assert np.abs(fc1).max() <= fc1_limit and np.abs(fc1).max() > 0.95 * fc1_limit
    patch = np.asarray(params["patch_embed"]["kernel"])
    patch_limit = np.sqrt(6.0 / (p * p * 3 + d))  # flattened (p*p*3, D)
    assert np.abs(patch).max() <= patch_limit and np.abs(patch).max() > 0.95 * patch_limit
    assert np.abs(np.asarray(params["cls_token"])).max() < 1e-5
    assert not np.any(np.asarray(params["blocks_0"]["attn"]["qkv"]["bias"]))


def test_bfloat16_compute_keeps_float32_params_and_output():
    model = tiny(dtype=jnp.bfloat16)
    variables = jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.key(0), images()
    )
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    apply = jax.jit(functools.partial(model.apply, train=False))
    assert apply(init_variables(), images()).dtype == jnp.float32


def test_bad_patch_size_names_sizes():
    model = tiny(patch_size=5)
    with pytest.raises(ValueError, match=r"32x32.*patch_size=5"):
        model.init(jax.random.key(0), images(32), train=False)


def test_make_backbone_vit_options_and_encoder():
    cfg = vit_config("vit_tiny", patch_size=4, pos_embed="learned", pool="gap", drop_path=0.1)
    model = make_backbone(cfg, image_size=32)
    assert (model.width, model.depth, model.heads, model.patch_size) == (192, 12, 3, 4)
    assert (model.image_size, model.pool, model.drop_path) == (32, "gap", 0.1)
    encoder = Encoder(backbone=tiny(), head=MLPHead(num_layers=1, hidden_dim=8, out_dim=8))
    init = functools.partial(encoder.init, train=False)
    variables = jax.eval_shape(init, jax.random.key(0), images())
    assert set(variables["params"]) == {"backbone", "head"}


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("pos_embed", "rope", r"'rope'.*sincos.*learned"),
        ("pool", "max", r"'max'.*cls.*gap"),
    ],
)
def test_make_backbone_rejects_bad_vit_options(key, value, match):
    with pytest.raises(ValueError, match=match):
        make_backbone(vit_config(**{key: value}))


def test_unknown_backbone_lists_resnets_and_vits():
    with pytest.raises(ValueError, match=r"resnet50.*vit_small"):
        make_backbone(vit_config("vit_giant"))
