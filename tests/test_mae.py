"""MAE: patchify order and inverse, per-sample random masking, the masked-patch loss with
norm_pix_loss against NumPy (unbiased variance), the encoder's cost on visible tokens,
gradients, the backbone's loadable parameter tree, config validation, presets, smoke run."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest
from helpers import load_config

from ssl_jax import losses, train
from ssl_jax.evaluate import reconstruct
from ssl_jax.methods import mae
from ssl_jax.models import mae as mae_model
from ssl_jax.models.vit import ViT
from ssl_jax.state import TrainState

P = 4  # patch size
S = 16  # image size: 4 x 4 = 16 patches


class Setup(NamedTuple):
    config: Any
    model: Any
    state: TrainState
    batch: dict
    loss_fn: Any  # jitted (params, state, batch, rng) -> (loss, aux)


@pytest.fixture(scope="module")
def setup():
    config = load_config("mae", "smoke")
    model = mae.make_model(config)
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, S, S, 3)), train=False))(
        jax.random.key(0)
    )
    params = variables["params"]
    state = TrainState(jnp.zeros((), jnp.int32), params, {}, None, {})
    views = jax.random.normal(jax.random.key(1), (8, 1, S, S, 3))
    batch = dict(views=views, label=jnp.zeros((8,), jnp.int32))
    loss_fn = jax.jit(
        lambda params, state, batch, rng: mae.loss_fn(
            params, state, batch, rng, model=model, config=config
        )
    )
    return Setup(config, model, state, batch, loss_fn)


# ------------------------------------------------------------------ NumPy references


def _np_patchify(imgs_nhwc, p):
    """models_mae.patchify on NCHW: reshape(N, 3, h, p, w, p), einsum nchpwq->nhwpqc."""
    x = imgs_nhwc.transpose(0, 3, 1, 2)  # NCHW as the reference
    n, c, hh, ww = x.shape
    h, w = hh // p, ww // p
    x = x.reshape(n, c, h, p, w, p)
    x = np.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, h * w, p * p * c)


def _np_masking(noise, ratio):
    """models_mae.random_masking's index and mask bookkeeping."""
    b, n = noise.shape
    keep = int(n * (1 - ratio))
    ids_shuffle = np.argsort(noise, axis=1, kind="stable")
    ids_restore = np.argsort(ids_shuffle, axis=1, kind="stable")
    mask = np.ones((b, n))
    mask[:, :keep] = 0
    mask = np.take_along_axis(mask, ids_restore, axis=1)
    return ids_shuffle[:, :keep], mask, ids_restore


def _np_loss(pred, imgs, mask, p, norm_pix):
    """models_mae.forward_loss in float64; torch.var's default is unbiased (ddof=1)."""
    target = _np_patchify(imgs.astype(np.float64), p)
    if norm_pix:
        mean = target.mean(-1, keepdims=True)
        var = target.var(-1, keepdims=True, ddof=1)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(-1)
    return (loss * mask).sum() / mask.sum()


# ------------------------------------------------------------------ patches and masking


def test_patchify_matches_the_reference_order_and_unpatchify_inverts_it():
    x = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype(np.float32)
    patches = mae_model.patchify(x, 4)
    np.testing.assert_array_equal(patches, _np_patchify(x, 4))
    assert patches.shape == (2, 6, 48)
    np.testing.assert_array_equal(mae_model.unpatchify(patches, 4, grid=(2, 3)), x)
    square = x[:, :8, :8]
    np.testing.assert_array_equal(mae_model.unpatchify(mae_model.patchify(square, 4), 4), square)


def test_random_masking_matches_the_reference_bookkeeping():
    noise = jax.random.uniform(jax.random.key(3), (5, 16))
    ids_keep, mask, ids_restore = mae_model.random_masking(noise, 0.75)
    np_keep, np_mask, np_restore = _np_masking(np.asarray(noise), 0.75)
    np.testing.assert_array_equal(ids_keep, np_keep)
    np.testing.assert_array_equal(mask, np_mask)
    np.testing.assert_array_equal(ids_restore, np_restore)
    assert ids_keep.shape == (5, 4)  # (1 - r) N kept per sample
    np.testing.assert_array_equal(np.asarray(mask).sum(1), 12.0)  # r N removed
    # Different patches per sample; each sample's kept ids are distinct and unmasked.
    assert len({tuple(sorted(row)) for row in np.asarray(ids_keep).tolist()}) == 5
    for row_keep, row_mask in zip(np.asarray(ids_keep), np.asarray(mask), strict=True):
        assert len(set(row_keep)) == 4 and np.all(row_mask[row_keep] == 0)
    # ids_restore undoes the shuffle: shuffled[ids_restore] is the original order.
    order = np.arange(16)[None].repeat(5, 0)
    shuffled = np.take_along_axis(order, np.argsort(np.asarray(noise), axis=1), axis=1)
    np.testing.assert_array_equal(np.take_along_axis(shuffled, np.asarray(ids_restore), 1), order)


