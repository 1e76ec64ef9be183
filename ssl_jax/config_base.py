"""The keys every config shares, and the data-set presets the method configs reuse.

`configs/<method>.py` builds on `base_config()` and fills in the method's presets; every
config has the same top-level keys: seed, method, model, input, optim, schedule, evals,
ckpt, log_every_steps, log, plus one section named after the method (e.g. `moco`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import ml_collections
from ml_collections import config_dict

# Channel statistics on the 0..1 scale.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# The MoCo CIFAR-10 demo's normalisation.
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
DIGITS_MEAN, DIGITS_STD = (0.3, 0.3, 0.3), (0.4, 0.4, 0.4)


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.method = ""
    c.model = dict(
        backbone="resnet18",
        stem="cifar",
        width_multiplier=1,  # ResNets: every conv this many times wider (SimCLR's 2x, 4x)
        padding="torch",  # ResNets: "torch", or TF's "same" / "same_pool" (models/resnet.py)
        bn_momentum=0.9,  # flax convention; PyTorch momentum 0.1
        bn_epsilon=1e-5,
        zero_init_residual=False,
        dtype="float32",
        head=dict(
            num_layers=2, hidden_dim=2048, out_dim=128, use_bn=False, last_bn="none", last_bias=True
        ),
        # Online-only predictor after the projection head (SimSiam, BYOL, MoCo v3);
        # num_layers=0 means none.
        predictor=dict(
            num_layers=0, hidden_dim=512, out_dim=128, use_bn=True, last_bn="none", last_bias=True
        ),
        # ViT backbones (vit_tiny/small/base/large); ignored by ResNets.
        vit=dict(
            patch_size=16,
            pos_embed="sincos",  # fixed 2-D sin-cos (MoCo v3's; "sincos_mae": MAE's) or "learned"
            drop_path=0.0,  # stochastic depth at the last block, linear in depth
            frozen_patch_embed=False,  # MoCo v3's random, frozen patch projection
            pool="cls",  # features for evaluation: class token or "gap" of patch tokens
            num_heads=0,  # 0: the registry's (timm/DINO); MoCo v3's vit_small uses 12
            remat=False,  # recompute each block's activations in the backward pass
        ),
    )
    c.input = dict(
        dataset="digits",
        data_dir=config_dict.placeholder(str),
        train_split="train",
        eval_train_split="train",
        eval_test_split="test",
        image_size=32,
        eval_crop_fraction=1.0,
        global_batch_size=256,
        mean=DIGITS_MEAN,
        std=DIGITS_STD,
        views=dict(),
        shuffle_buffer=16_384,
        prefetch=2,
        # Colour ops + normalisation in the jitted step, crops on the host (device_augment.py)
        augment_on_device=False,
    )
    c.optim = dict(
        name="sgd",
        lr=0.03,
        lr_scaling="linear",  # lr x global_batch / 256
        momentum=0.9,
        nesterov=False,
        weight_decay=1e-4,
        exclude_bias_and_norm=False,
        trust_coefficient=1e-3,
        # Where LARS applies the lr (see ssl_jax/optim.py): True, SimCLR's
        # v = m v + lr trust u; w -= v; False, BYOL's and MoCo v3's mu = m mu + trust u;
        # w -= lr mu (they differ while the lr changes, e.g. in the warm-up). With
        # exclude_bias_and_norm our mask (rank <= 1) skips weight decay and the trust ratio
        # on biases and norm params, as MoCo v3's `if p.ndim > 1` and BYOL's
        # exclude_bias_and_norm (names 'b' and '*norm*') both do.
        lars_lr_in_momentum=True,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        # Cosine weight-decay schedule from weight_decay to weight_decay_end (DINO).
        weight_decay_end=config_dict.placeholder(float),
        clip_grad_per_param=0.0,  # DINO's clip_gradients: each tensor's norm <= this
        # Regexes on "/"-joined parameter paths:
        frozen_params=(),  # never updated (MoCo v3 ViT's random patch projection)
        delayed_params=(),  # not updated during the first delay_epochs (DINO's last layer)
        delay_epochs=0.0,
        constant_lr_params=(),  # trained at the peak lr without schedule (SimSiam predictor)
    )
    c.schedule = dict(
        epochs=200.0,
        warmup_epochs=0.0,
        decay="cosine",
        milestones=(120, 160),
        total_steps=0,
        final_lr=0.0,  # the cosine ends here (DINO's min_lr 1e-6)
        # False: lr = peak * t / W for t < W (peak first reached at step W, MoCo v3, BYOL,
        # SimCLR); True: DINO's np.linspace(0, peak, W), peak * t / (W - 1), at step W - 1.
        warmup_end_inclusive=False,
        warmup_start_lr=0.0,  # the warm-up's first lr (SwAV's --start_warmup 0.3)
        # How epochs become steps (see ssl_jax/schedules.py), N examples, batch B:
        # "per_epoch", total = round(epochs * (N // B)); "per_example", BYOL's total =
        # N * epochs // B; "per_example_plus_one", SimCLR's N * epochs // B + 1 (tf2/model.py
        # get_train_steps); both per-example rules warm up for floor(warmup_epochs * N / B).
        step_count="per_epoch",
    )
    c.evals = dict(
        knn_every_steps=0,  # 0: only at the end of training
        knn_k=200,  # InstDisc / MoCo CIFAR demo; DINO uses k=20, T=0.07 on ImageNet
        knn_temperature=0.1,
        linear_epochs=100,
        linear_batch_size=256,
        linear_lr=0.1,
        linear_weight_decay=0.0,
        batch_size=512,
        random_init_baseline=True,
        at_end=True,  # False: no final kNN / linear-probe report (quick checks, unlabelled data)
        # A linear classifier on stop-gradient features, trained alongside pretraining
        # (evaluate/online.py); skipped when input.train_split has no labels.
        online_linear=True,
        online_linear_lr=0.1,  # solo-learn's classifier_lr; SGD, momentum 0.9, cosine
    )
    c.ckpt = dict(every_steps=1000, keep=3, async_save=True)
    c.log_every_steps = 50
    # Weights & Biases beside metrics.jsonl and TensorBoard (ssl_jax/wandb_log.py): the
    # project name, "" for none; entity "" is W&B's default; mode "", online or offline.
    c.log = dict(wandb="", wandb_entity="", wandb_mode="")
    return c


def with_values(
    config: ml_collections.ConfigDict, values: Mapping[str, object]
) -> ml_collections.ConfigDict:
    """A copy of ``config`` with ``{"model.vit.patch_size": 8, ...}`` set (dotted keys that
    exist; ml_collections checks each value's type), locked as ``config`` was."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for dotted, value in values.items():
            *parents, leaf = dotted.split(".")
            node = config
            for p in parents:
                node = node[p]
            node[leaf] = value
    return config


def set_views(config: ml_collections.ConfigDict, *recipes: ml_collections.ConfigDict) -> None:
    """Installs one keyed augmentation config per view: view1, view2, ..."""
    config.input.views = ml_collections.ConfigDict(
        {f"view{i + 1}": recipe for i, recipe in enumerate(recipes)}
    )


def use_digits(config: ml_collections.ConfigDict, recipe: ml_collections.ConfigDict) -> None:
    """The offline default: scikit-learn's 8x8 handwritten digits (1,437 train / 360 test)."""
    config.input.update(
        dataset="digits",
        train_split="train",
        eval_train_split="train",
        eval_test_split="test",
        image_size=16,
        eval_crop_fraction=1.0,
        mean=DIGITS_MEAN,
        std=DIGITS_STD,
    )
    set_views(config, recipe, recipe)
    config.model.update(backbone="resnet_tiny", stem="cifar")
    config.evals.update(knn_k=20, knn_temperature=0.1, linear_epochs=100, knn_every_steps=200)
    config.ckpt.every_steps = 200
    config.log_every_steps = 20


def use_cifar10(config: ml_collections.ConfigDict, recipe: ml_collections.ConfigDict) -> None:
    """tfds `cifar10` (50k train / 10k test), 32 px, ResNet-18 with the CIFAR stem."""
    config.input.update(
        dataset="cifar10",
        train_split="train",
        eval_train_split="train",
        eval_test_split="test",
        image_size=32,
        eval_crop_fraction=1.0,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
    )
    set_views(config, recipe, recipe)
    config.model.update(backbone="resnet18", stem="cifar")
    config.evals.update(knn_k=200, knn_temperature=0.1)


def use_imagenet(config: ml_collections.ConfigDict, recipe: ml_collections.ConfigDict) -> None:
    """tfds `imagenet2012` (prepared under input.data_dir, e.g. on GCS), 224 px, ResNet-50."""
    config.input.update(
        dataset="imagenet2012",
        train_split="train",
        eval_train_split="train",
        eval_test_split="validation",
        image_size=224,
        eval_crop_fraction=0.875,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    set_views(config, recipe, recipe)
    config.model.update(backbone="resnet50", stem="imagenet")
    config.evals.update(knn_k=20, knn_temperature=0.07, knn_every_steps=0, batch_size=1024)
    config.ckpt.every_steps = 5000


def use_smoke(config: ml_collections.ConfigDict, recipe: ml_collections.ConfigDict) -> None:
    """A few steps of a tiny model on small digits splits: what the tests run end to end."""
    use_digits(config, recipe)
    config.input.update(
        image_size=16,
        global_batch_size=16,
        eval_train_split="train[:128]",
        eval_test_split="test[:64]",
    )
    config.model.head.update(hidden_dim=32, out_dim=16)
    config.model.predictor.update(hidden_dim=32, out_dim=16)
    config.schedule.update(total_steps=4, epochs=1.0, warmup_epochs=0.0)
    config.evals.update(knn_k=10, linear_epochs=2, batch_size=64, knn_every_steps=2)
    config.ckpt.update(every_steps=2, keep=2)
    config.log_every_steps = 1


def select_preset(
    arg: str | None,
    presets: Mapping[str, Callable[[], ml_collections.ConfigDict]],
    default: str = "digits",
) -> ml_collections.ConfigDict:
    """Builds the preset named by `--config=...py:<arg>` and locks it."""
    name = arg or default
    if name not in presets:
        raise ValueError(f"unknown config preset {name!r}; valid presets: {', '.join(presets)}")
    config = presets[name]()
    config.lock()
    return config


def set_multicrop(
    config: ml_collections.ConfigDict,
    global_recipes: Sequence[ml_collections.ConfigDict],
    local_recipe: ml_collections.ConfigDict,
    *,
    num_local: int,
    local_size: int,
) -> None:
    """Installs multi-crop views: view1..viewG global (size 0), then num_local local views.

    DINO (Caron et al. 2021, arXiv:2104.14294; facebookresearch/dino main_dino.py
    DataAugmentationDINO): 2 global crops at input.image_size (224) with their own recipes
    and ``--local_crops_number`` (8) local crops at 96 px sharing one recipe. Global views
    keep size 0 so they follow a later ``input.image_size`` override; each view gets its own
    copy, so ``--config.input.views.view5.blur_p=...`` changes one crop only. The pipeline
    then yields ``global_views`` and ``local_views`` (``ssl_jax/data/views.py``).
    """
    if not global_recipes:
        raise ValueError("set_multicrop needs at least one global recipe")
    if num_local < 0:
        raise ValueError(f"num_local={num_local} must be >= 0")
    if not 0 < local_size < config.input.image_size:
        raise ValueError(
            f"local_size={local_size} must be in (0, input.image_size="
            f"{config.input.image_size}): local crops are smaller than global ones"
        )
    recipes = [(r, 0) for r in global_recipes] + [(local_recipe, local_size)] * num_local
    config.input.views = ml_collections.ConfigDict(
        {
            f"view{i + 1}": ml_collections.ConfigDict({**recipe, "size": size})
            for i, (recipe, size) in enumerate(recipes)
        }
    )
