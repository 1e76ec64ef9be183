"""Losses against NumPy references written from the papers' equations."""

import numpy as np
import pytest

from ssl_jax import losses


def _unit(rng, *shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _logsumexp(x, axis=-1):
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def test_info_nce_matches_moco_equation():
    rng = np.random.default_rng(0)
    q, k, queue, t = _unit(rng, 6, 8), _unit(rng, 6, 8), _unit(rng, 32, 8), 0.2
    # -log exp(q.k+/T) / (exp(q.k+/T) + sum_j exp(q.n_j/T)), averaged over the batch.
    pos = (q * k).sum(-1) / t
    neg = q @ queue.T / t
    expected = np.mean(-pos + _logsumexp(np.concatenate([pos[:, None], neg], 1)))
    loss, logits = losses.info_nce(q, k, queue, t)
    assert logits.shape == (6, 33)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_nt_xent_is_twice_the_paper_average():
    rng = np.random.default_rng(1)
    n, t = 5, 0.5
    z1, z2 = rng.normal(size=(n, 4)), rng.normal(size=(n, 4))
    z = np.concatenate([z1, z2])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    sim = z @ z.T / t
    partner = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
    terms = []
    for i in range(2 * n):
        others = np.delete(sim[i], i)  # the denominator runs over k != i
        terms.append(-sim[i, partner[i]] + _logsumexp(others))
    paper = np.mean(terms)  # L = 1/2N sum_k [l(2k-1, 2k) + l(2k, 2k-1)]
    loss, _ = losses.nt_xent(z1, z2, t)
    np.testing.assert_allclose(float(loss), 2 * paper, rtol=1e-5)


def test_nt_xent_scale_invariant_inputs():
    rng = np.random.default_rng(2)
    z1, z2 = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    a, _ = losses.nt_xent(z1, z2, 0.1)
    b, _ = losses.nt_xent(3.0 * z1, 0.5 * z2, 0.1)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-5)


def test_l2_normalize_handles_zero_vector():
    out = np.asarray(losses.l2_normalize(np.zeros((2, 3))))
    assert np.all(np.isfinite(out)) and np.all(out == 0)


@pytest.mark.parametrize("shape", [(3,), (2, 3, 4)])
def test_info_nce_rejects_wrong_rank(shape):
    x = np.ones(shape, np.float32)
    with pytest.raises(AssertionError):
        losses.info_nce(x, x, np.ones((4, 3), np.float32), 0.1)
