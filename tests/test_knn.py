"""Weighted kNN against a NumPy reference written from the InstDisc / DINO definition."""

import numpy as np
import pytest

from ssl_jax.evaluate.knn import knn_accuracy, knn_predict


def reference_knn(train, train_labels, test, num_classes, k, temperature):
    """Per test row: cosine sims, k largest (stable: lower index first), exp(s/T) votes."""
    bank = train / np.maximum(np.linalg.norm(train, axis=1, keepdims=True), 1e-12)
    query = test / np.maximum(np.linalg.norm(test, axis=1, keepdims=True), 1e-12)
    k = min(k, len(train))
    preds = []
    for q in query:
        sim = bank @ q
        top = np.argsort(-sim, kind="stable")[:k]
        scores = np.zeros(num_classes)
        for i in top:
            scores[train_labels[i]] += np.exp(sim[i] / temperature)
        preds.append(int(np.argmax(scores)))  # first max: lower class id wins ties
    return np.array(preds)


def _data(seed=0, n_train=60, n_test=37, d=8, c=5):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d))
    ytr, yte = rng.integers(0, c, n_train), rng.integers(0, c, n_test)
    xtr = centers[ytr] + rng.normal(size=(n_train, d))
    xte = centers[yte] + rng.normal(size=(n_test, d))
    return xtr.astype(np.float32), ytr, xte.astype(np.float32), yte


@pytest.mark.parametrize("k,temperature", [(1, 0.1), (5, 0.07), (20, 0.1), (200, 0.1)])
def test_matches_numpy_reference(k, temperature):
    xtr, ytr, xte, _ = _data()
    got = knn_predict(xtr, ytr, xte, num_classes=5, k=k, temperature=temperature, chunk_size=16)
    np.testing.assert_array_equal(got, reference_knn(xtr, ytr, xte, 5, k, temperature))


def test_chunk_size_does_not_change_predictions():
    xtr, ytr, xte, _ = _data(seed=1)
    preds = [
        knn_predict(xtr, ytr, xte, num_classes=5, k=10, temperature=0.1, chunk_size=c)
        for c in (1, 7, 37, 1000)
    ]
    for p in preds[1:]:
        np.testing.assert_array_equal(p, preds[0])


def test_k_larger_than_train_set_uses_all_examples():
    xtr, ytr, xte, _ = _data(n_train=6)
    got = knn_predict(xtr, ytr, xte, num_classes=5, k=200, temperature=0.1)
    np.testing.assert_array_equal(got, reference_knn(xtr, ytr, xte, 5, 6, 0.1))


def test_scale_invariant_cosine():
    xtr, ytr, xte, _ = _data(seed=2)
    a = knn_predict(xtr, ytr, xte, num_classes=5, k=10, temperature=0.1)
    b = knn_predict(7.0 * xtr, ytr, 0.01 * xte, num_classes=5, k=10, temperature=0.1)
    np.testing.assert_array_equal(a, b)


def test_tied_class_scores_pick_lower_class():
    # Two train points at the same cosine similarity with different labels: equal votes.
    train = np.array([[1.0, 1.0], [1.0, 1.0]], np.float32)
    labels = np.array([3, 1])
    test = np.array([[2.0, 2.0]], np.float32)
    assert knn_predict(train, labels, test, num_classes=4, k=2, temperature=0.1)[0] == 1


def test_tied_similarities_take_lower_index_first():
    # k=1 among duplicates: the first train example's label is the neighbour.
    train = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    labels = np.array([2, 0, 1])
    test = np.array([[3.0, 0.0]], np.float32)
    assert knn_predict(train, labels, test, num_classes=3, k=1, temperature=0.1)[0] == 2


def test_weighting_beats_majority():
    # One very close neighbour of class 0 outvotes two distant ones of class 1 at small T.
    train = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], np.float32)
    labels = np.array([0, 1, 1])
    test = np.array([[1.0, 0.05]], np.float32)
    assert knn_predict(train, labels, test, num_classes=2, k=3, temperature=0.1)[0] == 0


def test_accuracy_percent():
    xtr, ytr, xte, yte = _data(seed=3)
    ref = reference_knn(xtr, ytr, xte, 5, 20, 0.1)
    acc = knn_accuracy(xtr, ytr, xte, yte, num_classes=5, k=20, temperature=0.1)
    assert acc == pytest.approx(100.0 * np.mean(ref == yte))


def test_rejects_bad_k():
    xtr, ytr, xte, _ = _data()
    with pytest.raises(ValueError, match="k="):
        knn_predict(xtr, ytr, xte, num_classes=5, k=0, temperature=0.1)
