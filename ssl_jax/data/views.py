"""Turn one image into its V augmented, normalised views.

``input.views`` is a ConfigDict of named views (``view1``, ``view2``, ...), each a keyed
augmentation config (``augment.AUGMENT_KEYS``). Views are ordered by name with numbers
compared as numbers (view2 before view10). View ``v`` gets its own seed,
``fold_in(example_seed, v)``, so two views of one image differ even with equal parameters,
and asymmetric recipes (BYOL: blur 1.0 vs 0.1) are just different keys per view.

Views of one size are stacked into ``[V, S, S, 3]``. Multi-crop (DINO: 2 global views at 224
and several local views at 96) fits the same scheme later: group views by output size and
stack each group (``global_views``, ``local_views``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from ssl_jax.data import augment as aug


def _natural_key(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def view_names(views_cfg: Mapping[str, Any]) -> list[str]:
    """The view names in order: view1, view2, ..., view10 (numbers compared as numbers)."""
    names = sorted(views_cfg.keys(), key=_natural_key)
    if not names:
        raise ValueError("input.views is empty; define at least one view, e.g. views.view1")
    return names


def check_views_config(views_cfg: Mapping[str, Any]) -> None:
    """Validates every view's keys and values, naming the view that is wrong."""
    for name in view_names(views_cfg):
        aug.check_augment_config(views_cfg[name], where=f"input.views.{name}")


def view_seed(example_seed: tf.Tensor, view_index: int) -> tf.Tensor:
    """The ``[2]`` seed of view ``view_index`` of an example."""
    return tf.random.experimental.stateless_fold_in(example_seed, view_index)


def make_views(
    image: tf.Tensor,
    example_seed: tf.Tensor,
    views_cfg: Mapping[str, Any],
    *,
    image_size: int,
    mean,
    std,
) -> tf.Tensor:
    """uint8 ``[H,W,3]`` -> float32 ``[V, S, S, 3]``, each view augmented then normalised."""
    views = []
    for v, name in enumerate(view_names(views_cfg)):
        x = aug.augment(image, view_seed(example_seed, v), views_cfg[name], image_size)
        views.append(aug.normalize(x, mean, std))  # [S, S, 3]
    return tf.stack(views)  # [V, S, S, 3]
