"""Augmentations: ranges, determinism, each op's effect, recipes, eval preprocessing, views."""

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from ssl_jax.data import augment as aug
from ssl_jax.data import recipes
from ssl_jax.data import views as views_lib

IDENTITY = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0)


def _cfg(**overrides) -> ml_collections.ConfigDict:
    """moco_cifar with the named keys replaced; IDENTITY keys make the crop the whole image."""
    return recipes.recipe("moco_cifar", **overrides)


def _colour_image(size: int = 16) -> tf.Tensor:
    rng = np.random.default_rng(0)
    return tf.constant(rng.integers(0, 256, [size, size, 3]), tf.uint8)


def _run(image, cfg, seed=(1, 2), size=16) -> np.ndarray:
    return aug.augment(image, tf.constant(seed, tf.int64), cfg, size).numpy()


def test_output_shape_dtype_and_range():
    out = _run(_colour_image(24), recipes.recipe("simclr"), size=16)
    assert out.shape == (16, 16, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_deterministic_for_a_seed_and_different_across_seeds():
    image, cfg = _colour_image(), recipes.recipe("simclr")
    np.testing.assert_array_equal(_run(image, cfg, (3, 4)), _run(image, cfg, (3, 4)))
    assert not np.allclose(_run(image, cfg, (3, 4)), _run(image, cfg, (3, 5)))


def test_crop_window_respects_scale_and_ratio():
    scale, ratio = (0.3, 0.5), (3 / 4, 4 / 3)
    for s in range(30):
        top, left, h, w = (
            int(v) for v in aug._crop_window(tf.constant([s, 0], tf.int64), 100, 120, scale, ratio)
        )
        area = h * w / (100 * 120)
        assert 0.3 * 0.95 <= area <= 0.5 * 1.05, (h, w)
        assert 0.75 * 0.95 <= w / h <= 4 / 3 * 1.05, (h, w)
        assert 0 <= top <= 100 - h and 0 <= left <= 120 - w


def test_crop_window_falls_back_to_a_center_crop():
    # An aspect ratio of 4 can never fit a 40x40 image at full area: torchvision falls back
    # to the widest allowed centred window (w = W, h = round(W / 4)).
    top, left, h, w = (
        int(v) for v in aug._crop_window(tf.constant([0, 0]), 40, 40, (1.0, 1.0), (4.0, 5.0))
    )
    assert (top, left, h, w) == (15, 0, 10, 40)


def test_flip_p_one_flips():
    image = _colour_image()
    flipped = _run(image, _cfg(**IDENTITY | {"flip_p": 1.0}))
    plain = _run(image, _cfg(**IDENTITY))
    np.testing.assert_allclose(flipped, plain[:, ::-1], atol=1e-6)


def test_grayscale_p_one_gives_equal_channels():
    out = _run(_colour_image(), _cfg(grayscale_p=1.0))
    np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-6)
    np.testing.assert_allclose(out[..., 1], out[..., 2], atol=1e-6)


def test_solarize_p_one_on_a_known_image():
    values = np.array([[0, 64], [200, 255]], np.uint8)
    image = np.kron(values, np.ones([8, 8], np.uint8))[..., None].repeat(3, -1)  # 16x16 blocks
    cfg = _cfg(**IDENTITY | {"jitter_p": 0.0, "grayscale_p": 0.0, "solarize_p": 1.0})
    out = _run(tf.constant(image), cfg)
    x = image / 255.0
    np.testing.assert_allclose(out, np.where(x < 0.5, x, 1.0 - x), atol=1e-5)


def _high_frequency_energy(x: np.ndarray) -> float:
    return float((np.diff(x, axis=0) ** 2).sum() + (np.diff(x, axis=1) ** 2).sum())


def test_blur_reduces_high_frequency_energy():
    checker = (np.indices([32, 32]).sum(0) % 2 * 255).astype(np.uint8)[..., None].repeat(3, -1)
    base = IDENTITY | {"jitter_p": 0.0, "grayscale_p": 0.0}
    sharp = _run(tf.constant(checker), _cfg(**base), size=32)
    blurred = _run(
        tf.constant(checker), _cfg(**base | {"blur_p": 1.0, "blur_sigma": (1.5, 2.0)}), size=32
    )
    assert aug.blur_radius(32) == 1
    assert _high_frequency_energy(blurred) < 0.2 * _high_frequency_energy(sharp)


