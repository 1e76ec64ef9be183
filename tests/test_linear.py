"""Linear probe on synthetic frozen features."""

import numpy as np
import pytest

from ssl_jax.evaluate.linear import linear_probe, standardize


def _clusters(seed=0, n=800, d=16, c=4, scale=3.0):
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(c, d))
    mu *= scale / np.linalg.norm(mu, axis=1, keepdims=True)
    y = rng.integers(0, c, n)
    # Offset and scale the raw features: standardisation must make this irrelevant.
    x = 40.0 + 10.0 * (mu[y] + 0.5 * rng.normal(size=(n, d)))
    return x.astype(np.float32), y


def test_learns_separable_problem():
    x, y = _clusters()
    out = linear_probe(x[:500], y[:500], x[500:], y[500:], num_classes=4, epochs=20, batch_size=64)
    assert out["train_top1"] > 99.0
    assert out["top1"] > 99.0
    assert out["loss"] < 0.1


def test_deterministic_for_seed():
    x, y = _clusters(seed=1, scale=1.0)
    kw = dict(num_classes=4, epochs=5, batch_size=32, seed=3)
    a = linear_probe(x[:300], y[:300], x[300:], y[300:], **kw)
    b = linear_probe(x[:300], y[:300], x[300:], y[300:], **kw)
    assert a == b


def test_random_labels_give_chance_on_test():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3000, 8)).astype(np.float32)
    y = rng.integers(0, 4, 3000)
    out = linear_probe(x[:1000], y[:1000], x[1000:], y[1000:], num_classes=4, epochs=10)
    assert out["top1"] == pytest.approx(25.0, abs=4.0)


def test_standardize_uses_train_statistics():
    rng = np.random.default_rng(3)
    train = rng.normal(5.0, 3.0, size=(200, 4))
    test = rng.normal(5.0, 3.0, size=(50, 4))
    s_train, s_test = standardize(train, test)
    np.testing.assert_allclose(s_train.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(s_train.std(0), 1.0, atol=1e-4)
    expected = (test - train.mean(0)) / np.sqrt(train.var(0) + 1e-6)
    np.testing.assert_allclose(s_test, expected, rtol=1e-5)


def test_batch_larger_than_train_set():
    x, y = _clusters(seed=4, n=100)
    out = linear_probe(x[:40], y[:40], x[40:], y[40:], num_classes=4, epochs=3, batch_size=256)
    assert np.isfinite(out["loss"])
