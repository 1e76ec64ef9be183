"""Weighted k-nearest-neighbour classifier on frozen features (the "kNN monitor").

Protocol (InstDisc, Wu et al. 2018, arXiv:1805.01978; as used by the MoCo CIFAR-10 demo
colab's ``knn_predict`` and DINO's ``eval_knn.py``, Caron et al. 2021, arXiv:2104.14294):

    z = x / ||x||                                   train and test features, L2-normalised
    s_i = z_test . z_i                              cosine similarity to every train example
    N_k = the k train examples with the largest s_i
    score(c) = sum_{i in N_k, y_i = c} exp(s_i / T)
    prediction = argmax_c score(c)

Hyper-parameters used by the references:

* ``k=200, T=0.1``  -- MoCo CIFAR-10 demo (``--knn-k 200 --knn-t 0.1``), CIFAR-scale data;
  this module's defaults, since the project's presets are CIFAR / digits scale.
* ``k=20, T=0.07``  -- DINO ImageNet (``--nb_knn 20`` "usually working the best",
  ``--temperature 0.07``); see ``IMAGENET_KNN``.

Ties: among train examples with equal similarity the lower index is taken first
(``lax.top_k`` is stable), and among classes with equal score the lower class id wins.
``k`` larger than the train set is capped at the train-set size.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

CIFAR_KNN = {"k": 200, "temperature": 0.1}  # MoCo CIFAR-10 demo / InstDisc
IMAGENET_KNN = {"k": 20, "temperature": 0.07}  # DINO eval_knn.py


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    # The eps keeps an all-zero feature (e.g. a dead ReLU output) at zero instead of NaN.
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


@functools.partial(jax.jit, static_argnames=("num_classes", "k", "chunk_size"))
def _knn_predict_jit(
    train_feats: jax.Array,
    train_labels: jax.Array,
    test_feats: jax.Array,
    temperature: jax.Array,
    *,
    num_classes: int,
    k: int,
    chunk_size: int,
) -> jax.Array:
    bank = _l2_normalize(train_feats.astype(jnp.float32))  # [N, D]
    queries = _l2_normalize(test_feats.astype(jnp.float32))  # [M_pad, D]
    chunks = rearrange(queries, "(n c) d -> n c d", c=chunk_size)

    def predict_chunk(q: jax.Array) -> jax.Array:  # q: [c, D]
        sim = q @ bank.T  # [c, N]; only c x N is ever live, which bounds memory
        top_sim, top_idx = jax.lax.top_k(sim, k)  # [c, k]
        weights = jnp.exp(top_sim / temperature)  # [c, k]
        neighbour_labels = train_labels[top_idx]  # [c, k]
        rows = jnp.arange(q.shape[0])[:, None]  # [c, 1]
        # Scatter-add instead of a one-hot [c, k, C] tensor: memory c x C, not c x k x C.
        scores = jnp.zeros((q.shape[0], num_classes), jnp.float32)
        scores = scores.at[rows, neighbour_labels].add(weights)  # [c, C]
        return jnp.argmax(scores, axis=-1)  # [c]

    preds = jax.lax.map(predict_chunk, chunks)  # [n, c]
    return rearrange(preds, "n c -> (n c)")


def knn_predict(
    train_feats: np.ndarray | jax.Array,
    train_labels: np.ndarray | jax.Array,
    test_feats: np.ndarray | jax.Array,
    *,
    num_classes: int,
    k: int = CIFAR_KNN["k"],
    temperature: float = CIFAR_KNN["temperature"],
    chunk_size: int = 256,
) -> np.ndarray:
    """Predicted class of each test feature, int32 [M].

    Memory: one chunk holds a [chunk_size, N_train] float32 similarity matrix, e.g.
    256 x 50k x 4 B = 51 MB for CIFAR-10, 256 x 1.28M x 4 B = 1.3 GB for ImageNet.
    """
    train_feats = jnp.asarray(train_feats)
    train_labels = jnp.asarray(train_labels, jnp.int32)
    n_train, n_test = train_feats.shape[0], test_feats.shape[0]
    if n_train == 0:
        raise ValueError("knn_predict needs at least one train example; got 0.")
    if train_labels.shape != (n_train,):
        raise ValueError(f"train_labels shape {train_labels.shape} != ({n_train},)")
    if train_feats.shape[1:] != test_feats.shape[1:]:
        raise ValueError(f"feature dims differ: train {train_feats.shape}, test {test_feats.shape}")
    if k < 1 or temperature <= 0:
        raise ValueError(f"need k >= 1 and temperature > 0; got k={k}, T={temperature}")
    if n_test == 0:
        return np.zeros((0,), np.int32)
    chunk = min(chunk_size, n_test)
    # Zero rows pad the test set to whole chunks, so one compiled program serves any size.
    padded = jnp.pad(jnp.asarray(test_feats), ((0, -n_test % chunk), (0, 0)))
    preds = _knn_predict_jit(
        train_feats,
        train_labels,
        padded,
        jnp.float32(temperature),
        num_classes=num_classes,
        k=min(k, n_train),
        chunk_size=chunk,
    )
    return np.asarray(preds[:n_test], np.int32)


def knn_accuracy(
    train_feats: np.ndarray | jax.Array,
    train_labels: np.ndarray | jax.Array,
    test_feats: np.ndarray | jax.Array,
    test_labels: np.ndarray | jax.Array,
    *,
    num_classes: int,
    k: int = CIFAR_KNN["k"],
    temperature: float = CIFAR_KNN["temperature"],
    chunk_size: int = 256,
) -> float:
    """Top-1 accuracy (%) of the weighted kNN classifier on the test set."""
    preds = knn_predict(
        train_feats,
        train_labels,
        test_feats,
        num_classes=num_classes,
        k=k,
        temperature=temperature,
        chunk_size=chunk_size,
    )
    test_labels = np.asarray(test_labels)
    if len(test_labels) == 0:
        return float("nan")
    return float(100.0 * np.mean(preds == test_labels))
