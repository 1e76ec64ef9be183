"""Mixup / CutMix against a NumPy transcription of timm's Mixup (mode='batch'): the box
and its lam correction, the image mixing, the soft targets and label smoothing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.data.mix import MixConfig, cutmix_box, mix_batch, smooth_one_hot

B, H, W, K = 8, 16, 12, 10


def np_rand_bbox(lam, cy, cx, img_h, img_w):
    """timm rand_bbox (margin 0) with the centre given, then cutmix_bbox_and_lam's
    correct_lam."""
    ratio = np.sqrt(1 - lam)
    cut_h, cut_w = int(img_h * ratio), int(img_w * ratio)
    yl = np.clip(cy - cut_h // 2, 0, img_h)
    yh = np.clip(cy + cut_h // 2, 0, img_h)
    xl = np.clip(cx - cut_w // 2, 0, img_w)
    xh = np.clip(cx + cut_w // 2, 0, img_w)
    lam = 1.0 - (yh - yl) * (xh - xl) / float(img_h * img_w)
    return (yl, yh, xl, xh), lam


def np_mixup_target(target, num_classes, lam, smoothing):
    """timm mixup_target: smoothed one-hot of y and of y.flip(0), mixed with lam."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    y1 = np.full((len(target), num_classes), off)
    y1[np.arange(len(target)), target] = on
    y2 = y1[::-1]
    return y1 * lam + y2 * (1.0 - lam)


def _batch():
    # Every image constant and distinct, so a pasted pixel always changes value.
    images = jnp.broadcast_to(jnp.arange(B, dtype=jnp.float32)[:, None, None, None], (B, H, W, 3))
    labels = jnp.asarray([0, 1, 2, 3, 4, 5, 6, 9], jnp.int32)
    return images, labels


def test_cutmix_box_and_lam_match_timm():
    for lam in (0.0, 0.1, 0.37, 0.5, 0.93, 0.999):
        for cy, cx in ((0, 0), (7, 5), (15, 11), (3, 10)):
            box, lam_np = np_rand_bbox(lam, cy, cx, H, W)
            *ours, lam_ours = cutmix_box(jnp.float32(lam), jnp.int32(cy), jnp.int32(cx), H, W)
            assert tuple(int(v) for v in ours) == tuple(int(v) for v in box), (lam, cy, cx)
            np.testing.assert_allclose(float(lam_ours), lam_np, rtol=1e-6)


def test_label_smoothing_values():
    t = np.asarray(smooth_one_hot(jnp.asarray([3, 0]), 10, 0.1))
    np.testing.assert_allclose(t[0, 3], 1 - 0.1 + 0.01, rtol=1e-6)  # on = 1 - eps + eps / K
    np.testing.assert_allclose(np.delete(t[0], 3), 0.01, rtol=1e-6)  # off = eps / K
    np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)


def test_no_mixing_is_label_smoothing_only():
    images, labels = _batch()
    out, targets, lam = mix_batch(jax.random.key(0), images, labels, K, MixConfig(smoothing=0.1))
    np.testing.assert_array_equal(out, images)
    assert float(lam) == 1.0
    np.testing.assert_allclose(targets, np_mixup_target(np.asarray(labels), K, 1.0, 0.1), 1e-6)


def test_mixup_blends_the_batch_with_its_reverse():
    images, labels = _batch()
    cfg = MixConfig(mixup_alpha=0.8, smoothing=0.1)
    out, targets, lam = mix_batch(jax.random.key(1), images, labels, K, cfg)
    lam = float(lam)
    assert 0.0 < lam < 1.0
    np.testing.assert_allclose(out, lam * images + (1 - lam) * images[::-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(targets, np_mixup_target(np.asarray(labels), K, lam, 0.1), 1e-5)
    np.testing.assert_allclose(np.asarray(targets).sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cutmix_pastes_one_box_of_the_reverse_and_corrects_lam(seed):
    images, labels = _batch()
    cfg = MixConfig(cutmix_alpha=1.0, smoothing=0.0)
    out, targets, lam = mix_batch(jax.random.key(seed), images, labels, K, cfg)
    out, images = np.asarray(out), np.asarray(images)
    pasted = out[..., 0] != images[..., 0]  # [B, H, W]
    assert (pasted == pasted[0]).all()  # one box for the whole batch
    np.testing.assert_array_equal(out[pasted], images[::-1][pasted])
    np.testing.assert_array_equal(out[~pasted], images[~pasted])
    rows, cols = np.nonzero(pasted[0])
    area = pasted[0].sum()
    if area:  # a rectangle
        assert area == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    np.testing.assert_allclose(float(lam), 1.0 - area / (H * W), rtol=1e-6)
    np.testing.assert_allclose(
        targets, np_mixup_target(np.asarray(labels), K, float(lam), 0.0), 1e-5
    )


def test_switch_prob_and_mix_prob_pick_cutmix_mixup_or_nothing():
    images, labels = _batch()
    cfg = MixConfig(mixup_alpha=0.8, cutmix_alpha=1.0, mix_prob=0.8, switch_prob=0.5)
    run = jax.jit(jax.vmap(lambda key: mix_batch(key, images, labels, K, cfg)[0]))
    out = np.asarray(run(jax.random.split(jax.random.key(5), 400)))  # [400, B, H, W, 3]
    first = out[:, 0, ..., 0]  # image 0 is 0, its partner 7
    unchanged = np.all(first == 0.0, axis=(1, 2))
    cut = ~unchanged & np.all(np.isin(first, (0.0, 7.0)), axis=(1, 2))
    mixed = ~unchanged & ~cut
    # P(no mix) = 0.2 (+ a zero-area box); P(cutmix) = P(mixup) = 0.4.
    assert 0.13 < unchanged.mean() < 0.3
    assert 0.3 < mixed.mean() < 0.5
    assert 0.28 < cut.mean() < 0.5


def test_odd_batch_is_rejected():
    images, labels = _batch()
    with pytest.raises(ValueError, match="even batch, got 7"):
        mix_batch(jax.random.key(0), images[:7], labels[:7], K, MixConfig(mixup_alpha=1.0))
