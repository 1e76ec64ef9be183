"""The online linear probe: a classifier trained alongside pretraining, on stop-gradient
features, with an optimizer of its own (SimCLR's ``lineareval_while_pretraining``, BYOL's
online classifier, solo-learn's ``classifier``).

Each step it reads the features the method's loss computed (``Aux['features']``, ``[n * B,
D]`` of the evaluated encoder, n views view-major) with the batch's labels repeated n
times, and takes one SGD step (momentum 0.9, no weight decay, lr ``evals.online_linear_lr``
along a cosine to 0 over the run, as solo-learn's classifier group) on

    L = mean_{i labelled} -log softmax(W sg(h_i) + b)_{y_i}

Its gradient is taken with respect to (W, b) alone, in a computation apart from the
method's, so the backbone's update is bit-for-bit what it is without the probe. Rows with
label -1 are left out. ``online_linear_top1`` is the top-1 (%) on the step's own batch,
before its update; ``online_linear_test_top1`` (logged at each kNN evaluation, and in the
final report) the top-1 of the same classifier on the eval-mode features of
``input.eval_test_split``, those the kNN monitor reads.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

MOMENTUM = 0.9  # solo-learn / SimCLR's classifier: the pretraining optimizer's momentum


def optimizer(lr: float, total_steps: int) -> optax.GradientTransformation:
    return optax.sgd(optax.cosine_decay_schedule(lr, max(total_steps, 1)), momentum=MOMENTUM)


def init(feature_dim: int, num_classes: int, tx: optax.GradientTransformation) -> dict:
    """Zero weights (the probe is convex; zeros make its start independent of any seed)."""
    params = {
        "kernel": jnp.zeros((feature_dim, num_classes), jnp.float32),
        "bias": jnp.zeros((num_classes,), jnp.float32),
    }
    return {"params": params, "opt_state": tx.init(params)}


def _loss(params: dict, features: jax.Array, labels: jax.Array):
    logits = features @ params["kernel"] + params["bias"]  # [N, K]
    labelled = labels >= 0  # [N]
    safe = jnp.where(labelled, labels, 0)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, safe)  # [N]
    count = jnp.maximum(jnp.sum(labelled), 1)
    loss = jnp.sum(jnp.where(labelled, nll, 0.0)) / count
    hits = jnp.where(labelled, jnp.argmax(logits, axis=-1) == labels, False)
    return loss, 100.0 * jnp.sum(hits) / count


def update(
    probe: dict, features: jax.Array, labels: jax.Array, tx: optax.GradientTransformation
) -> tuple[dict, dict[str, jax.Array]]:
    """One step on ``features [n * B, D]`` and ``labels [B]``; returns the new probe and
    ``{'online_linear_loss', 'online_linear_top1'}``."""
    features = jax.lax.stop_gradient(features).astype(jnp.float32)
    repeats = features.shape[0] // labels.shape[0]
    labels = jnp.tile(labels, repeats)  # view-major rows: view 1's batch, view 2's, ...
    (loss, top1), grads = jax.value_and_grad(_loss, has_aux=True)(probe["params"], features, labels)
    updates, opt_state = tx.update(grads, probe["opt_state"], probe["params"])
    params = optax.apply_updates(probe["params"], updates)
    metrics = {"online_linear_loss": loss, "online_linear_top1": top1}
    return {"params": params, "opt_state": opt_state}, metrics


def top1(probe: dict, features: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 (%) of the probe on host features ``[N, D]`` with labels ``[N]``."""
    params = jax.device_get(probe["params"])
    logits = np.asarray(features, np.float32) @ params["kernel"] + params["bias"]
    return float(100.0 * np.mean(np.argmax(logits, axis=-1) == labels))