def test_model_masks_per_sample_from_the_masking_rng(setup):
    config, model, state, batch, _ = setup
    x = batch["views"][:, 0]
    apply = jax.jit(lambda k: model.apply({"params": state.params}, x, False, rngs={"masking": k}))
    out1, out2 = apply(jax.random.key(1)), apply(jax.random.key(2))
    assert out1["pred"].shape == (8, 16, P * P * 3) and out1["pred"].dtype == jnp.float32
    assert out1["latent"].shape == (8, 1 + 4, 32)
    np.testing.assert_array_equal(np.asarray(out1["mask"]).sum(1), 12.0)
    assert not np.array_equal(out1["mask"], out2["mask"])
    assert len({tuple(m) for m in np.asarray(out1["mask"]).tolist()}) > 1
    # The same noise given explicitly reproduces the rng's draw.
    noise = jax.random.uniform(jax.random.key(9), (8, 16))
    _, mask, _ = mae_model.random_masking(noise, config.mae.mask_ratio)
    out = jax.jit(lambda p: model.apply({"params": p}, x, False, noise=noise))(state.params)
    np.testing.assert_array_equal(out["mask"], mask)
    with pytest.raises(ValueError, match="masking"):
        model.apply({"params": state.params}, x, False)


# ------------------------------------------------------------------ loss


def test_norm_pix_loss_matches_numpy_with_unbiased_variance():
    rng = np.random.default_rng(0)
    imgs = rng.normal(size=(3, S, S, 3)).astype(np.float32)
    pred = rng.normal(size=(3, 16, P * P * 3)).astype(np.float32)
    _, mask, _ = _np_masking(rng.uniform(size=(3, 16)), 0.75)
    target = losses.normalize_patches(mae_model.patchify(imgs, P))
    got = losses.masked_patch_mse(pred, target, mask)
    np.testing.assert_allclose(float(got), _np_loss(pred, imgs, mask, P, True), rtol=1e-5)
    # The unbiased normalisation gives each target patch an unbiased std of ~1.
    np.testing.assert_allclose(np.asarray(target).std(-1, ddof=1), 1.0, rtol=1e-4)
    raw = losses.masked_patch_mse(pred, mae_model.patchify(imgs, P), mask)
    np.testing.assert_allclose(float(raw), _np_loss(pred, imgs, mask, P, False), rtol=1e-5)


def test_loss_ignores_the_visible_patches():
    rng = np.random.default_rng(1)
    imgs = rng.normal(size=(2, S, S, 3)).astype(np.float32)
    pred = rng.normal(size=(2, 16, P * P * 3)).astype(np.float32)
    _, mask, _ = _np_masking(rng.uniform(size=(2, 16)), 0.75)
    pixel_mask = np.asarray(mae_model.unpatchify(np.repeat(mask[..., None], 48, -1), P))
    changed = np.where(pixel_mask > 0.5, imgs, imgs + rng.normal(size=imgs.shape) * 3.0)

    def loss(x):
        return float(
            losses.masked_patch_mse(pred, losses.normalize_patches(mae_model.patchify(x, P)), mask)
        )

    np.testing.assert_allclose(loss(changed), loss(imgs), rtol=1e-6)
    hidden = np.where(pixel_mask > 0.5, imgs + 1.0 + imgs**2, imgs)
    assert not np.isclose(loss(hidden), loss(imgs))


