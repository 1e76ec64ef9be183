"""Per-view image augmentation in TensorFlow, with stateless randomness.

Every random draw comes from ``tf.random.stateless_*`` keyed by an explicit seed, so an
example's augmentation is a pure function of ``(seed, epoch, position)`` (the pipeline builds
that seed). This is what makes a resumed run see exactly the images of an uninterrupted run.
Each operation gets its own sub-seed (``stateless_split``), so switching one op off or changing
its probability does not change the randomness of the others.

``augment`` applies, in this order (SimCLR / MoCo v2 order):

1. random resized crop with torchvision semantics (10 tries of area ~ U(crop_scale) and
   log-uniform aspect ratio, else a center crop clamped to ``crop_ratio``), resized to S x S;
2. horizontal flip with ``flip_p``;
3. colour jitter with ``jitter_p``: brightness, contrast, saturation, hue in a random order
   (torchvision ColorJitter, SimCLR ``color_jitter_rand``), each factor ~ U[1-s, 1+s];
4. grayscale with ``grayscale_p`` (ITU-R 601 luma, as torchvision and tf.image);
5. Gaussian blur with ``blur_p``: sigma ~ U(blur_sigma), separable kernel of 2*(S//10//2)+1
   taps (SimCLR's ``height // 10``), reflect padding (torchvision) instead of SimCLR's zeros;
6. solarize with ``solarize_p`` (x -> 1 - x where x >= 0.5, BYOL).

With ``input.augment_on_device`` the host stops after step 2 and steps 3-6 (and the
normalisation) run on the accelerator inside the train step (``device_augment.py``).

A recipe (``recipes.py``) is only the augmentation. The output side is the ``image_size``
argument; a view config's optional ``size`` key (0 or absent: ``input.image_size``) is
resolved by ``views.py``, which is where multi-crop's global and local views are told apart.
The blur kernel follows the output size (SimCLR's S // 10), so a 96 px local crop gets a
9-tap kernel.

Differences from the references: MoCo v1 applies grayscale before colour jitter; here jitter
always comes first (jitter on an already-gray image would change only brightness/contrast, so
the distributions differ only slightly). Resizing is bilinear with antialiasing (PIL-like),
not the bicubic of SimCLR and DINO. DINO's (and BYOL's) sigma ~ U(0.1, 2.0) is the same, but
PIL's GaussianBlur (DINO) sizes its kernel from sigma, while here it follows the output size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import tensorflow as tf

_CROP_TRIES = 10  # torchvision RandomResizedCrop.get_params


# ----------------------------------------------------------------------------- ops


def _uniform(seed: tf.Tensor, lo: float, hi: float, shape=()) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, minval=lo, maxval=hi)


def _maybe(seed: tf.Tensor, p: float, fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor):
    """``fn(x)`` with probability ``p``; p=0 / p=1 are decided when tracing (no cond)."""
    if p <= 0.0:
        return x
    if p >= 1.0:
        return fn(x)
    return tf.cond(_uniform(seed, 0.0, 1.0) < p, lambda: fn(x), lambda: x)


def _crop_window(seed, height, width, scale, ratio):
    """torchvision RandomResizedCrop.get_params: ``(top, left, h, w)`` as int32 scalars."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = _uniform(seeds[0], scale[0], scale[1], [_CROP_TRIES]) * h_f * w_f
    log_ratio = _uniform(seeds[1], math.log(ratio[0]), math.log(ratio[1]), [_CROP_TRIES])
    aspect = tf.exp(log_ratio)
    w = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)  # [tries]
    h = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)  # first try that fits
    h_try, w_try = h[first], w[first]
    u = _uniform(seeds[2], 0.0, 1.0, [2])
    top_try = tf.cast(tf.floor(u[0] * tf.cast(height - h_try + 1, tf.float32)), tf.int32)
    left_try = tf.cast(tf.floor(u[1] * tf.cast(width - w_try + 1, tf.float32)), tf.int32)

    # Fallback: the whole image, narrowed to the nearest allowed aspect ratio, centred.
    in_ratio = w_f / h_f
    w_fb = tf.where(
        in_ratio > ratio[1], tf.cast(tf.round(h_f * ratio[1]), tf.int32), tf.cast(width, tf.int32)
    )
    h_fb = tf.where(
        in_ratio < ratio[0], tf.cast(tf.round(w_f / ratio[0]), tf.int32), tf.cast(height, tf.int32)
    )
    ok = tf.reduce_any(fits)
    h_out = tf.where(ok, h_try, h_fb)
    w_out = tf.where(ok, w_try, w_fb)
    top = tf.where(ok, top_try, (height - h_fb) // 2)
    left = tf.where(ok, left_try, (width - w_fb) // 2)
    return top, left, h_out, w_out


def _resize(image: tf.Tensor, size: tuple[int, int] | tf.Tensor) -> tf.Tensor:
    # Antialiased bilinear ~ PIL's resize used by torchvision; works on uint8, returns float.
    return tf.image.resize(image, size, method="bilinear", antialias=True)


def random_resized_crop(
    image: tf.Tensor, seed: tf.Tensor, image_size: int, scale, ratio
) -> tf.Tensor:
    """uint8 ``[H,W,3]`` -> float32 ``[S,S,3]`` in 0..1."""
    shape = tf.shape(image)
    top, left, h, w = _crop_window(seed, shape[0], shape[1], scale, ratio)
    crop = tf.slice(image, tf.stack([top, left, 0]), tf.stack([h, w, 3]))
    out = _resize(crop, (image_size, image_size)) / 255.0
    return tf.clip_by_value(tf.ensure_shape(out, [image_size, image_size, 3]), 0.0, 1.0)


def _gray(x: tf.Tensor) -> tf.Tensor:
    return tf.image.rgb_to_grayscale(x)  # [H, W, 1], ITU-R 601 luma


def to_grayscale(x: tf.Tensor) -> tf.Tensor:
    return tf.tile(_gray(x), [1, 1, 3])


def _blend(x: tf.Tensor, other: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    # torchvision's _blend: factor * x + (1 - factor) * other, clamped.
    return tf.clip_by_value(factor * x + (1.0 - factor) * other, 0.0, 1.0)


def _factor(seed: tf.Tensor, strength: float) -> tf.Tensor:
    return _uniform(seed, max(0.0, 1.0 - strength), 1.0 + strength)


def color_jitter(
    x: tf.Tensor,
    seed: tf.Tensor,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
) -> tf.Tensor:
    """torchvision ColorJitter on float 0..1: the four adjustments in a random order."""
    seeds = tf.random.experimental.stateless_split(seed, 5)
    ops = []
    if brightness > 0:
        ops.append(lambda x: _blend(x, tf.zeros_like(x), _factor(seeds[0], brightness)))
    if contrast > 0:
        ops.append(lambda x: _blend(x, tf.reduce_mean(_gray(x)), _factor(seeds[1], contrast)))
    if saturation > 0:
        ops.append(lambda x: _blend(x, _gray(x), _factor(seeds[2], saturation)))
    if hue > 0:
        ops.append(
            lambda x: tf.clip_by_value(tf.image.adjust_hue(x, _uniform(seeds[3], -hue, hue)), 0, 1)
        )
    if not ops:
        return x
    order = tf.argsort(_uniform(seeds[4], 0.0, 1.0, [len(ops)]))  # a random permutation

    # A loop traces each op once; unrolling it would trace len(ops)**2 branches per view,
    # which made building a multi-crop pipeline (10 views) slow.
    def step(k, x):
        x = tf.switch_case(tf.gather(order, k), [lambda op=op: op(x) for op in ops])
        return k + 1, tf.ensure_shape(x, x_shape)

    x_shape = x.shape
    _, x = tf.while_loop(lambda k, _: k < len(ops), step, (tf.constant(0), x))
    return x


def blur_radius(image_size: int) -> int:
    """SimCLR: kernel_size = height // 10, radius = kernel_size // 2 (23 taps at 224)."""
    return (image_size // 10) // 2


def gaussian_blur(x: tf.Tensor, sigma: tf.Tensor, radius: int) -> tf.Tensor:
    """Separable Gaussian blur of ``[H,W,3]`` with ``2*radius+1`` taps, reflect padding."""
    if radius <= 0:
        return x
    taps = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-(taps**2) / (2.0 * sigma**2))
    kernel = kernel / tf.reduce_sum(kernel)
    k = 2 * radius + 1
    channels = 3
    kernel_v = tf.tile(tf.reshape(kernel, [k, 1, 1, 1]), [1, 1, channels, 1])
    kernel_h = tf.tile(tf.reshape(kernel, [1, k, 1, 1]), [1, 1, channels, 1])
    padded = tf.pad(x[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
    out = tf.nn.depthwise_conv2d(padded, kernel_h, [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, kernel_v, [1, 1, 1, 1], "VALID")
    return out[0]


def solarize(x: tf.Tensor, threshold: float = 0.5) -> tf.Tensor:
    return tf.where(x < threshold, x, 1.0 - x)


def augment(
    image: tf.Tensor,
    seed: tf.Tensor,
    cfg: Mapping[str, Any],
    image_size: int,
    *,
    photometric: bool = True,
) -> tf.Tensor:
    """One augmented view: uint8 ``[H,W,3]`` -> float32 ``[S,S,3]`` in 0..1.

    ``seed`` is a ``[2]`` int tensor; the result is a pure function of (image, seed, cfg).
    ``photometric=False`` stops after the crop and flip (steps 1-2, the same draws): the
    rest runs in the train step (``device_augment.py``, ``input.augment_on_device``).
    """
    seeds = tf.random.experimental.stateless_split(seed, 9)  # one row per random decision
    x = random_resized_crop(image, seeds[0], image_size, cfg["crop_scale"], cfg["crop_ratio"])
    x = _maybe(seeds[1], cfg["flip_p"], lambda x: tf.reverse(x, axis=[1]), x)
    if not photometric:
        return tf.ensure_shape(x, [image_size, image_size, 3])
    jitter = lambda x: color_jitter(
        x, seeds[3], cfg["brightness"], cfg["contrast"], cfg["saturation"], cfg["hue"]
    )
    x = _maybe(seeds[2], cfg["jitter_p"], jitter, x)
    x = _maybe(seeds[4], cfg["grayscale_p"], to_grayscale, x)
    radius = blur_radius(image_size)
    if radius > 0:
        lo, hi = cfg["blur_sigma"]
        blur = lambda x: gaussian_blur(x, _uniform(seeds[6], lo, hi), radius)
        x = _maybe(seeds[5], cfg["blur_p"], blur, x)
    x = _maybe(seeds[7], cfg["solarize_p"], solarize, x)
    return tf.clip_by_value(tf.ensure_shape(x, [image_size, image_size, 3]), 0.0, 1.0)


# ----------------------------------------------------------------------------- eval + norm


def eval_preprocess(image: tf.Tensor, image_size: int, crop_fraction: float) -> tf.Tensor:
    """Deterministic eval view: uint8 ``[H,W,3]`` -> float32 ``[S,S,3]`` in 0..1.

    ``crop_fraction < 1``: ImageNet style, resize the shorter side to ``S / crop_fraction``
    (256 for 224 at 0.875) and take the central S x S. ``crop_fraction == 1``: resize the
    whole image to S x S (CIFAR/digits, whose images are already the training size).
    """
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"eval_crop_fraction={crop_fraction} must be in (0, 1]")
    if crop_fraction >= 1.0:
        out = _resize(image, (image_size, image_size))
    else:
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        short = round(image_size / crop_fraction)
        # torchvision Resize(int): the long side is truncated, not rounded.
        new = tf.cast(tf.floor(shape * short / tf.reduce_min(shape)), tf.int32)
        new = tf.maximum(new, short)  # guards against float error on the short side
        resized = _resize(image, new)
        top = tf.cast(tf.round(tf.cast(new[0] - image_size, tf.float32) / 2.0), tf.int32)
        left = tf.cast(tf.round(tf.cast(new[1] - image_size, tf.float32) / 2.0), tf.int32)
        out = tf.slice(resized, tf.stack([top, left, 0]), [image_size, image_size, 3])
    out = tf.ensure_shape(out / 255.0, [image_size, image_size, 3])
    return tf.clip_by_value(out, 0.0, 1.0)


def normalize(x: tf.Tensor, mean, std) -> tf.Tensor:
    """``(x - mean) / std`` per channel; mean and std are on the 0..1 scale."""
    mean = tf.constant(mean, tf.float32)
    std = tf.constant(std, tf.float32)
    return (x - mean) / std