def test_color_jitter_stays_in_range_and_changes_colours():
    image = tf.constant(_colour_image().numpy() / 255.0, tf.float32)
    out = aug.color_jitter(image, tf.constant([5, 6]), 0.8, 0.8, 0.8, 0.2).numpy()
    assert 0.0 <= out.min() and out.max() <= 1.0 and not np.allclose(out, image.numpy())
    same = aug.color_jitter(image, tf.constant([5, 6]), 0.0, 0.0, 0.0, 0.0).numpy()
    np.testing.assert_array_equal(same, image.numpy())


def test_recipes_carry_the_paper_values():
    v2 = recipes.recipe("moco_v2")
    assert (v2.crop_scale, v2.jitter_p, v2.hue, v2.grayscale_p, v2.blur_p) == (
        (0.2, 1.0),
        0.8,
        0.1,
        0.2,
        0.5,
    )
    v1 = recipes.recipe("moco_v1")
    assert (v1.jitter_p, v1.hue, v1.blur_p) == (1.0, 0.4, 0.0)
    simclr = recipes.recipe("simclr")
    assert (simclr.crop_scale, simclr.brightness, simclr.hue) == ((0.08, 1.0), 0.8, 0.2)
    assert recipes.recipe("simclr_cifar").brightness == pytest.approx(0.4)
    assert recipes.recipe("simclr_cifar").blur_p == 0.0
    assert recipes.recipe("digits").flip_p == 0.0
    assert recipes.recipe("moco_v2", blur_p=0.0).blur_p == 0.0


def test_recipe_errors_name_the_offender():
    with pytest.raises(ValueError, match="'byol_v9'.*moco_v1, moco_v2, simclr"):
        recipes.recipe("byol_v9")
    with pytest.raises(ValueError, match="blurp"):
        recipes.recipe("simclr", blurp=1.0)
    with pytest.raises(ValueError, match="flip_p=1.5"):
        recipes.recipe("simclr", flip_p=1.5)


def test_eval_preprocess_center_crop_and_resize():
    image = tf.constant(np.random.default_rng(1).integers(0, 256, [40, 50, 3]), tf.uint8)
    # size 35 at 0.875: shorter side -> 40 (unchanged), central 35x35 at (round(2.5), round(7.5))
    out = aug.eval_preprocess(image, 35, 0.875).numpy()
    np.testing.assert_allclose(out, image.numpy()[2:37, 8:43] / 255.0, atol=1e-5)
    whole = aug.eval_preprocess(image, 20, 1.0).numpy()
    assert whole.shape == (20, 20, 3) and 0 <= whole.min() and whole.max() <= 1


def test_normalize():
    x = tf.fill([2, 2, 3], 0.5)
    out = aug.normalize(x, (0.5, 0.25, 0.0), (1.0, 0.5, 2.0)).numpy()
    np.testing.assert_allclose(out[0, 0], [0.0, 0.5, 0.25])


def test_views_use_their_own_params_and_seeds():
    views_cfg = ml_collections.ConfigDict(
        {"view2": _cfg(grayscale_p=0.0), "view1": _cfg(grayscale_p=1.0), "view10": _cfg()}
    )
    assert views_lib.view_names(views_cfg) == ["view1", "view2", "view10"]
    out = views_lib.make_views(
        _colour_image(),
        tf.constant([7, 8], tf.int64),
        views_cfg,
        image_size=16,
        mean=(0.5, 0.5, 0.5),
        std=(0.2, 0.2, 0.2),
    ).numpy()
    assert out.shape == (3, 16, 16, 3)
    np.testing.assert_allclose(out[0, ..., 0], out[0, ..., 1], atol=1e-5)  # view1: gray
    assert not np.allclose(out[1, ..., 0], out[1, ..., 1])  # view2: colour kept
    assert not np.allclose(out[1], out[2])  # different seeds per view


def test_views_config_errors_name_the_view():
    bad = ml_collections.ConfigDict({"view1": _cfg(), "view2": dict(_cfg(), blur_p=2.0)})
    with pytest.raises(ValueError, match=r"input.views.view2: blur_p=2.0"):
        views_lib.check_views_config(bad)
