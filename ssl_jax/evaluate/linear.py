"""Offline linear probe on frozen, precomputed features.

Protocol (the linear-evaluation protocol of MoCo / SimCLR / MAE, on cached features):

* features are standardised with the training set's per-dimension mean and std, i.e. a
  BatchNorm without affine parameters in front of the classifier, as MAE's linear probe
  does (``BatchNorm1d(affine=False, eps=1e-6)``, He et al. 2021, arXiv:2111.06377);
* one Dense layer (weights ~ N(0, 0.01^2), bias 0, as MAE initialises its head), softmax
  cross-entropy;
* SGD with momentum 0.9, cosine decay over all steps, weight decay 0 by default (MoCo v1
  and MAE linear probes use wd 0), 100 epochs (MoCo lincls) and batch size 256;
* mini-batches are a fresh permutation of the training set every epoch; the remainder
  that does not fill a batch is dropped (a different remainder each epoch), which keeps
  every step the same shape so one compiled ``lax.scan`` serves every epoch.

Default learning rate: ``lr = 0.1 * batch_size / 256``, MAE's linear-probe base lr
(``--blr 0.1``) with the linear scaling rule (Goyal et al. 2017). MoCo's lr=30 is tuned for
raw, tiny-scale ResNet features; after standardisation every input has unit variance, so
the logit scale no longer depends on the backbone and an O(0.1) lr is the natural scale
(no LARS here: with a single layer and unit-variance inputs the trust ratio is not needed).

Differences from the references: statistics are the exact training-set moments rather
than BatchNorm running averages, and there is no data augmentation (features are cached
once, as in DINO's and MAE's feature-level probes).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

_BN_EPS = 1e-6  # MAE's BatchNorm1d eps


def standardize(
    train: np.ndarray, *others: np.ndarray, eps: float = _BN_EPS
) -> tuple[np.ndarray, ...]:
    """Standardises ``train`` and ``others`` with the training set's mean and std."""
    train = np.asarray(train, np.float64)
    mean = train.mean(axis=0)
    std = np.sqrt(train.var(axis=0) + eps)
    return tuple(
        ((np.asarray(x, np.float64) - mean) / std).astype(np.float32) for x in (train,) + others
    )


def _make_optimizer(
    lr: float, momentum: float, weight_decay: float, total_steps: int
) -> optax.GradientTransformation:
    schedule = optax.cosine_decay_schedule(lr, decay_steps=total_steps)
    # Decay only the kernel (no weight decay on biases), added to the gradient before the
    # momentum buffer, as torch.optim.SGD does.
    wd_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=wd_mask),
        optax.sgd(schedule, momentum=momentum),
    )


def _probe_parts(
    num_classes: int, epochs: int, steps_per_epoch: int, momentum: float, weight_decay: float
):
    """The classifier and its optimizer (the cosine runs over all ``epochs``)."""
    model = nn.Dense(num_classes, kernel_init=nn.initializers.normal(0.01))

    def tx(lr: jax.Array) -> optax.GradientTransformation:
        return _make_optimizer(lr, momentum, weight_decay, epochs * steps_per_epoch)

    return model, tx


