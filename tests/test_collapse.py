"""Collapse diagnostics: std and effective rank of healthy vs collapsed embeddings."""

import jax
import numpy as np

from ssl_jax.evaluate.collapse import collapse_warning, effective_rank, embedding_std


def test_std_is_about_one_over_sqrt_d_for_spread_outputs_and_zero_when_collapsed():
    spread = jax.random.normal(jax.random.key(0), (4096, 64))
    np.testing.assert_allclose(float(embedding_std(spread)), 1 / np.sqrt(64), rtol=0.02)
    collapsed = np.tile(np.arange(1.0, 65.0), (32, 1))
    np.testing.assert_allclose(float(embedding_std(collapsed)), 0.0, atol=1e-6)


def test_effective_rank_counts_the_directions_used():
    basis = np.eye(8)[np.arange(64) % 4] * 3.0  # 4 orthogonal directions, equal weight
    np.testing.assert_allclose(float(effective_rank(basis)), 4.0, rtol=1e-3)
    # float32 Gram eigenvalues leave ~1e-6 noise in the null space: rank 1 to 1%.
    np.testing.assert_allclose(float(effective_rank(np.ones((16, 8)))), 1.0, rtol=1e-2)


def test_effective_rank_matches_numpy_svd_for_wide_and_tall_batches():
    for shape in [(16, 128), (128, 16)]:
        z = np.random.default_rng(0).normal(size=shape)
        zn = z / np.linalg.norm(z, axis=1, keepdims=True)
        s = np.linalg.svd(zn, compute_uv=False)
        p = s / s.sum()
        expected = np.exp(-(p * np.log(p)).sum())
        np.testing.assert_allclose(float(effective_rank(z)), expected, rtol=1e-3)


def test_warning_names_both_diagnostics_only_when_collapsed():
    assert collapse_warning(10, {"effective_rank": 12.0, "collapse_std": 0.1}) is None
    assert collapse_warning(10, {"loss": 1.0}) is None
    message = collapse_warning(10, {"effective_rank": 1.01, "collapse_std": 0.0001})
    assert "step 10" in message and "1.01" in message and "0.0001" in message
