"""The method contract: what a method module exports, and what `get_method` fills in.

A method is one module ``ssl_jax/methods/<name>.py`` listed in ``METHODS``, loaded by
name; no base classes. Its docstring gives the paper, the objective as plain-text
equations and every deliberate difference from the official code. The trainer
(``train.py``), the encoder loading (``pretrained.py``) and the export (``export.py``)
see a method only through the `Method` protocol below, never through its name.

Required functions (all pure; jitted by the trainer, written in the global view: the
batch is the whole global batch, ``jnp.mean`` is the cross-device mean):

- ``get_config() -> ConfigDict``: the method's own section, ``config.<name>``, with the
  paper's defaults, each citing its source flag.
- ``make_model(config) -> nn.Module``: backbone (``params['backbone']``) and heads; the
  module's ``embed(x, train=False) -> [B, D]`` gives the features every evaluation reads.
- ``init_extra(params, batch_stats, config) -> dict``: the method's state besides the
  network (EMA targets, queues, centers), ``{}`` if none; copies, never aliases, of the
  online arrays (``jax.tree.map(jnp.copy, ...)``), or buffer donation fails.
- ``loss_fn(params, state, batch, rng, *, model, config) -> (loss, Aux)``: differentiated
  with respect to ``params``. ``batch`` (`Batch`) holds ``views [B, V, H, W, C]`` (or
  multi-crop ``global_views`` + ``local_views``), ``label [B]`` (-1: unlabelled) and
  ``index [B]`` (the example's row in its split, for memory banks). ``rng`` is this
  step's key.
- ``update_extra(extra, *, params, aux, step, config) -> dict``: the new ``state.extra``
  from the updated ``params`` and ``aux['extra']`` (EMA, enqueue, center update).

Optional (`get_method` supplies the default when a module omits one):

- ``validate(config) -> None``: raises ``ValueError`` naming the key, the value and the
  reason; called before anything is written or compiled. Default: no checks.
- ``after_update(params, config) -> params``: applied to the params after every optimizer
  update (SwAV renormalises its prototypes). Default: unchanged.
- ``ENCODER``: `EncoderAt`, where the evaluated encoder's variables live in the train
  state. The kNN monitor, the linear probes, ``ssl-jax export`` and
  ``supervised.init_from`` all read it there. Default: the online network's
  ``params`` / ``batch_stats``; DINO declares its teacher.
- ``load_pretrained(state, config) -> state``: a fresh state with weights from elsewhere
  (the supervised method's ``init_from``). Default: unchanged.
- ``classifier_protocol(config) -> str | None``: when the model classifies (has
  ``classify``), the text the report writes beside its top-1. Default: None.

Shared building blocks (EMA, ring-buffer enqueue, train-mode apply, multi-crop forward)
are in ``methods/primitives.py``; no method imports another method.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypedDict

import jax
import ml_collections
from flax import linen as nn

METHODS = (
    "instdisc",
    "cmc",
    "moco",
    "simclr",
    "simsiam",
    "byol",
    "moco_v3",
    "dino",
    "swav",
    "mae",
    "supervised",
)

Batch = Mapping[str, jax.Array]


class Aux(TypedDict):
    """What ``loss_fn`` returns beside the loss.

    batch_stats: the online network's updated BatchNorm statistics (``{}`` without BN).
    embeddings: ``[B, d]`` L2-normalised outputs whose collapse the diagnostics watch
      (per-dimension std, effective rank).
    features: ``[n * B, D]`` backbone features, from this step's forward pass, of the
      encoder that ``ENCODER`` declares, for n >= 1 views stacked view-major; the online
      linear probe trains on them (gradient stopped) with the labels repeated n times.
    metrics: the method's own scalars to log, by name.
    extra: whatever the method hands its own ``update_extra`` (targets, keys to enqueue).
    """

    batch_stats: Any
    embeddings: jax.Array
    features: jax.Array
    metrics: dict[str, jax.Array]
    extra: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class EncoderAt:
    """Where the evaluated encoder's variables live: "/"-joined paths into the train
    state (as the checkpoint stores it), whose ``backbone`` subtrees are the encoder."""

    params: str = "params"
    batch_stats: str = "batch_stats"

    def variables(self, state: Any) -> dict[str, Any]:
        """``{'params', 'batch_stats'}`` of the whole network at these paths in ``state``."""
        return {
            "params": _at(state, self.params),
            "batch_stats": _at(state, self.batch_stats),
        }


def _at(state: Any, dotted: str) -> Any:
    node = state
    for key in dotted.split("/"):
        node = node[key] if isinstance(node, Mapping) else getattr(node, key)
    return node


class Method(Protocol):
    """A loaded method: the module's functions with every optional hook filled in."""

    name: str
    ENCODER: EncoderAt

    def get_config(self) -> ml_collections.ConfigDict: ...

    def make_model(self, config: ml_collections.ConfigDict) -> nn.Module: ...

    def init_extra(
        self, params: Any, batch_stats: Any, config: ml_collections.ConfigDict
    ) -> dict: ...

    def loss_fn(
        self,
        params: Any,
        state: Any,
        batch: Batch,
        rng: jax.Array,
        *,
        model: nn.Module,
        config: ml_collections.ConfigDict,
    ) -> tuple[jax.Array, Aux]: ...

    def update_extra(
        self,
        extra: dict,
        *,
        params: Any,
        aux: Aux,
        step: jax.Array,
        config: ml_collections.ConfigDict,
    ) -> dict: ...

    def validate(self, config: ml_collections.ConfigDict) -> None: ...

    def after_update(self, params: Any, config: ml_collections.ConfigDict) -> Any: ...

    def load_pretrained(self, state: Any, config: ml_collections.ConfigDict) -> Any: ...

    def classifier_protocol(self, config: ml_collections.ConfigDict) -> str | None: ...


REQUIRED = ("get_config", "make_model", "init_extra", "loss_fn", "update_extra")


def _no_checks(config: Any) -> None:
    del config


def _params_unchanged(params: Any, config: Any) -> Any:
    del config
    return params


def _state_unchanged(state: Any, config: Any) -> Any:
    del config
    return state


def _no_classifier(config: Any) -> None:
    del config


OPTIONAL: dict[str, Any] = dict(
    validate=_no_checks,
    after_update=_params_unchanged,
    ENCODER=EncoderAt(),
    load_pretrained=_state_unchanged,
    classifier_protocol=_no_classifier,
)


@dataclasses.dataclass(frozen=True)
class _LoadedMethod:
    name: str
    ENCODER: EncoderAt
    get_config: Callable
    make_model: Callable
    init_extra: Callable
    loss_fn: Callable
    update_extra: Callable
    validate: Callable
    after_update: Callable
    load_pretrained: Callable
    classifier_protocol: Callable


@functools.cache
def get_method(name: str) -> Method:
    """The method ``name`` with its optional hooks defaulted; fails naming the valid ones,
    or the required functions a module lacks."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    module = importlib.import_module(f"ssl_jax.methods.{name}")
    missing = [f for f in REQUIRED if not callable(getattr(module, f, None))]
    if missing:
        raise TypeError(f"ssl_jax/methods/{name}.py lacks the required {', '.join(missing)}")
    hooks = {f: getattr(module, f) for f in REQUIRED}
    hooks.update({f: getattr(module, f, default) for f, default in OPTIONAL.items()})
    return _LoadedMethod(name=name, **hooks)
