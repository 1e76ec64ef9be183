"""Augmentation recipes: the keyed per-view config of each paper's augmentation, and its
validation. ``augment.py`` applies a recipe; this file only says what each paper uses, with
the source beside each recipe.

A view config has the keys of ``AUGMENT_KEYS`` (``input.views.<name>.<key>``), so a flag can
change one parameter of one view (``--config.input.views.view2.solarize_p=0.2``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

AUGMENT_KEYS = (
    "crop_scale",
    "crop_ratio",
    "flip_p",
    "jitter_p",
    "brightness",
    "contrast",
    "saturation",
    "hue",
    "grayscale_p",
    "blur_p",
    "blur_sigma",
    "solarize_p",
    "size",
)
# May be absent from a view config (configs written before multi-crop); absent means 0.
_OPTIONAL_KEYS = ("size",)
_PROBABILITY_KEYS = ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p")
_RANGE_KEYS = ("crop_scale", "crop_ratio", "blur_sigma")

# torchvision defaults, used where a recipe does not say otherwise.
_DEFAULTS = dict(
    crop_scale=(0.08, 1.0),
    crop_ratio=(3 / 4, 4 / 3),
    flip_p=0.5,
    jitter_p=0.0,
    brightness=0.0,
    contrast=0.0,
    saturation=0.0,
    hue=0.0,
    grayscale_p=0.0,
    blur_p=0.0,
    blur_sigma=(0.1, 2.0),
    solarize_p=0.0,
    size=0,  # output side in pixels; 0: input.image_size (a global view), see views.py
)


def _simclr_strength(s: float) -> dict[str, float]:
    # SimCLR tf2/data_util.py color_jitter: (0.8s, 0.8s, 0.8s, 0.2s), applied with p=0.8.
    return dict(jitter_p=0.8, brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s, hue=0.2 * s)


# MoCo v2's colour part (ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8, RandomGrayscale(0.2)), also
# in the MoCo CIFAR demo and SimSiam's CIFAR recipe.
_MOCO_V2_COLOUR = dict(
    jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, grayscale_p=0.2
)

# BYOL and DINO share the colour part (jitter (0.4, 0.4, 0.2, 0.1) p=0.8, grayscale 0.2) and
# the blur sigma range; the views differ in blur / solarize probabilities and crop scale.
_DINO_COMMON = dict(
    jitter_p=0.8,
    brightness=0.4,
    contrast=0.4,
    saturation=0.2,
    hue=0.1,
    grayscale_p=0.2,
    blur_sigma=(0.1, 2.0),
)
_BYOL_COMMON = dict(crop_scale=(0.08, 1.0), **_DINO_COMMON)


RECIPES: dict[str, dict[str, Any]] = {
    # MoCo v1 (He et al. 2019, arXiv:1911.05722), facebookresearch/moco main_moco.py without
    # --aug-plus (InstDisc's augmentation): RandomResizedCrop(scale=(0.2, 1)),
    # RandomGrayscale(0.2), ColorJitter(0.4, 0.4, 0.4, 0.4) always, RandomHorizontalFlip.
    "moco_v1": dict(
        crop_scale=(0.2, 1.0),
        jitter_p=1.0,
        brightness=0.4,
        contrast=0.4,
        saturation=0.4,
        hue=0.4,
        grayscale_p=0.2,
    ),
    # MoCo v2 (Chen et al. 2020, arXiv:2003.04297), main_moco.py --aug-plus:
    # RandomResizedCrop(scale=(0.2, 1)), ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8,
    # RandomGrayscale(0.2), GaussianBlur(sigma in [0.1, 2]) p=0.5, RandomHorizontalFlip.
    "moco_v2": dict(
        crop_scale=(0.2, 1.0),
        **_MOCO_V2_COLOUR,
        blur_p=0.5,
        blur_sigma=(0.1, 2.0),
    ),
    # SimCLR (Chen et al. 2020, arXiv:2002.05709) ImageNet, google-research/simclr
    # tf2/data_util.py: crop area (0.08, 1), aspect (3/4, 4/3), flip, colour strength s=1
    # (0.8, 0.8, 0.8, 0.2) p=0.8, grayscale 0.2, blur p=0.5 with sigma ~ U(0.1, 2.0).
    "simclr": dict(
        crop_scale=(0.08, 1.0),
        **_simclr_strength(1.0),
        grayscale_p=0.2,
        blur_p=0.5,
        blur_sigma=(0.1, 2.0),
    ),
    # SimCLR CIFAR-10 command of the simclr README: --color_jitter_strength=0.5
    # --use_blur=False (paper appendix B.9: no blur on CIFAR).
    "simclr_cifar": dict(crop_scale=(0.08, 1.0), **_simclr_strength(0.5), grayscale_p=0.2),
    # MoCo CIFAR-10 demo, facebookresearch/moco colab/moco_cifar10_demo.ipynb:
    # RandomResizedCrop(32) (default scale (0.08, 1)), flip 0.5, ColorJitter(0.4, 0.4, 0.4,
    # 0.1) p=0.8, RandomGrayscale(0.2), no blur. (Numerically equal to simclr_cifar.)
    "moco_cifar": dict(crop_scale=(0.08, 1.0), **_MOCO_V2_COLOUR),
    # BYOL (Grill et al. 2020, arXiv:2006.07733) Table 6, deepmind-research
    # byol/utils/augmentations.py augment_config: random crop area (0.08, 1), aspect
    # (3/4, 4/3), flip 0.5, colour jitter (0.4, 0.4, 0.2, 0.1) p=0.8 in a random order,
    # grayscale p=0.2, blur sigma ~ U(0.1, 2.0) with p=1.0 (view1) / 0.1 (view2),
    # solarize p=0.0 (view1) / 0.2 (view2).
    "byol_view1": dict(**_BYOL_COMMON, blur_p=1.0, solarize_p=0.0),
    "byol_view2": dict(**_BYOL_COMMON, blur_p=0.1, solarize_p=0.2),
    # SimSiam CIFAR-10 (Chen & He 2020, arXiv:2011.10566, appendix "CIFAR experiments"):
    # MoCo v2's augmentation (facebookresearch/simsiam main_simsiam.py) without blur, crop
    # area (0.2, 1): ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8, RandomGrayscale(0.2), flip.
    "simsiam_cifar": dict(crop_scale=(0.2, 1.0), **_MOCO_V2_COLOUR),
    # MAE (He et al. 2021, arXiv:2111.06377), facebookresearch/mae main_pretrain.py:
    # RandomResizedCrop(scale=(0.2, 1.0)) and RandomHorizontalFlip only.
    "mae": dict(crop_scale=(0.2, 1.0)),
    # DINO (Caron et al. 2021, arXiv:2104.14294), facebookresearch/dino main_dino.py
    # DataAugmentationDINO: flip 0.5, ColorJitter(0.4, 0.4, 0.2, 0.1) p=0.8, grayscale 0.2;
    # global crops scale (0.4, 1) (--global_crops_scale), blur p=1.0 / 0.1, solarize p=0 /
    # 0.2; local crops scale (0.05, 0.4) (--local_crops_scale), blur p=0.5, no solarize.
    # GaussianBlur there draws PIL's radius (its sigma) ~ U(0.1, 2.0).
    "dino_global1": dict(**_DINO_COMMON, crop_scale=(0.4, 1.0), blur_p=1.0, solarize_p=0.0),
    "dino_global2": dict(**_DINO_COMMON, crop_scale=(0.4, 1.0), blur_p=0.1, solarize_p=0.2),
    "dino_local": dict(**_DINO_COMMON, crop_scale=(0.05, 0.4), blur_p=0.5, solarize_p=0.0),
    # SwAV (Caron et al. 2020, arXiv:2006.09882), facebookresearch/swav
    # src/multicropdataset.py: RandomResizedCrop with --min/max_scale_crops (0.14, 1) for
    # the 224-px crops and (0.05, 0.14) for the 96-px ones, flip 0.5, SimCLR's colour
    # distortion at s=1 (ColorJitter(0.8, 0.8, 0.8, 0.2) p=0.8, RandomGrayscale 0.2) and
    # PILRandomGaussianBlur (p=0.5, radius ~ U(0.1, 2.0)) on every crop.
    "swav_global": dict(
        crop_scale=(0.14, 1.0), **_simclr_strength(1.0), grayscale_p=0.2, blur_p=0.5
    ),
    "swav_local": dict(
        crop_scale=(0.05, 0.14), **_simclr_strength(1.0), grayscale_p=0.2, blur_p=0.5
    ),
    # CMC (Tian et al. 2019, arXiv:1906.05849), HobbitLong/CMC train_CMC.py:
    # RandomResizedCrop(224, scale=(--crop_low 0.2, 1)) and RandomHorizontalFlip, no colour
    # augmentation (the colour channels are the views); RGB2Lab follows, in the model.
    "cmc": dict(crop_scale=(0.2, 1.0)),
    # Our own mild recipe for the 8x8 sklearn digits (no paper uses them):
    # * no flip: a mirrored 2, 3, 7 or 9 is no longer that digit;
    # * crop area (0.5, 1): an 8x8 digit cropped to 8% of its area is a few pixels of stroke;
    # * brightness/contrast 0.4 with p=0.8 as in MoCo v2; saturation, hue and grayscale are
    #   no-ops on gray images, and blur at 8 px (kernel 8//10 -> 1 tap) would be identity.
    "digits": dict(
        crop_scale=(0.5, 1.0),
        flip_p=0.0,
        jitter_p=0.8,
        brightness=0.4,
        contrast=0.4,
    ),
    # MAE fine-tuning (arXiv:2111.06377 App. A.1), main_finetune.py build_transform: timm
    # create_transform's RandomResizedCrop (default scale (0.08, 1), aspect (3/4, 4/3)) and
    # flip; its RandAugment and random erasing are not implemented here.
    "finetune": dict(crop_scale=(0.08, 1.0)),
    # MAE linear probing (App. A.2), main_linprobe.py: RandomResizedCrop(224,
    # interpolation=3) (scale (0.08, 1)) and RandomHorizontalFlip only.
    "linprobe": dict(crop_scale=(0.08, 1.0)),
}


def recipe(name: str, **overrides: Any) -> ml_collections.ConfigDict:
    """The keyed augmentation config of a paper recipe, optionally with some keys changed."""
    if name not in RECIPES:
        raise ValueError(f"unknown augmentation recipe {name!r}; valid: {', '.join(RECIPES)}")
    unknown = sorted(set(overrides) - set(AUGMENT_KEYS))
    if unknown:
        raise ValueError(f"unknown augmentation key(s) {unknown}; valid: {', '.join(AUGMENT_KEYS)}")
    cfg = ml_collections.ConfigDict({**_DEFAULTS, **RECIPES[name], **overrides})
    check_augment_config(cfg, where=f"recipe {name!r}")
    return cfg


def check_augment_config(cfg: Mapping[str, Any], where: str = "augmentation") -> None:
    """Fails naming the key and value of a missing, unknown or out-of-range parameter."""
    keys = set(cfg.keys())
    if missing := sorted(set(AUGMENT_KEYS) - set(_OPTIONAL_KEYS) - keys):
        raise ValueError(f"{where}: missing augmentation key(s) {missing}")
    if unknown := sorted(keys - set(AUGMENT_KEYS)):
        raise ValueError(f"{where}: unknown augmentation key(s) {unknown}; valid: {AUGMENT_KEYS}")
    for key in _PROBABILITY_KEYS:
        if not 0.0 <= cfg[key] <= 1.0:
            raise ValueError(f"{where}: {key}={cfg[key]} is not a probability in [0, 1]")
    for key in _RANGE_KEYS:
        lo, hi = cfg[key]
        if not 0 < lo <= hi:
            raise ValueError(f"{where}: {key}={tuple(cfg[key])} must satisfy 0 < lo <= hi")
    for key in ("brightness", "contrast", "saturation"):
        if cfg[key] < 0:
            raise ValueError(f"{where}: {key}={cfg[key]} must be >= 0")
    if not 0 <= cfg["hue"] <= 0.5:
        raise ValueError(f"{where}: hue={cfg['hue']} must be in [0, 0.5]")
    size = cfg.get("size", 0)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"{where}: size={size!r} must be an int >= 0 (0: input.image_size)")
