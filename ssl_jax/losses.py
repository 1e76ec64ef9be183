"""Pure loss math shared by the methods, always evaluated in float32.

Every function casts its array inputs to float32 on entry, so a model computing in
bfloat16 (``model.dtype``) still gets float32 normalisations, softmaxes, temperature
divisions and reductions, and a float32 loss.

Every function takes embeddings in the global view (the whole global batch), so the
negatives of a contrastive loss cover every device's examples whatever the device count.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

# Masks a logit out of a softmax; SimCLR's code subtracts the same constant (LARGE_NUM).
_LARGE_NUM = 1e9


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps), as torch.nn.functional.normalize."""
    x = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))
    return x / jnp.maximum(norm, eps)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy with integer labels."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """timm SoftTargetCrossEntropy: ``mean_b sum_k -t_bk log_softmax(z_b)_k`` (float32);
    targets ``[B, K]`` are mixed / smoothed label distributions."""
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.mean(jnp.sum(-targets.astype(jnp.float32) * log_p, axis=-1))


def info_nce(
    q: jax.Array, k: jax.Array, queue: jax.Array, temperature: float
) -> tuple[jax.Array, jax.Array]:
    """MoCo's InfoNCE: the positive key k against the K queued negatives.

    L = -mean_i log( exp(q_i.k_i / T) / (exp(q_i.k_i / T) + sum_j exp(q_i.n_j / T)) )

    Args:
      q: queries [B, D], L2-normalised.
      k: positive keys [B, D], L2-normalised, already stop-gradient.
      queue: negatives [K, D], L2-normalised.
      temperature: T.

    Returns:
      (loss, logits [B, 1 + K]) where column 0 holds the positive.
    """
    chex.assert_rank([q, k, queue], 2)
    chex.assert_equal_shape([q, k])
    q, k, queue = (x.astype(jnp.float32) for x in (q, k, queue))
    l_pos = jnp.einsum("bd,bd->b", q, k)[:, None]  # [B, 1]
    l_neg = jnp.einsum("bd,kd->bk", q, queue)  # [B, K]
    logits = jnp.concatenate([l_pos, l_neg], axis=1) / temperature  # [B, 1+K]
    labels = jnp.zeros(q.shape[0], dtype=jnp.int32)
    return cross_entropy(logits, labels), logits


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
    """SimCLR's NT-Xent over the 2N views of the global batch.

    For anchor z1_i the positive is z2_i; the negatives are the other 2N - 2 views of
    the global batch. As in google-research/simclr the loss is the sum of the two
    directions' means, loss_a + loss_b, i.e. twice the paper's average over 2N anchors.

    Returns:
      (loss, logits_ab [N, N]) for the contrastive-accuracy metric.
    """
    chex.assert_rank([z1, z2], 2)
    chex.assert_equal_shape([z1, z2])
    z1, z2 = l2_normalize(z1), l2_normalize(z2)
    n = z1.shape[0]
    self_mask = jnp.eye(n, dtype=jnp.float32) * _LARGE_NUM
    logits_aa = z1 @ z1.T / temperature - self_mask  # [N, N]
    logits_bb = z2 @ z2.T / temperature - self_mask
    logits_ab = z1 @ z2.T / temperature
    logits_ba = z2 @ z1.T / temperature
    labels = jnp.arange(n)
    loss_a = cross_entropy(jnp.concatenate([logits_ab, logits_aa], axis=1), labels)
    loss_b = cross_entropy(jnp.concatenate([logits_ba, logits_bb], axis=1), labels)
    return loss_a + loss_b, logits_ab


def top1_accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of rows whose arg-max is the label (in %)."""
    return 100.0 * jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def moco_v3_contrastive(
    q: jax.Array, k: jax.Array, temperature: float
) -> tuple[jax.Array, jax.Array]:
    """MoCo v3's ctr(q, k): InfoNCE of each query against every key of the global batch.

    L = 2T * mean_i -log( exp(q_i.k_i / T) / sum_j exp(q_i.k_j / T) )

    with q and k L2-normalised; the positive of q_i is k_i (the diagonal) and the other
    B - 1 keys of the whole global batch are its negatives. The 2T factor is the
    reference's (moco-v3 builder.py), which makes the gradient scale insensitive to T.

    Args:
      q: queries [B, D] (the online predictor's outputs), normalised here.
      k: keys [B, D] (the momentum encoder's projections, already stop-gradient).
      temperature: T.

    Returns:
      (loss, logits [B, B]).
    """
    chex.assert_rank([q, k], 2)
    chex.assert_equal_shape([q, k])
    q, k = l2_normalize(q), l2_normalize(k)
    logits = jnp.einsum("nd,md->nm", q, k) / temperature  # [B, B]
    labels = jnp.arange(q.shape[0])
    return cross_entropy(logits, labels) * (2.0 * temperature), logits


def cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """Row-wise cosine similarity of ``[B, D]`` arrays -> ``[B]``."""
    chex.assert_rank([a, b], 2)
    chex.assert_equal_shape([a, b])
    return jnp.sum(l2_normalize(a) * l2_normalize(b), axis=-1)


def negative_cosine(p: jax.Array, z: jax.Array) -> jax.Array:
    """SimSiam's D(p, z) = -mean_i cos(p_i, z_i) over the global batch (Chen & He, eq. 1).

    The caller applies the stop-gradient to ``z``: D itself is symmetric in its inputs.
    """
    return -jnp.mean(cosine_similarity(p, z))


def normalized_l2(q: jax.Array, z: jax.Array) -> jax.Array:
    """BYOL's regression loss, mean_i ||q_i/|q_i| - z_i/|z_i|||^2 = mean_i (2 - 2 cos(q_i, z_i))
    (Grill et al., eq. 2; byol/utils/helpers.py regression_loss, averaged over the batch).
    The caller applies the stop-gradient to the target ``z``."""
    chex.assert_rank([q, z], 2)
    chex.assert_equal_shape([q, z])
    diff = l2_normalize(q) - l2_normalize(z)  # [B, d]
    return jnp.mean(jnp.sum(diff * diff, axis=-1))


def dino_cross_entropy(
    student: jax.Array,
    teacher: jax.Array,
    center: jax.Array,
    student_temp: float | jax.Array,
    teacher_temp: float | jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """DINO's loss between the student's crops and the teacher's (global) crops.

    With P_t = softmax((t - center) / teacher_temp) and log P_s = log_softmax(s /
    student_temp), the loss averages over every pair (teacher crop i, student crop v) with
    v != i (teacher crop i is student crop i: the global crops come first):

        L = mean_{i, v != i} mean_b sum_k -P_t[i, b, k] log P_s[v, b, k]

    Args:
      student: student logits [V, B, K], crop-major, the T global crops first.
      teacher: teacher logits [T, B, K] of the global crops (already stop-gradient).
      center: [K] running mean of the teacher logits.
      student_temp, teacher_temp: tau_s and tau_t.

    Returns:
      (loss, P_t [T, B, K]).
    """
    chex.assert_rank([student, teacher, center], [3, 3, 1])
    chex.assert_equal_shape([student[0], teacher[0]])
    v, t = student.shape[0], teacher.shape[0]
    if v < t or v < 2:
        raise ValueError(f"DINO needs >= 2 student crops and >= the {t} teacher crops, got {v}")
    student, teacher, center = (x.astype(jnp.float32) for x in (student, teacher, center))
    log_ps = jax.nn.log_softmax(student / student_temp, axis=-1)
    p_t = jax.nn.softmax((teacher - center) / teacher_temp, axis=-1)
    return cross_crop_entropy(p_t, log_ps, jnp.arange(t)), p_t


def cross_crop_entropy(
    targets: jax.Array, log_probs: jax.Array, target_crops: jax.Array
) -> jax.Array:
    """The mean cross-entropy between each target crop and every other crop (DINO, SwAV):

        L = mean_{a, v != c_a} mean_b sum_k -targets[a, b, k] log_probs[v, b, k]

    Args:
      targets: [A, B, K] distributions of A crops (DINO's teacher outputs, SwAV's codes).
      log_probs: [V, B, K] log-probabilities of every crop, crop-major.
      target_crops: [A] the crop index c_a of each target in ``log_probs``; that pair (a
        crop against itself) is left out.
    """
    chex.assert_rank([targets, log_probs, target_crops], [3, 3, 1])
    chex.assert_equal_shape([targets[0], log_probs[0]])
    targets, log_probs = targets.astype(jnp.float32), log_probs.astype(jnp.float32)
    ce = -jnp.einsum("abk,vbk->av", targets, log_probs) / log_probs.shape[1]  # [A, V]
    valid = 1.0 - jax.nn.one_hot(target_crops, log_probs.shape[0], dtype=jnp.float32)
    return jnp.sum(ce * valid) / jnp.sum(valid)


NCE_EPS = 1e-7  # lemniscate lib/NCECriterion.py's eps


def nce(probs: jax.Array, num_data: int) -> jax.Array:
    """InstDisc's noise-contrastive estimation (Wu et al. 2018, eq. 6; lemniscate
    NCECriterion), with P_n = 1/N uniform noise and K noise samples per example:

        h(i, v) = P(i|v) / (P(i|v) + K P_n)
        L = -(1/B) [ sum_b log h(pos_b, v_b) + sum_{b, j} log(1 - h(neg_bj, v_b)) ]

    Args:
      probs: [B, 1 + K] the model's P(i|v) = exp(w_i . v / T) / Z; column 0 the positive.
      num_data: N, the memory bank's rows.
    """
    chex.assert_rank(probs, 2)
    probs = probs.astype(jnp.float32)
    k, noise = probs.shape[1] - 1, 1.0 / num_data
    log_pos = jnp.log(probs[:, 0] / (probs[:, 0] + k * noise + NCE_EPS))
    log_neg = jnp.log(k * noise / (probs[:, 1:] + k * noise + NCE_EPS))
    return -(jnp.sum(log_pos) + jnp.sum(log_neg)) / probs.shape[0]


def sinkhorn_knopp(
    scores: jax.Array, epsilon: float, iterations: int, valid: jax.Array | None = None
) -> jax.Array:
    """SwAV's equipartitioned soft codes of N samples over K prototypes (no gradient).

    Q = exp(scores / epsilon), scaled to sum 1, then ``iterations`` times: each
    prototype's column of Q scaled to total 1/K, each sample's row to total 1/N; the
    result is N * Q, whose rows sum to 1 (main_swav.py distributed_sinkhorn, written
    there as Q^T [K, N], in the same order of divisions). In the global view N is the
    whole global batch (plus the queue), the reference's all-reduced sums.

    Args:
      scores: [N, K] prototype scores z . c (cosines: the codes' exp stays finite).
      epsilon: the entropy regularisation (0.05).
      iterations: Sinkhorn-Knopp iterations (3).
      valid: optional [N] 0/1 weights; rows with 0 (a queue not yet full) take no part
        and get zero codes, and N counts the valid rows only.

    Returns:
      [N, K] float32 codes.
    """
    chex.assert_rank(scores, 2)
    q = jnp.exp(jax.lax.stop_gradient(scores).astype(jnp.float32) / epsilon)  # [N, K]
    n = jnp.asarray(q.shape[0], jnp.float32)
    if valid is not None:
        valid = valid.astype(jnp.float32)
        q, n = q * valid[:, None], jnp.sum(valid)
    k = q.shape[1]
    q = q / jnp.sum(q)
    for _ in range(iterations):
        q = q / jnp.sum(q, axis=0, keepdims=True)  # each prototype's total weight ...
        q = q / k  # ... is 1/K
        row = jnp.sum(q, axis=1, keepdims=True)
        q = q / jnp.where(row > 0, row, 1.0)  # each sample's total weight ...
        q = q / n  # ... is 1/N
    return q * n


def normalize_patches(target: jax.Array, eps: float = 1e-6) -> jax.Array:
    """MAE's norm_pix_loss target: each patch ``[..., P]`` standardised by its own mean and
    *unbiased* variance, ``(t - mean) / sqrt(var + eps)`` (models_mae.forward_loss uses
    ``torch.Tensor.var``, whose default is the unbiased estimator, divisor P - 1)."""
    target = target.astype(jnp.float32)
    mean, std = _patch_stats(target, eps)
    return (target - mean) / std


def masked_patch_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """MAE's loss (models_mae.forward_loss): per-patch mean squared error over the p*p*3
    values, averaged over the removed patches only (``mask`` 1 = removed):

        L = sum_{b,n} mask[b,n] mean_j (pred[b,n,j] - target[b,n,j])^2 / sum_{b,n} mask[b,n]

    ``pred``, ``target``: [B, N, P]; ``mask``: [B, N]. The target is used as given (apply
    ``normalize_patches`` first for norm_pix_loss); wrap it in ``stop_gradient`` upstream
    if it depends on parameters.
    """
    chex.assert_rank([pred, target, mask], [3, 3, 2])
    chex.assert_equal_shape([pred, target])
    chex.assert_equal_shape_prefix([pred, mask], 2)
    pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
    per_patch = jnp.mean(jnp.square(pred - target), axis=-1)  # [B, N]
    mask = mask.astype(jnp.float32)
    return jnp.sum(per_patch * mask) / jnp.sum(mask)


def denormalize_patches(pred: jax.Array, target: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Inverse of ``normalize_patches`` with the *target* patch's statistics: a
    norm_pix_loss prediction ``[..., P]`` mapped to the target's pixel units,
    ``pred * sqrt(var(t) + eps) + mean(t)`` (unbiased var; metrics and figures only)."""
    mean, std = _patch_stats(target.astype(jnp.float32), eps)
    return pred.astype(jnp.float32) * std + mean


def _patch_stats(target: jax.Array, eps: float) -> tuple[jax.Array, jax.Array]:
    """Per-patch mean and ``sqrt(unbiased var + eps)`` over the last axis."""
    mean = jnp.mean(target, axis=-1, keepdims=True)
    return mean, jnp.sqrt(jnp.var(target, axis=-1, keepdims=True, ddof=1) + eps)
