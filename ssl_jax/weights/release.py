"""What a released checkpoint holds, in the torchvision / timm keys every reader produces."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class Release:
    """The networks of a released checkpoint, in PyTorch keys without prefixes.

    backbone_kind: ``'resnet'`` or ``'vit'``.
    method: the ssl_jax method whose train state holds every network the file has.
    online / target: ``{'backbone', 'head', 'predictor'}`` state dicts (missing = absent;
      MAE's online network adds ``'decoder'``); ``target`` is the momentum encoder or
      teacher.
    arrays: the method's other state, in ssl_jax's layout (``queue [K, D]``, ``center``;
      MAE's fixed ``decoder_pos_embed``, checked rather than imported).
    left_out: what the file holds that is not imported, by name, with the reason.
    settings: config values the release's framework fixes and the shapes do not show
      (dotted keys: TF's ``model.padding``, SimCLR's unnormalised ``input.mean``).
    """

    backbone_kind: str
    method: str
    online: dict[str, dict[str, np.ndarray]]
    target: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    left_out: list[str] = dataclasses.field(default_factory=list)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)


def fold_bias_into_bn(head: dict, linear: str, bn: str) -> dict:
    """A Linear bias followed by BatchNorm folded into the BN's running mean: identical
    outputs in eval mode, and in training mode (where BN subtracts the batch mean) the bias
    cancels anyway; ssl_jax's heads have no bias before a BN."""
    if f"{linear}.bias" not in head or f"{bn}.running_mean" not in head:
        return head
    head = dict(head)
    bias = head.pop(f"{linear}.bias")
    head[f"{bn}.running_mean"] = head[f"{bn}.running_mean"] - bias
    return head
