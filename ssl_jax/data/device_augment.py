"""The photometric augmentations in JAX, run per example inside the jitted train step.

With ``input.augment_on_device=True`` the host pipeline only crops and flips each view
(``augment.augment(..., photometric=False)``) and ships it as uint8; the train step then
applies, per view and per example, the rest of ``augment.py``'s recipe and the
normalisation. This is what the official BYOL code does (deepmind-research
byol/utils/augmentations.py: ``postprocess`` runs the colour ops on the accelerator, per
example, with ``jax.random``), so hosts with few CPU cores per accelerator are not
input-bound, and the host sends a quarter of the bytes (uint8 instead of float32).

Per view, in ``augment.py``'s order and with its semantics and its per-view keys
(``input.views.<name>``):

1. colour jitter with ``jitter_p``: brightness, contrast, saturation, hue in a random order
   (torchvision ColorJitter), each factor ~ U[max(0, 1-s), 1+s], hue delta ~ U[-h, h] added
   in HSV space exactly as ``tf.image.adjust_hue`` does, clipped to 0..1 after each op;
2. grayscale with ``grayscale_p`` (ITU-R 601 luma weights of ``tf.image.rgb_to_grayscale``);
3. Gaussian blur with ``blur_p``: sigma ~ U(blur_sigma), ``2 * blur_radius(S) + 1`` taps,
   separable, reflect padding;
4. solarize with ``solarize_p`` (x -> 1 - x where x >= 0.5);
5. ``(x - input.mean) / input.std``.

Randomness: the step's key (``train.py`` folds the step into the base key, so a resume is
exact) is folded with ``AUGMENT_TAG``, then per example with its row in the *global* batch
and with the view's index among all views (``views.view_names`` order, as the host seeds
do). Every example's result is therefore a pure function of (seed, step, row, view): the
same on 1 device or 256. Each decision has its own sub-key, so switching one op off does not
change the draws of the others.

The random order of the jitter ops: under ``vmap`` an op chosen per example is computed for
every example and selected (BYOL's ``lax.cond`` chain computes all four ops at each of the
four positions). Here brightness, contrast and saturation are one blend with a per-example
"other" image, and hue (the costly op) is computed once: blends before hue's position, hue,
blends after it (``jitter_in_order``). Two ``lax.fori_loop`` passes trace one blend each,
rather than 4 x 4 unrolled ops or 24 permutations, which keeps the step's compile time on
CPU low.

Differences from the host path (``augment.py``): the draws come from ``jax.random``, not
``tf.random.stateless_*``, so the two paths give different augmentations of one example
but the same distribution; each view is rounded to uint8 after the crop and flip (an error
of at most 0.5/255 before the colour ops; an uncropped uint8 image passes exactly); ops
whose probability is strictly between 0 and 1 are computed for every example and selected
(``jnp.where``), as any vmapped ``cond`` is. Differences from BYOL's code: its colour ops
follow ``tf.image`` (an additive brightness delta, contrast around each channel's mean,
saturation scaled in HSV); here they are torchvision's blends (brightness scales, contrast
and saturation blend with the gray mean / gray image), as in ``augment.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ssl_jax.data import augment as host_augment
from ssl_jax.data import views as views_lib

# Folded into the step's key; large so it never equals the small view / group indices that
# the methods fold into the same key for their own randomness.
AUGMENT_TAG = 0x61756721
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale (ITU-R 601)
_VIEW_KEYS = ("views", "global_views", "local_views")
# Sub-key slots of one view's key, fixed so that one op's draws never depend on another's.
_JITTER_P, _JITTER, _GRAY_P, _BLUR_P, _SIGMA, _SOLARIZE_P = range(6)


# ----------------------------------------------------------------------------- ops


def gray(x: jax.Array) -> jax.Array:
    """``[H, W, 3] -> [H, W, 1]`` luma, the weights of ``tf.image.rgb_to_grayscale``."""
    return jnp.tensordot(x, jnp.asarray(_GRAY_WEIGHTS, x.dtype), axes=[[-1], [0]])[..., None]


def to_grayscale(x: jax.Array) -> jax.Array:
    return jnp.broadcast_to(gray(x), x.shape)


def _blend(x: jax.Array, other: jax.Array, factor: jax.Array) -> jax.Array:
    # torchvision's _blend: factor * x + (1 - factor) * other, clamped.
    return jnp.clip(factor * x + (1.0 - factor) * other, 0.0, 1.0)


def adjust_hue(x: jax.Array, delta: jax.Array) -> jax.Array:
    """``tf.image.adjust_hue``: hue (on a 0..6 scale) += 6 * delta, value and range kept.

    TF's kernel (adjust_hue_op.cc: rgb_to_hv / hv_range_to_rgb) keeps each pixel's max and
    min channel and moves its hue; this is the same map in closed form.
    """
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v_max, v_min = jnp.max(x, axis=-1), jnp.min(x, axis=-1)
    chroma = v_max - v_min
    safe = jnp.where(chroma > 0, chroma, 1.0)
    h = jnp.where(
        v_max == r,
        jnp.mod((g - b) / safe, 6.0),
        jnp.where(v_max == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    h = jnp.where(chroma > 0, h, 0.0)  # gray pixels: TF sets h = 0, and chroma 0 keeps them
    h = jnp.mod(h + 6.0 * delta, 6.0)

    def channel(n: float) -> jax.Array:
        k = jnp.mod(n + h, 6.0)
        return v_max - chroma * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)

    out = jnp.stack([channel(5.0), channel(3.0), channel(1.0)], axis=-1)
    return jnp.clip(out, 0.0, 1.0)  # augment.py clips after adjust_hue


def gaussian_blur(x: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
    """Separable Gaussian blur of ``[H, W, 3]`` with ``2 * radius + 1`` taps, reflect
    padding (``augment.gaussian_blur``); shifted slices, since sigma differs per example."""
    if radius <= 0:
        return x
    taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    kernel = jnp.exp(-(taps**2) / (2.0 * sigma**2))
    kernel = kernel / jnp.sum(kernel)  # [2r+1]
    height, width = x.shape[0], x.shape[1]
    padded = jnp.pad(x, [(radius, radius), (radius, radius), (0, 0)], mode="reflect")
    rows = sum(kernel[i] * padded[:, i : i + width] for i in range(2 * radius + 1))
    return sum(kernel[i] * rows[i : i + height] for i in range(2 * radius + 1))


def solarize(x: jax.Array, threshold: float = 0.5) -> jax.Array:
    return jnp.where(x < threshold, x, 1.0 - x)


_KINDS = {name: i for i, name in enumerate(JITTER_OPS)}  # 0..2 are blends, 3 is hue


def _blend_step(x: jax.Array, kind: jax.Array, factor: jax.Array) -> jax.Array:
    """Brightness, contrast or saturation by ``kind`` (0, 1, 2), one traced program: each is
    torchvision's blend of ``x`` with black, the mean gray level, or the gray image. A
    factor of 1 is exactly the identity (``1 * x + 0 * other``)."""
    g = gray(x)  # [H, W, 1]
    other = jnp.where(kind == 0, 0.0, jnp.where(kind == 1, jnp.mean(g), g))
    return _blend(x, other, factor)


def jitter_in_order(
    x: jax.Array, ops: Sequence[str], values: jax.Array, order: jax.Array
) -> jax.Array:
    """Applies ``ops[order[0]]``, ``ops[order[1]]``, ...; ``values[i]`` parameterises
    ``ops[i]`` (a factor, or the hue delta).

    Under ``vmap`` an op chosen per example must be computed for every example; hue, the
    costly one, is computed once: blends before hue's position, hue, blends after it (the
    other positions' factors set to 1, an exact identity). Two ``fori_loop`` passes trace one
    blend each, so compilation does not grow with the 4! orders.
    """
    kinds = jnp.array([_KINDS[name] for name in ops])  # [n]
    n = len(ops)
    hue_pos = jnp.argsort(order)[ops.index("hue")] if "hue" in ops else n

    def blends(x, active):
        def body(k, x):
            op = order[k]
            on = active(k) & (kinds[op] != _KINDS["hue"])
            return _blend_step(x, kinds[op], jnp.where(on, values[op], 1.0))

        return jax.lax.fori_loop(0, n, body, x)

    x = blends(x, lambda k: k < hue_pos)
    if "hue" not in ops:
        return x
    x = adjust_hue(x, values[ops.index("hue")])
    return blends(x, lambda k: k > hue_pos)


def jitter_params(key: jax.Array, cfg: Mapping[str, Any]) -> tuple[list[str], jax.Array, jax.Array]:
    """``(enabled ops, their values [n], a random order [n])`` for one view's recipe:
    factors ~ U[max(0, 1-s), 1+s], the hue delta ~ U[-h, h]."""
    ops = [name for name in JITTER_OPS if cfg[name] > 0]
    lo = [-cfg[n] if n == "hue" else max(0.0, 1.0 - cfg[n]) for n in ops]
    hi = [cfg[n] if n == "hue" else 1.0 + cfg[n] for n in ops]
    k_values, k_order = jax.random.split(key)
    values = jax.random.uniform(k_values, (len(ops),), minval=jnp.array(lo), maxval=jnp.array(hi))
    return ops, values, jax.random.permutation(k_order, len(ops))


def _maybe(key: jax.Array, p: float, fn, x: jax.Array) -> jax.Array:
    """``fn(x)`` with probability ``p``; p = 0 / 1 are decided when tracing."""
    if p <= 0.0:
        return x
    if p >= 1.0:
        return fn(x)
    return jnp.where(jax.random.uniform(key) < p, fn(x), x)


def photometric(x: jax.Array, key: jax.Array, cfg: Mapping[str, Any]) -> jax.Array:
    """One view of one example: float ``[S, S, 3]`` in 0..1 -> the same, colour-augmented."""
    keys = jax.random.split(key, 6)
    if any(cfg[name] > 0 for name in JITTER_OPS):

        def jitter(x):
            names, values, order = jitter_params(keys[_JITTER], cfg)
            return jitter_in_order(x, names, values, order)

        x = _maybe(keys[_JITTER_P], cfg["jitter_p"], jitter, x)
    x = _maybe(keys[_GRAY_P], cfg["grayscale_p"], to_grayscale, x)
    radius = host_augment.blur_radius(x.shape[0])
    if radius > 0:
        lo, hi = cfg["blur_sigma"]
        sigma = jax.random.uniform(keys[_SIGMA], minval=lo, maxval=hi)
        x = _maybe(keys[_BLUR_P], cfg["blur_p"], lambda x: gaussian_blur(x, sigma, radius), x)
    x = _maybe(keys[_SOLARIZE_P], cfg["solarize_p"], solarize, x)
    return jnp.clip(x, 0.0, 1.0)


# ----------------------------------------------------------------------------- batches


def check_config(input_cfg: Any) -> bool:
    """``input.augment_on_device`` as a bool; fails naming a value that is not one."""
    value = input_cfg.get("augment_on_device", False)
    if not isinstance(value, bool):
        raise ValueError(f"input.augment_on_device={value!r} must be True or False")
    return value


def augment_key(step_key: jax.Array) -> jax.Array:
    """The augmentations' key of a step, from the key the step hands the method."""
    return jax.random.fold_in(step_key, AUGMENT_TAG)


