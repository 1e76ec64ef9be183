"""MAE reconstruction figures: the grid's layout and columns, the un-normalisation of a
norm_pix_loss prediction with the target patch's statistics, the PNG, and the figure read
from the evaluation split."""

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest
from helpers import load_config

from ssl_jax import losses
from ssl_jax.evaluate import reconstruct
from ssl_jax.methods import mae
from ssl_jax.models import mae as mae_model

P, S, B = 4, 16, 3
MEAN, STD = (0.3, 0.3, 0.3), (0.4, 0.4, 0.4)


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0.0, 1.0, size=(B, S, S, 3)).astype(np.float32)
    images = (pixels - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    _, mask, _ = mae_model.random_masking(jnp.asarray(rng.uniform(size=(B, 16))), 0.75)
    pred = rng.normal(size=(B, 16, P * P * 3)).astype(np.float32)
    return images, np.asarray(mask), pred


def _grid(images, pred, mask, norm_pix_loss=True):
    return reconstruct.reconstruction_grid(
        images, pred, mask, patch_size=P, mean=MEAN, std=STD, norm_pix_loss=norm_pix_loss
    )


def _column(grid, i):
    cols = grid.reshape(B, S, 4, S, 3)
    return cols[:, :, i]  # [B, S, S, 3]


def _pixel_mask(mask):
    patches = np.repeat(mask[..., None], P * P * 3, axis=-1)
    return np.asarray(mae_model.unpatchify(patches, P)) > 0.5  # [B, S, S, 3]


def test_grid_layout_and_columns(arrays):
    images, mask, pred = arrays
    grid = _grid(images, pred, mask)
    assert grid.shape == (B * S, 4 * S, 3) and grid.dtype == np.uint8
    original = _column(grid, 0)
    np.testing.assert_array_equal(original, reconstruct.to_uint8(images, MEAN, STD))
    # The denormalised input is the original 0..1 image (up to uint8 rounding).
    pixels = images * np.asarray(STD) + np.asarray(MEAN)
    assert np.abs(original.astype(float) - pixels * 255).max() <= 0.5 + 1e-3
    removed = _pixel_mask(mask)
    masked, recon, pasted = _column(grid, 1), _column(grid, 2), _column(grid, 3)
    np.testing.assert_array_equal(masked[removed], reconstruct.GRAY)
    np.testing.assert_array_equal(masked[~removed], original[~removed])
    np.testing.assert_array_equal(pasted[~removed], original[~removed])
    np.testing.assert_array_equal(pasted[removed], recon[removed])


def test_perfect_normalised_prediction_reconstructs_the_image(arrays):
    """norm_pix_loss: the prediction equal to the normalised target, un-normalised with the
    target patch's mean and unbiased std, gives back the image (run_one_image's colours)."""
    images, mask, _ = arrays
    target = mae_model.patchify(jnp.asarray(images), P)
    perfect = np.asarray(losses.normalize_patches(target))
    grid = _grid(images, perfect, mask)
    diff = np.abs(_column(grid, 2).astype(int) - _column(grid, 0).astype(int))
    assert diff.max() <= 1
    # Without norm_pix_loss the prediction is already in pixels.
    grid = _grid(images, np.asarray(target), mask, norm_pix_loss=False)
    np.testing.assert_array_equal(_column(grid, 2), _column(grid, 0))


def test_figure_from_the_eval_split(tmp_path):
    config = load_config("mae", "smoke")
    model = mae.make_model(config)
    variables = model.init(jax.random.key(0), jnp.zeros((1, S, S, 3)), train=False)
    out = str(tmp_path / "recon.png")
    grid = reconstruct.reconstruction_figure(
        config, model, variables, num_images=4, split="test[:8]", seed=3, out_path=out
    )
    assert grid.shape == (4 * S, 4 * S, 3)
    images = reconstruct.eval_images(config, 4, "test[:8]")
    np.testing.assert_array_equal(
        grid.reshape(4, S, 4, S, 3)[:, :, 0],
        reconstruct.to_uint8(images, config.input.mean, config.input.std),
    )
    height, width = matplotlib.image.imread(out).shape[:2]  # labelled, 96+ px per image
    assert width >= 4 * 96 and height >= 4 * 96
    pred, mask = reconstruct.predict(model, variables, images, jax.random.key(3))
    assert pred.shape == (4, 16, P * P * 3)
    np.testing.assert_array_equal(np.asarray(mask).sum(1), 12.0)
    with pytest.raises(ValueError, match="num_images=9"):
        reconstruct.eval_images(config, 9, "test[:8]")
