"""Checks of the shared config keys, before anything is written or compiled.

`train.build` calls `check(config)` first. Each row of `RULES` is one key the trainer
divides by, schedules with or counts with, the bound it must satisfy and why; a value
outside it raises one `ValueError` line naming key, value and reason. A key the config
lacks (an old run's config.json) or leaves unset (None) is skipped. In the method's own
section (``config.<method>``) every temperature must be > 0 and every EMA momentum in
[0, 1], by name (`METHOD_RULES`); other checks of that section live in the method's
`validate` (docs/ARCHITECTURE.md, section 4).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_collections

from ssl_jax.data.sources import load_source

# (holds(value, config), "must be ..."): the bound, as the message states it.
Bound = tuple[Callable[[Any, Any], bool], str]


def _bound(test: Callable[[Any], bool], text: str) -> Bound:
    return lambda v, c: test(v), text


def _rgb(v: Any) -> bool:
    return isinstance(v, (tuple, list)) and len(v) == 3


POSITIVE = _bound(lambda v: v > 0, "must be > 0")
NON_NEGATIVE = _bound(lambda v: v >= 0, "must be >= 0")
AT_LEAST_ONE = _bound(lambda v: v >= 1, "must be >= 1")
DECAY = _bound(lambda v: 0 <= v < 1, "must be in [0, 1)")
UNIT = _bound(lambda v: 0 <= v <= 1, "must be in [0, 1]")
FRACTION = _bound(lambda v: 0 < v <= 1, "must be in (0, 1]")
RGB = _bound(_rgb, "must have 3 values (R, G, B)")
RGB_POSITIVE = _bound(lambda v: _rgb(v) and min(v) > 0, "must be 3 values (R, G, B), each > 0")
WITHIN_EPOCHS = (
    lambda v, c: 0 <= v <= c.schedule.epochs,
    "must be in [0, schedule.epochs={c.schedule.epochs}]",
)
MILESTONES = (
    lambda v, c: (
        c.schedule.decay != "step"
        or (all(0 < m <= c.schedule.epochs for m in v) and list(v) == sorted(set(v)))
    ),
    "must increase within (0, schedule.epochs={c.schedule.epochs}] for decay 'step'",
)

RULES: tuple[tuple[str, Bound, str], ...] = (
    ("optim.lr", POSITIVE, "a negative lr ascends the loss, 0 trains nothing"),
    ("optim.momentum", DECAY, "the momentum buffer decays by it; at >= 1 it never forgets"),
    ("optim.weight_decay", NON_NEGATIVE, "a negative decay grows the weights"),
    ("optim.weight_decay_end", NON_NEGATIVE, "a negative decay grows the weights"),
    ("optim.trust_coefficient", POSITIVE, "LARS scales every update by it"),
    ("optim.b1", DECAY, "Adam's first-moment decay"),
    ("optim.b2", DECAY, "Adam's second-moment decay"),
    ("optim.eps", POSITIVE, "Adam divides by sqrt(v) + eps, 0/0 for a zero gradient"),
    ("optim.clip_grad_per_param", NON_NEGATIVE, "0 is off; a negative norm flips gradients"),
    ("optim.delay_epochs", NON_NEGATIVE, "the epochs optim.delayed_params stay frozen"),
    ("schedule.epochs", POSITIVE, "every epoch-valued setting is a fraction of it"),
    ("schedule.warmup_epochs", WITHIN_EPOCHS, "the warm-up is part of the schedule"),
    ("schedule.total_steps", NON_NEGATIVE, "0 takes the count from schedule.epochs"),
    ("schedule.milestones", MILESTONES, "the lr drops x0.1 at each"),
    ("schedule.warmup_start_lr", NON_NEGATIVE, "the warm-up starts there; a negative lr ascends"),
    ("schedule.final_lr", NON_NEGATIVE, "the cosine ends there; a negative lr ascends the loss"),
    ("input.image_size", POSITIVE, "the side of every view in pixels"),
    ("input.global_batch_size", POSITIVE, "the examples of one step"),
    ("input.mean", RGB, "one per channel of the RGB input"),
    ("input.std", RGB_POSITIVE, "the normalisation divides each channel by it"),
    ("input.shuffle_buffer", POSITIVE, "tf.data shuffles within that many examples"),
    ("input.eval_crop_fraction", FRACTION, "the central fraction evaluation keeps"),
    ("log_every_steps", POSITIVE, "the loop logs when the step is a multiple of it"),
    ("ckpt.every_steps", POSITIVE, "the loop saves when the step is a multiple of it"),
    ("ckpt.keep", AT_LEAST_ONE, "keep=0 would delete every checkpoint, the final one included"),
    ("evals.batch_size", POSITIVE, "the examples of one evaluation batch"),
    ("evals.knn_every_steps", NON_NEGATIVE, "0 runs the kNN monitor at the end only"),
    ("evals.knn_k", POSITIVE, "the neighbours that vote"),
    ("evals.knn_temperature", POSITIVE, "the kNN weights are exp(similarity / T)"),
    ("evals.linear_epochs", POSITIVE, "the probe reports the loss of its last epoch"),
    ("evals.linear_batch_size", POSITIVE, "the examples of one probe step"),
    ("evals.linear_lr", POSITIVE, "a negative lr ascends the loss, 0 trains nothing"),
    ("evals.linear_weight_decay", NON_NEGATIVE, "a negative decay grows the weights"),
    ("evals.online_linear_lr", POSITIVE, "a negative lr ascends the loss, 0 trains nothing"),
    ("model.width_multiplier", POSITIVE, "a ResNet's convs are this many times wider"),
    ("model.bn_momentum", UNIT, "the running statistics' decay"),
    ("model.bn_epsilon", POSITIVE, "BatchNorm divides by sqrt(var + eps)"),
    ("model.head.num_layers", POSITIVE, "the projection head has at least its last Dense"),
    ("model.head.hidden_dim", POSITIVE, "the width of the head's hidden layers"),
    ("model.head.out_dim", POSITIVE, "the width of the head's output"),
    ("model.predictor.num_layers", NON_NEGATIVE, "0 means no predictor"),
    ("model.predictor.hidden_dim", POSITIVE, "the width of the predictor's hidden layers"),
    ("model.predictor.out_dim", POSITIVE, "the width of the predictor's output"),
    ("model.vit.patch_size", POSITIVE, "the side of a ViT patch in pixels"),
    ("model.vit.drop_path", DECAY, "the probability of dropping a block"),
)


# (does the key of the method's section name such a value, bound, reason), by key name.
METHOD_RULES: tuple[tuple[Callable[[str], bool], Bound, str], ...] = (
    (lambda k: k == "temperature" or k.endswith("_temp"), POSITIVE, "logits are divided by it"),
    (
        lambda k: k == "momentum" or k.endswith("_momentum") or k.startswith("momentum_"),
        UNIT,
        "an EMA keeps m of the old value",
    ),
)


def _lookup(config: Any, key: str) -> Any:
    """``config.a.b`` for ``'a.b'``, or None where the config lacks a part."""
    node = config
    for part in key.split("."):
        node = node.get(part) if hasattr(node, "get") else None
        if node is None:
            return None
    return node


def check(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming key, value and reason for the first key out of its bound;
    then, if the run will evaluate, loads its eval splits so a missing one fails now."""
    for key, (holds, must), reason in RULES:
        value = _lookup(config, key)
        if value is not None and not holds(value, config):
            raise ValueError(f"{key}={value!r} {must.format(c=config)}: {reason}.")
    section = config.get(config.get("method") or "") or {}
    for name, value in section.items():
        for names, (holds, must), reason in METHOD_RULES:
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if names(name) and numeric and not holds(value, config):
                key = f"{config.method}.{name}"
                raise ValueError(f"{key}={value!r} {must.format(c=config)}: {reason}.")
    evals, data = config.evals, config.input
    if evals.get("at_end", True) or evals.get("knn_every_steps", 0) > 0:
        data_dir = data.get("data_dir")
        load_source(data.dataset, data.train_split, data_dir)  # names a bad data set first
        for key in ("eval_train_split", "eval_test_split"):
            try:
                load_source(data.dataset, data[key], data_dir)
            except ValueError as e:
                raise ValueError(f"input.{key}={data[key]!r}: {e}") from None