def _runs(names: list[str], views_cfg: Mapping[str, Any]) -> list[tuple[int, int]]:
    """``[(start, stop)]``: consecutive views with equal recipes, traced once per run
    (DINO's local crops share one)."""
    runs, start = [], 0
    for i in range(1, len(names) + 1):
        if i == len(names) or dict(views_cfg[names[i]]) != dict(views_cfg[names[start]]):
            runs.append((start, i))
            start = i
    return runs


def _augment_group(
    views: jax.Array, key: jax.Array, views_cfg: Mapping[str, Any], names, all_names, mean, std
) -> jax.Array:
    """uint8 or 0..1 float ``[B, V, S, S, 3]`` -> normalised float32, view ``v`` with the
    recipe ``views_cfg[names[v]]``."""
    batch = views.shape[0]
    x = views.astype(jnp.float32)
    if views.dtype == jnp.uint8:
        x = x / 255.0
    rows = jnp.arange(batch)  # the global row: the batch here is the global one
    out = []
    for start, stop in _runs(names, views_cfg):
        cfg = views_cfg[names[start]]
        index = jnp.array([all_names.index(n) for n in names[start:stop]])  # [v]

        def one(image, row, view_index, cfg=cfg):
            k = jax.random.fold_in(jax.random.fold_in(key, row), view_index)
            return photometric(image, k, cfg)

        per_view = jax.vmap(one, in_axes=(0, None, 0))  # over the run's views
        out.append(jax.vmap(per_view, in_axes=(0, 0, None))(x[:, start:stop], rows, index))
    x = jnp.concatenate(out, axis=1) if len(out) > 1 else out[0]
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return (x - mean) / std  # [B, V, S, S, 3]


def augment_batch(batch: Mapping[str, jax.Array], key: jax.Array, input_cfg: Any) -> dict:
    """The batch with its view arrays (``views`` or ``global_views`` / ``local_views``)
    colour-augmented and normalised; other leaves (labels) unchanged.

    ``key`` is ``augment_key(step_key)``; the batch is the global one (inside ``jit``).
    """
    views_cfg = input_cfg.views
    all_names = views_lib.view_names(views_cfg)
    global_names, local_names = views_lib.split_global_local(views_cfg, input_cfg.image_size)
    groups = {"views": global_names, "global_views": global_names, "local_views": local_names}
    out = dict(batch)
    for name in _VIEW_KEYS:
        if name not in batch:
            continue
        if batch[name].shape[1] != len(groups[name]):
            raise ValueError(
                f"batch[{name!r}] has {batch[name].shape[1]} views but input.views gives "
                f"{groups[name]}"
            )
        out[name] = _augment_group(
            batch[name], key, views_cfg, groups[name], all_names, input_cfg.mean, input_cfg.std
        )
    return out