def test_loss_fn_is_the_numpy_loss_of_the_models_prediction(setup):
    config, model, state, batch, loss_fn = setup
    rng = jax.random.key(5)
    loss, aux = loss_fn(state.params, state, batch, rng)
    rng_mask, rng_drop = jax.random.split(rng)
    x = batch["views"][:, 0]
    out = jax.jit(
        lambda p: model.apply(
            {"params": p}, x, True, rngs={"masking": rng_mask, "dropout": rng_drop}
        )
    )(state.params)
    pred, mask = np.asarray(out["pred"], np.float64), np.asarray(out["mask"])
    expected = _np_loss(pred, np.asarray(x), mask, P, norm_pix=True)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert aux["embeddings"].shape == (8, 32)
    np.testing.assert_allclose(np.linalg.norm(aux["embeddings"], axis=1), 1.0, rtol=1e-5)
    metrics = aux["metrics"]
    assert set(metrics) == {"mse_pixels", "loss_visible"}
    # The pixel-space MSE un-normalises with each target patch's mean and unbiased std.
    target = _np_patchify(np.asarray(x, np.float64), P)
    mean = target.mean(-1, keepdims=True)
    std = np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
    pixels = pred * std + mean
    mse = (((pixels - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    np.testing.assert_allclose(float(metrics["mse_pixels"]), mse, rtol=1e-4)
    assert mae.update_extra({}, params=state.params, aux=aux, step=0, config=config) == {}


def test_gradient_reaches_encoder_decoder_and_mask_token(setup):
    _, _, state, batch, loss_fn = setup
    grads = jax.jit(jax.grad(lambda p: loss_fn(p, state, batch, jax.random.key(0))[0]))(
        state.params
    )
    for path in [
        ("backbone", "patch_embed", "kernel"),
        ("backbone", "cls_token"),
        ("backbone", "blocks_0", "attn", "qkv", "kernel"),
        ("decoder_embed", "kernel"),
        ("decoder_blocks_0", "mlp", "fc1", "kernel"),
        ("decoder_pred", "kernel"),
        ("mask_token",),
    ]:
        leaf = grads
        for k in path:
            leaf = leaf[k]
        assert float(jnp.abs(leaf).sum()) > 0, path


def test_mask_token_gets_no_gradient_without_masking(setup):
    _, model, state, batch, _ = setup
    x = batch["views"][:, 0]

    def total(params, ratio):
        out = model.apply({"params": params}, x, False, mask_ratio=ratio, rngs={"masking": k})
        return jnp.sum(out["pred"] ** 2)

    k = jax.random.key(0)
    g0 = jax.jit(jax.grad(total), static_argnums=1)(state.params, 0.0)
    np.testing.assert_array_equal(g0["mask_token"], 0.0)
    assert float(jnp.abs(g0["decoder_embed"]["kernel"]).sum()) > 0
    # (with r = 0.75 it does get a gradient: test_gradient_reaches_...)


# ------------------------------------------------------------------ encoder


def _flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0]
    return float(cost["flops"])


def test_encoder_on_visible_tokens_costs_about_a_quarter():
    # 64 tokens of width 128: the MLP and projections dominate attention and the class
    # token, so the cost is ~linear in the token count (17 vs 65 tokens).
    vit = ViT(width=128, depth=2, heads=2, patch_size=4, image_size=32)
    x = jnp.zeros((2, 32, 32, 3))
    params = jax.jit(lambda k: vit.init(k, x, train=False))(jax.random.key(0))
    keep = mae_model.random_masking(jax.random.uniform(jax.random.key(1), (2, 64)), 0.75)[0]
    every = jnp.broadcast_to(jnp.arange(64), (2, 64))

    def encode(p, x, ids):
        return vit.apply(p, x, ids, method=ViT.encode_visible)

    ratio = _flops(encode, params, x, keep) / _flops(encode, params, x, every)
    assert 0.2 < ratio < 0.32, ratio


def test_encode_visible_with_every_patch_is_the_full_encoder():
    vit = ViT(width=32, depth=2, heads=2, patch_size=4, image_size=S)
    x = jax.random.normal(jax.random.key(0), (2, S, S, 3))
    params = jax.jit(lambda k: vit.init(k, x, train=False))(jax.random.key(1))
    tokens = jax.jit(lambda p: vit.apply(p, x, method=ViT.tokens))(params)
    encode = jax.jit(lambda p, ids: vit.apply(p, x, ids, method=ViT.encode_visible))
    enc = encode(params, jnp.broadcast_to(jnp.arange(16), (2, 16)))
    np.testing.assert_allclose(enc[:, 0], tokens["cls"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(enc[:, 1:], tokens["patch_tokens"], rtol=1e-5, atol=1e-5)
    # A subset gathers its own tokens (the attention differs, so compare shapes and order).
    some = jnp.asarray([[3, 0], [15, 7]])
    assert jax.eval_shape(encode, params, some).shape == (2, 3, 32)


def test_backbone_params_are_a_plain_vits_and_embed_is_its_features(setup):
    config, model, state, batch, _ = setup
    vit = model.backbone
    plain = jax.eval_shape(lambda: vit.init(jax.random.key(0), jnp.zeros((1, S, S, 3)), False))
    shapes = lambda t: jax.tree.map(lambda a: a.shape, t)  # noqa: E731
    assert shapes(state.params["backbone"]) == shapes(plain["params"])
    x = batch["views"][:, 0]
    feats = jax.jit(lambda p: model.apply({"params": p}, x, train=False, method="embed"))(
        state.params
    )
    expected = jax.jit(lambda p: vit.apply({"params": p}, x, train=False))(state.params["backbone"])
    np.testing.assert_allclose(feats, expected, rtol=1e-6)
    assert feats.shape == (8, 32) and feats.dtype == jnp.float32


def test_init_creates_every_param_with_the_reference_init(setup):
    _, _, state, _, _ = setup
    params = state.params
    assert set(params) == {
        "backbone",
        "decoder_embed",
        "mask_token",
        "decoder_blocks_0",
        "decoder_norm",
        "decoder_pred",
    }
    assert params["mask_token"].shape == (1, 16)
    assert params["decoder_pred"]["kernel"].shape == (16, P * P * 3)
    np.testing.assert_array_equal(params["decoder_pred"]["bias"], 0.0)
    np.testing.assert_array_equal(params["decoder_norm"]["scale"], 1.0)
    # mask token ~ N(0, 0.02^2), seen on a long draw of the same initializer
    token = mae_model.mask_token_init(jax.random.key(0), (1, 4096))
    assert abs(float(token.std()) - 0.02) < 0.002
    limit = np.sqrt(6 / (32 + 16))  # xavier-uniform decoder_embed, D=32 -> Dd=16
    kernel = np.asarray(params["decoder_embed"]["kernel"])
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.5 * limit


# ------------------------------------------------------------------ configs


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(mae__mask_ratio=1.0), "mask_ratio=1.0"),
        (dict(mae__mask_ratio=0.0), "keeps 16 of the 16"),
        (dict(model__backbone="resnet_tiny"), "resnet_tiny"),
        (dict(model__vit__patch_size=5), "patch_size=5"),
        (dict(mae__decoder_width=18), "decoder_width=18"),
    ],
)
def test_validate_names_the_offending_value(overrides, match):
    config = load_config("mae", "smoke", **overrides)
    with pytest.raises(ValueError, match=match):
        mae.validate(config)


def test_imagenet_presets_follow_pretrain_md():
    for preset, backbone in [
        ("imagenet_vit_base", "vit_base"),
        ("imagenet_vit_large", "vit_large"),
    ]:
        c = load_config("mae", preset)
        mae.validate(c)
        assert c.model.backbone == backbone and c.model.vit.patch_size == 16
        assert c.model.vit.pos_embed == "sincos"
        assert (c.mae.mask_ratio, c.mae.norm_pix_loss) == (0.75, True)
        assert (c.mae.decoder_width, c.mae.decoder_depth, c.mae.decoder_heads) == (512, 8, 16)
        assert c.input.global_batch_size == 4096 and c.input.image_size == 224
        assert (c.optim.name, c.optim.b1, c.optim.b2) == ("adamw", 0.9, 0.95)
        assert (c.optim.lr, c.optim.lr_scaling, c.optim.weight_decay) == (1.5e-4, "linear", 0.05)
        assert (c.schedule.epochs, c.schedule.warmup_epochs) == (800.0, 40.0)
        assert list(c.input.views) == ["view1"]
        v = c.input.views.view1
        assert tuple(v.crop_scale) == (0.2, 1.0) and v.flip_p == 0.5 and v.jitter_p == 0.0


def test_digits_and_cifar_presets():
    c = load_config("mae", "digits")
    mae.validate(c)
    assert (c.model.backbone, c.model.vit.patch_size, c.input.image_size) == ("vit_tiny", 4, 16)
    assert list(c.input.views) == ["view1"]
    c = load_config("mae", "cifar10")
    mae.validate(c)
    assert (c.model.backbone, c.model.vit.patch_size, c.input.image_size) == ("vit_tiny", 4, 32)


@pytest.mark.slow
def test_smoke_pretrains_reconstructs_and_linear_probes_end_to_end(tmp_path):
    """The MAE path a user takes: pretrain, draw the reconstruction grid of the checkpoint
    (`ssl-jax reconstruct`), then train the MAE linear probe on the pretrained encoder."""
    overrides = dict(evals__knn_every_steps=0, evals__random_init_baseline=False)
    config = load_config("mae", "smoke", **overrides)
    workdir = str(tmp_path / "run")
    report = train.pretrain(config, workdir)
    assert report["steps"] == 4
    assert np.isfinite(report["pretrained"]["knn_top1"])

    path = reconstruct.reconstruct_workdir(config, workdir, num_images=3)
    grid = matplotlib.image.imread(path)
    # The labelled figure: 16-px images drawn at 6x (96 px) or more, plus labels and title.
    assert grid.shape[0] >= 3 * 96 and grid.shape[1] >= 4 * 96

    probe = load_config("supervised", "smoke_linear", supervised__init_from=workdir, **overrides)
    report = train.pretrain(probe, str(tmp_path / "linear"))
    assert report["protocol"]["top1"] == "linear probe (MAE protocol) top-1"
    assert 0.0 <= report["pretrained"]["top1"] <= 100.0