@functools.partial(
    jax.jit, static_argnames=("num_classes", "epochs", "batch_size", "momentum", "weight_decay")
)
def _init(x, key, lr, *, num_classes, epochs, batch_size, momentum, weight_decay):
    model, tx = _probe_parts(num_classes, epochs, x.shape[0] // batch_size, momentum, weight_decay)
    params = model.init(jax.random.split(key)[0], x[:1])
    return params, tx(lr).init(params)


@functools.partial(
    jax.jit, static_argnames=("num_classes", "epochs", "batch_size", "momentum", "weight_decay")
)
def _train_epoch(
    carry: tuple,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    lr: jax.Array,
    e: jax.Array,
    *,
    num_classes: int,
    epochs: int,
    batch_size: int,
    momentum: float,
    weight_decay: float,
) -> tuple[tuple, jax.Array]:
    """Epoch ``e`` of the probe as one program (a scan over its mini-batches); one program
    per epoch lets a preemption notice stop the probe between epochs."""
    n = x.shape[0]
    steps_per_epoch = n // batch_size
    model, make_tx = _probe_parts(num_classes, epochs, steps_per_epoch, momentum, weight_decay)
    tx = make_tx(lr)
    shuffle_key = jax.random.split(key)[1]

    def loss_fn(p: Any, xb: jax.Array, yb: jax.Array) -> jax.Array:
        logits = model.apply(p, xb)  # [b, C]
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    def step(carry: tuple, idx: jax.Array) -> tuple[tuple, jax.Array]:
        p, s = carry
        loss, grads = jax.value_and_grad(loss_fn)(p, x[idx], y[idx])
        updates, s = tx.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), loss

    perm = jax.random.permutation(jax.random.fold_in(shuffle_key, e), n)
    batches = perm[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)
    carry, losses = jax.lax.scan(step, carry, batches)
    return carry, losses.mean()


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _predict(params: Any, x: jax.Array, *, num_classes: int) -> jax.Array:
    return jnp.argmax(nn.Dense(num_classes).apply(params, x), axis=-1)


def _accuracy(params: Any, x: np.ndarray, y: np.ndarray, num_classes: int) -> float:
    if len(y) == 0:
        return float("nan")
    # Host-side chunks keep the [rows, C] logits bounded for ImageNet-size eval sets.
    preds = [
        np.asarray(_predict(params, x[i : i + 16384], num_classes=num_classes))
        for i in range(0, len(x), 16384)
    ]
    return float(100.0 * np.mean(np.concatenate(preds) == y))


def linear_probe(
    train_feats: np.ndarray,
    train_labels: np.ndarray,
    test_feats: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float | None = None,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    seed: int = 0,
    poll: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """Trains a linear classifier on frozen features; returns accuracies (%) and loss.

    Returns ``{'top1': test top-1, 'train_top1': train top-1, 'loss': mean training loss of
    the last epoch}``. ``lr=None`` means ``0.1 * batch_size / 256`` (see module docstring).
    Deterministic for a given ``seed``. ``poll()`` runs after each epoch; it may raise to
    stop (a preemption notice).
    """
    train_labels = np.asarray(train_labels, np.int32)
    test_labels = np.asarray(test_labels, np.int32)
    n = len(train_feats)
    if n == 0 or len(train_labels) != n:
        raise ValueError(
            f"need matching, non-empty train data; got {n} feats, {len(train_labels)} labels"
        )
    if len(test_feats) != len(test_labels):
        raise ValueError(f"test feats ({len(test_feats)}) and labels ({len(test_labels)}) differ")
    if train_labels.max() >= num_classes or train_labels.min() < 0:
        raise ValueError(
            f"train labels span [{train_labels.min()}, {train_labels.max()}] "
            f"but num_classes={num_classes}"
        )
    batch_size = min(batch_size, n)
    if lr is None:
        lr = 0.1 * batch_size / 256
    x_train, x_test = standardize(train_feats, test_feats)
    x, y, key = jnp.asarray(x_train), jnp.asarray(train_labels), jax.random.key(seed)
    static = dict(
        num_classes=num_classes,
        epochs=epochs,
        batch_size=batch_size,
        momentum=momentum,
        weight_decay=weight_decay,
    )
    carry, loss = _init(x, key, jnp.float32(lr), **static), jnp.float32(np.nan)
    for e in range(epochs):
        carry, loss = _train_epoch(carry, x, y, key, jnp.float32(lr), jnp.int32(e), **static)
        poll()
    params = carry[0]
    return {
        "top1": _accuracy(params, x_test, test_labels, num_classes),
        "train_top1": _accuracy(params, x_train, train_labels, num_classes),
        "loss": float(loss),
    }
