"""On-device photometric augmentation (input.augment_on_device): each op against the TF op,
the distribution against the host path, determinism, device-count independence, a smoke
run, config errors."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from helpers import load_config

from ssl_jax import parallel, train
from ssl_jax.data import augment as aug
from ssl_jax.data import device_augment as da
from ssl_jax.data import pipeline, recipes

IDENTITY = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0)
# Every photometric op with a probability strictly inside (0, 1), and a large hue range.
ALL_OPS = dict(
    jitter_p=0.8,
    brightness=0.4,
    contrast=0.4,
    saturation=0.4,
    hue=0.4,
    grayscale_p=0.2,
    blur_p=0.5,
    solarize_p=0.2,
)


def _image(size: int = 32, seed: int = 0) -> np.ndarray:
    """A uint8 image with smooth colour gradients and noise (hue, blur and contrast all act)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([xx, yy, 1 - xx * yy], -1) * rng.uniform(0.5, 1.0, 3)
    noisy = base + rng.normal(0, 0.15, base.shape)
    return np.clip(np.round(noisy * 255), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- (b) ops


def _tf_jitter_draws(seed: tf.Tensor, cfg) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The factors, hue delta and order that ``augment.color_jitter`` draws from ``seed``."""
    seeds = tf.random.experimental.stateless_split(seed, 5)
    ops = [n for n in da.JITTER_OPS if cfg[n] > 0]
    values = []
    for i, name in enumerate(da.JITTER_OPS):
        if cfg[name] > 0:
            s = cfg[name]
            lo, hi = (-s, s) if name == "hue" else (max(0.0, 1.0 - s), 1.0 + s)
            values.append(float(tf.random.stateless_uniform([], seeds[i], lo, hi)))
    order = tf.argsort(tf.random.stateless_uniform([len(ops)], seeds[4], 0.0, 1.0))
    return ops, np.array(values, np.float32), order.numpy()


@pytest.mark.parametrize("name", da.JITTER_OPS)
def test_each_jitter_op_matches_tf(name):
    x = _image().astype(np.float32) / 255.0
    cfg = {n: (0.4 if n == name else 0.0) for n in da.JITTER_OPS}
    for s in range(3):
        seed = tf.constant([s, 7], tf.int64)
        want = aug.color_jitter(tf.constant(x), seed, **cfg).numpy()
        ops, values, order = _tf_jitter_draws(seed, cfg)
        got = da.jitter_in_order(jnp.asarray(x), ops, jnp.asarray(values), jnp.asarray(order))
        np.testing.assert_allclose(np.asarray(got), want, atol=2e-6)


def test_jitter_in_a_random_order_matches_tf():
    x = _image(seed=1).astype(np.float32) / 255.0
    cfg = dict(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2)  # SimCLR s = 1
    orders = set()
    for s in range(12):
        seed = tf.constant([s, 3], tf.int64)
        want = aug.color_jitter(tf.constant(x), seed, **cfg).numpy()
        ops, values, order = _tf_jitter_draws(seed, cfg)
        orders.add(tuple(order))
        got = da.jitter_in_order(jnp.asarray(x), ops, jnp.asarray(values), jnp.asarray(order))
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, err_msg=str(order))
    assert len(orders) >= 6  # the order matters: the test covered many


def test_grayscale_blur_solarize_match_tf():
    x = _image(seed=2).astype(np.float32) / 255.0
    xt, xj = tf.constant(x), jnp.asarray(x)
    np.testing.assert_allclose(da.to_grayscale(xj), aug.to_grayscale(xt).numpy(), atol=1e-6)
    np.testing.assert_array_equal(da.solarize(xj), aug.solarize(xt).numpy())
    for sigma, radius in [(0.1, 1), (0.7, 3), (2.0, 5)]:
        want = aug.gaussian_blur(xt, tf.constant(sigma), radius).numpy()
        np.testing.assert_allclose(da.gaussian_blur(xj, sigma, radius), want, atol=1e-6)


# ----------------------------------------------------------------------------- (a) statistics

N_SAMPLES = 2000  # per path; 20 px images keep a 3-tap blur (blur_radius(20) = 1)
ALPHA = 1e-3  # per feature; the seeds are fixed, so a pass or a failure is reproducible
# Two-sample Kolmogorov-Smirnov critical value for n = m = N_SAMPLES at level ALPHA.
KS_CRIT = np.sqrt(-np.log(ALPHA / 2) / 2) * np.sqrt(2 / N_SAMPLES)  # 0.062
Z = 3.3  # the two-sided normal quantile of ALPHA


def _host_samples(image: np.ndarray, cfg) -> np.ndarray:
    """``N_SAMPLES`` host-path augmentations (crop = whole image, no flip)."""
    size = image.shape[0]
    fn = tf.function(lambda s: aug.augment(tf.constant(image), s, cfg, size), autograph=False)
    seeds = tf.data.Dataset.range(N_SAMPLES).map(lambda i: tf.stack([i, tf.constant(99, tf.int64)]))
    ds = seeds.map(fn, num_parallel_calls=tf.data.AUTOTUNE).batch(N_SAMPLES)
    return next(iter(ds)).numpy()


@jax.jit
def _device_samples(image: jax.Array, key: jax.Array) -> jax.Array:
    cfg = recipes.recipe("moco_v2", **IDENTITY, **ALL_OPS)
    keys = jax.random.split(key, N_SAMPLES)
    x = image.astype(jnp.float32) / 255.0
    return jax.vmap(lambda k: da.photometric(x, k, cfg))(keys)


def _features(x: np.ndarray) -> dict[str, np.ndarray]:
    """Scalar statistics of each augmented image ``[N, S, S, 3]``: colour (channel means and
    stds), brightness and contrast (luma mean, std), saturation (chroma), blur (edge
    energy), solarize (fraction above 0.5). Rounded to 1e-5: images no op touched are atoms
    of the distribution, and float noise (~1e-7) between the paths must not split them."""
    n = x.shape[0]
    flat = x.reshape(n, -1, 3)
    luma = flat @ np.array([0.2989, 0.5870, 0.1140])
    edges = np.abs(np.diff(x, axis=1)).mean((1, 2, 3)) + np.abs(np.diff(x, axis=2)).mean((1, 2, 3))
    feats = {f"mean{c}": flat[..., c].mean(1) for c in range(3)}
    feats.update({f"std{c}": flat[..., c].std(1) for c in range(3)})
    feats.update(
        luma_mean=luma.mean(1),
        luma_std=luma.std(1),
        chroma=np.ptp(flat, axis=-1).mean(1),
        edges=edges,
        above_half=(flat > 0.5).mean((1, 2)),
    )
    return {k: np.round(v, 5) for k, v in feats.items()}


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic sup |F_a - F_b|."""
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def _fraction_gap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """``(|p_a - p_b|, its standard error)`` for two boolean samples."""
    pa, pb = a.mean(), b.mean()
    return abs(pa - pb), np.sqrt(pa * (1 - pa) / len(a) + pb * (1 - pb) / len(b))


def test_distribution_matches_the_host_path():
    """Each statistic's distribution (KS test) and the grayscale / solarized fractions agree
    at level ALPHA. Measured power at this sample size: a 25% error in the hue, brightness
    or blur-sigma range, in jitter_p, blur_p or solarize_p fails it; a 25% error in the
    contrast or saturation range or in grayscale_p may not."""
    cfg = recipes.recipe("moco_v2", **IDENTITY, **ALL_OPS)
    image = _image(20, seed=10)
    host_x = _host_samples(image, cfg)
    dev_x = np.asarray(_device_samples(image, jax.random.key(0)))
    host, dev = _features(host_x), _features(dev_x)
    for name in host:
        assert _ks(host[name], dev[name]) <= KS_CRIT, (name, _ks(host[name], dev[name]))
    # A gray output comes only from the grayscale op (blur and solarize keep it gray); a
    # solarized image has no value above 0.5 (rare otherwise: the other ops brighten less).
    for indicator in (
        lambda x: np.ptp(x, axis=-1).max((1, 2)) < 1e-6,
        lambda x: x.max((1, 2, 3)) <= 0.5,
    ):
        gap, se = _fraction_gap(indicator(host_x), indicator(dev_x))
        assert gap <= Z * se, (gap, se)
    gray = np.ptp(dev_x, axis=-1).max((1, 2)) < 1e-6
    assert abs(gray.mean() - 0.2) <= Z * np.sqrt(0.2 * 0.8 / N_SAMPLES), gray.mean()


# ----------------------------------------------------------------------------- (c) keys


def _uint8_batch(batch: int = 16, views: int = 3, size: int = 20) -> np.ndarray:
    return np.stack(
        [np.stack([_image(size, seed=b * 10 + v) for v in range(views)]) for b in range(batch)]
    )


def _input_cfg(size: int = 20) -> ml_collections.ConfigDict:
    """view1 with its own recipe, view2 and view3 sharing one (two runs of equal recipes)."""
    view1 = recipes.recipe("byol_view1", solarize_p=0.5)
    view2 = recipes.recipe("byol_view2", blur_p=0.5)
    return ml_collections.ConfigDict(
        dict(
            image_size=size,
            mean=(0.4, 0.5, 0.6),
            std=(0.2, 0.25, 0.3),
            views=dict(view1=view1, view2=view2, view3=view2),
            augment_on_device=True,
        )
    )


def _augment_fn(mesh, input_cfg):
    fn = jax.jit(
        lambda views, k: da.augment_batch({"views": views}, k, input_cfg)["views"],
        in_shardings=(parallel.data_sharded(mesh), parallel.replicated(mesh)),
    )

    def run(batch: np.ndarray, key: jax.Array) -> np.ndarray:
        with jax.set_mesh(mesh):
            return np.asarray(fn(parallel.to_global({"v": batch}, mesh)["v"], key))

    return run


@pytest.mark.slow
def test_same_key_same_views_on_any_device_count():
    cfg, batch = _input_cfg(), _uint8_batch()
    batch[:, 2] = batch[:, 1]  # one image in two views of one recipe
    key = da.augment_key(jax.random.fold_in(jax.random.key(0), 5))
    on_one = _augment_fn(parallel.make_mesh(jax.devices()[:1]), cfg)
    on_eight = _augment_fn(parallel.make_mesh(jax.devices()[:8]), cfg)
    one, eight = on_one(batch, key), on_eight(batch, key)
    assert one.dtype == np.float32 and one.shape == batch.shape
    # Per-shard code is vectorised differently (float32 reassociation, ~1e-6 of the 0..1
    # scale, /std here); another key or a shifted row differs by O(1).
    np.testing.assert_allclose(one, eight, atol=1e-5)
    np.testing.assert_array_equal(eight, on_eight(batch, key))
    # An example's views depend on its row, not on the rest of the batch.
    np.testing.assert_allclose(on_one(batch[:8], key), eight[:8], atol=1e-5)
    assert not np.allclose(on_eight(batch, jax.random.key(1)), eight)
    # The same image in two views gets two augmentations (each view folds in its index).
    assert not np.allclose(eight[:, 1], eight[:, 2])


def test_multicrop_views_use_their_recipe_and_their_index_among_all_views():
    # Sizes below 20 px have no blur (blur_radius 0): a small program to compile.
    cfg = _input_cfg(size=12)
    local = recipes.recipe("dino_local", size=8)
    cfg.views = dict(view1=cfg.views.view1, view2=cfg.views.view1, view3=local, view4=local)
    batch = {
        "global_views": jnp.asarray(_uint8_batch(4, 2, 12)),
        "local_views": jnp.asarray(_uint8_batch(4, 2, 8)),
        "label": jnp.arange(4),
    }
    key = jax.random.key(3)
    out = jax.jit(lambda b: da.augment_batch(b, key, cfg))(batch)
    assert out["global_views"].shape == (4, 2, 12, 12, 3)
    assert out["local_views"].shape == (4, 2, 8, 8, 3)
    np.testing.assert_array_equal(out["label"], np.arange(4))
    row, view = 3, 1  # the second local crop of row 3 is view4: index 3 of all views
    x = batch["local_views"][row, view].astype(jnp.float32) / 255.0
    k = jax.random.fold_in(jax.random.fold_in(key, row), 3)
    want = (jax.jit(lambda x: da.photometric(x, k, local))(x) - jnp.array(cfg.mean)) / jnp.array(
        cfg.std
    )
    np.testing.assert_allclose(out["local_views"][row, view], want, atol=1e-5)


def test_host_crops_then_device_equal_host_path_without_colour_ops(tmp_path):
    """With crop and flip only (MAE's recipe), the uint8 crops normalised on device match the
    host's float views up to the uint8 rounding: the same seeds and geometry."""
    images = np.stack([_image(20, seed=s) for s in range(16)])
    path = str(tmp_path / "x.npz")
    np.savez(path, images=images, labels=np.zeros(16, np.int64))
    cfg = load_config("mae").input
    with cfg.unlocked():
        cfg.update(dataset=f"npz:{path}", global_batch_size=8, image_size=16)
        cfg.views = ml_collections.ConfigDict(dict(view1=recipes.recipe("mae")))
    host = next(pipeline.pretrain_iterator(cfg, seed=3, start_step=1))
    with cfg.unlocked():
        cfg.augment_on_device = True
    crops = next(pipeline.pretrain_iterator(cfg, seed=3, start_step=1))
    assert crops["views"].dtype == np.uint8 and crops["views"].shape == host["views"].shape
    out = da.augment_batch({"views": jnp.asarray(crops["views"])}, jax.random.key(0), cfg)
    rounding = 0.5 / 255 / min(cfg.std)
    np.testing.assert_allclose(np.asarray(out["views"]), host["views"], atol=rounding + 1e-5)


# ----------------------------------------------------------------------------- (d), (e)


def test_train_step_augments_on_device(tmp_path):
    """The jitted step with augment_on_device equals the plain step fed
    ``augment_batch(batch, augment_key(fold_in(base_key, step)))``, and its loss is finite."""
    on = load_config("simclr", input__augment_on_device=True)
    off = load_config("simclr")
    mesh = parallel.make_mesh(jax.devices()[:1])  # one device compiles fastest
    setup_on, setup_off = train.build(on, mesh), train.build(off, mesh)
    init_key, base_key = train.keys(on)
    crops = next(pipeline.pretrain_iterator(on.input, seed=on.seed))
    assert crops["views"].dtype == np.uint8
    with jax.set_mesh(mesh):
        state_on, m_on = setup_on.update(
            setup_on.init(init_key), parallel.to_global(crops, mesh), base_key
        )
        state_on, m_on2 = setup_on.update(state_on, parallel.to_global(crops, mesh), base_key)
        key = da.augment_key(jax.random.fold_in(base_key, 0))
        augmented = da.augment_batch(parallel.to_global(crops, mesh), key, on.input)
        _, m_off = setup_off.update(setup_off.init(init_key), augmented, base_key)
    losses = [float(m_on["loss"]), float(m_on2["loss"])]
    assert np.all(np.isfinite(losses)), losses
    np.testing.assert_allclose(losses[0], float(m_off["loss"]), rtol=1e-5)


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="augment_on_device='yes'"):
        da.check_config(ml_collections.ConfigDict(dict(augment_on_device="yes")))
    assert da.check_config(ml_collections.ConfigDict(dict())) is False  # older configs
    batch = {"views": jnp.zeros((2, 4, 20, 20, 3), jnp.uint8)}
    with pytest.raises(ValueError, match=r"has 4 views but input.views gives \['view1', 'view2',"):
        da.augment_batch(batch, jax.random.key(0), _input_cfg())
