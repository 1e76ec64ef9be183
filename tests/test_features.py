"""Feature extraction over the 8-device mesh, with a padded last batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import parallel
from ssl_jax.evaluate.features import extract_features


def _batches(images, labels, batch_size):
    """Host batches as the input pipeline yields them: last one padded, mask False."""
    for i in range(0, len(images), batch_size):
        img, lab = images[i : i + batch_size], labels[i : i + batch_size]
        pad = batch_size - len(img)
        yield {
            "image": np.concatenate([img, np.zeros((pad, *img.shape[1:]), img.dtype)]),
            "label": np.concatenate([lab, np.full((pad,), -1, lab.dtype)]),
            "mask": np.arange(batch_size) < len(img),
        }


def test_extracts_in_order_and_drops_padding():
    mesh = parallel.make_mesh()
    assert mesh.devices.size == 8
    rng = np.random.default_rng(0)
    images = rng.normal(size=(37, 4, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 10, 37).astype(np.int32)
    w = jnp.asarray(rng.normal(size=(48, 5)).astype(np.float32))
    embed_fn = jax.jit(lambda x: x.reshape(x.shape[0], -1) @ w)

    feats, got_labels = extract_features(embed_fn, _batches(images, labels, 16), mesh)

    assert feats.shape == (37, 5) and feats.dtype == np.float32
    np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_allclose(feats, images.reshape(37, -1) @ np.asarray(w), rtol=1e-5, atol=1e-5)


def test_bfloat16_embeddings_come_back_float32():
    mesh = parallel.make_mesh()
    images = np.ones((8, 2, 2, 1), np.float32)
    labels = np.arange(8, dtype=np.int32)
    embed_fn = jax.jit(lambda x: x.reshape(8, -1).astype(jnp.bfloat16))
    feats, _ = extract_features(embed_fn, _batches(images, labels, 8), mesh)
    assert feats.dtype == np.float32


def test_batch_not_divisible_by_devices_fails_early():
    mesh = parallel.make_mesh()
    batch = {"image": np.zeros((6, 2, 2, 1)), "label": np.zeros(6), "mask": np.ones(6, bool)}
    with pytest.raises(ValueError, match="not divisible"):
        extract_features(jax.jit(lambda x: x), iter([batch]), mesh)
