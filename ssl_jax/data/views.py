"""Turn one image into its augmented, normalised views: same-size views or multi-crop.

``input.views`` is a ConfigDict of named views (``view1``, ``view2``, ...), each a keyed
augmentation config (``recipes.AUGMENT_KEYS``). Views are ordered by name with numbers
compared as numbers (view2 before view10). View ``v`` (its position in that order) gets its
own seed, ``fold_in(example_seed, v)``, so two views of one image differ even with equal
parameters, and asymmetric recipes (BYOL: blur 1.0 vs 0.1) are just different keys per view.

A view's optional ``size`` key is its output side; 0 or absent means ``input.image_size``.

* All views at ``input.image_size``: they are stacked into ``views [V, S, S, 3]``.
* Multi-crop (DINO, Caron et al. 2021, arXiv:2104.14294; facebookresearch/dino main_dino.py
  DataAugmentationDINO: 2 global crops at 224 and ``local_crops_number`` local crops at 96):
  views at ``input.image_size`` are *global*, all others *local*, and every local view must
  have the same size (one array per group). The result is ``global_views [G, S, S, 3]`` and
  ``local_views [L, s, s, 3]``, each group in view-name order.

Seeds are indexed over all views, whatever their group, so adding local views leaves the
global views' randomness unchanged (with view1..viewG global, as ``set_multicrop`` names
them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from ssl_jax.data import augment as aug
from ssl_jax.data import recipes


def _natural_key(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def view_names(views_cfg: Mapping[str, Any]) -> list[str]:
    """The view names in order: view1, view2, ..., view10 (numbers compared as numbers)."""
    names = sorted(views_cfg.keys(), key=_natural_key)
    if not names:
        raise ValueError("input.views is empty; define at least one view, e.g. views.view1")
    return names


def view_size(view_cfg: Mapping[str, Any], image_size: int) -> int:
    """The output side of a view: its ``size`` key, or ``image_size`` if 0 or absent."""
    return view_cfg.get("size", 0) or image_size


def split_global_local(
    views_cfg: Mapping[str, Any], image_size: int
) -> tuple[list[str], list[str]]:
    """``(global names, local names)``, each in view order; fails on inconsistent sizes.

    Global views have the size ``image_size``; local views must all share one smaller size.
    """
    names = view_names(views_cfg)
    sizes = {name: view_size(views_cfg[name], image_size) for name in names}
    global_names = [n for n in names if sizes[n] == image_size]
    local_names = [n for n in names if sizes[n] != image_size]
    if not global_names:
        raise ValueError(
            f"input.views has no global view of input.image_size={image_size}; view sizes: "
            f"{sizes}. Set size=0 on the global views."
        )
    local_sizes = {sizes[n] for n in local_names}
    if len(local_sizes) > 1:
        raise ValueError(
            "multi-crop: every local view must have the same size (they are stacked into "
            f"one local_views array), got { ({n: sizes[n] for n in local_names}) } "
            f"(global views {global_names} at input.image_size={image_size})"
        )
    if local_sizes and max(local_sizes) > image_size:
        raise ValueError(
            f"multi-crop: local views {local_names} have size {max(local_sizes)}, larger than "
            f"the global input.image_size={image_size}"
        )
    return global_names, local_names


def check_views_config(views_cfg: Mapping[str, Any], image_size: int | None = None) -> None:
    """Validates every view's keys and values, naming the view that is wrong.

    With ``image_size``, also checks that the views form one global and at most one local
    size group (``split_global_local``).
    """
    for name in view_names(views_cfg):
        recipes.check_augment_config(views_cfg[name], where=f"input.views.{name}")
    if image_size is not None:
        split_global_local(views_cfg, image_size)


def view_seed(example_seed: tf.Tensor, view_index: int) -> tf.Tensor:
    """The ``[2]`` seed of view ``view_index`` of an example."""
    return tf.random.experimental.stateless_fold_in(example_seed, view_index)


def _view(
    image, example_seed, views_cfg, names, name, *, image_size, mean, std, photometric
) -> tf.Tensor:
    cfg = views_cfg[name]
    # The seed index is the position among *all* views, not within the view's group.
    seed = view_seed(example_seed, names.index(name))
    x = aug.augment(image, seed, cfg, view_size(cfg, image_size), photometric=photometric)
    if not photometric:
        # The colour ops and the normalisation run in the train step; uint8 is a quarter
        # of float32's bytes on the host->device link.
        return tf.cast(tf.round(x * 255.0), tf.uint8)  # [size, size, 3]
    return aug.normalize(x, mean, std)  # [size, size, 3]


def make_views(
    image: tf.Tensor,
    example_seed: tf.Tensor,
    views_cfg: Mapping[str, Any],
    *,
    image_size: int,
    mean,
    std,
) -> tf.Tensor:
    """uint8 ``[H,W,3]`` -> float32 ``[V, S, S, 3]``, each view augmented then normalised.

    For views of one size only; ``make_crops`` also handles multi-crop.
    """
    _, local_names = split_global_local(views_cfg, image_size)
    if local_names:
        raise ValueError(
            f"views {local_names} are not of input.image_size={image_size} (multi-crop); "
            "use make_crops"
        )
    crops = make_crops(image, example_seed, views_cfg, image_size=image_size, mean=mean, std=std)
    return crops["views"]  # [V, S, S, 3]


def make_crops(
    image: tf.Tensor,
    example_seed: tf.Tensor,
    views_cfg: Mapping[str, Any],
    *,
    image_size: int,
    mean,
    std,
    photometric: bool = True,
) -> dict[str, tf.Tensor]:
    """uint8 ``[H,W,3]`` -> ``{'views': [V,S,S,3]}`` if all views have the input size, else
    ``{'global_views': [G,S,S,3], 'local_views': [L,s,s,3]}`` (float32, normalised).

    ``photometric=False`` (``input.augment_on_device``): each view is only cropped and
    flipped, with the same seeds, and returned as uint8 0..255 (rounded) without
    normalisation; ``device_augment.augment_batch`` does the rest in the train step.
    """
    global_names, local_names = split_global_local(views_cfg, image_size)
    names = view_names(views_cfg)
    kw = dict(image_size=image_size, mean=mean, std=std, photometric=photometric)

    def stack(group: list[str]) -> tf.Tensor:
        return tf.stack([_view(image, example_seed, views_cfg, names, n, **kw) for n in group])

    if not local_names:
        return {"views": stack(global_names)}  # [V, S, S, 3]
    return {"global_views": stack(global_names), "local_views": stack(local_names)}
