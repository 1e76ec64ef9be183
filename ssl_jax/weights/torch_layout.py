"""ssl_jax parameter trees <-> PyTorch state dicts, and architectures read off a state dict.

One naming rule per network serves both directions (`to_torch`, `from_torch`):

- ``"resnet"``: torchvision's ``resnet.py`` (``conv1``, ``bn1``, ``layer1.0.conv1``,
  ``layer1.0.downsample.0`` / ``.1``); the classifier ``fc`` is not part of the backbone.
- ``"vit"``: timm's ``vision_transformer.py`` as MoCo v3, DINO and MAE use it
  (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.0.attn.qkv``, ``norm``), and
  MAE's decoder beside it (``mask_token``, ``decoder_embed``, ``decoder_blocks.0``,
  ``decoder_norm``, ``decoder_pred``).
- ``"mlp"``: an ``nn.Sequential`` of Linear (-> BatchNorm1d) -> activation layers, the
  projectors and predictors of MoCo v2/v3 and SimSiam: layer ``i`` of an ``MLPHead`` is
  Sequential index ``i * slots`` and its BN ``i * slots + 1``, where ``slots`` is 3 with
  BN (Linear, BN, ReLU) and 2 without (Linear, ReLU).
- ``"dino_head"``: DINO's ``DINOHead``: ``mlp`` as above (GELU for ReLU; a bare Linear
  when it has one layer) and the weight-normalised ``last_layer.weight_v`` /
  ``last_layer.weight_g``.

Tensors: a conv kernel is ``[kh, kw, in, out]`` here and ``[out, in, kh, kw]`` in
PyTorch; a Dense kernel ``[in, out]`` vs Linear's ``[out, in]``; the class token and a
learned position embedding drop timm's leading batch axis; BN ``scale`` / ``bias`` /
``mean`` / ``var`` are ``weight`` / ``bias`` / ``running_mean`` / ``running_var``.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from ssl_jax.models import RESNETS, VITS

KINDS = ("resnet", "vit", "mlp", "dino_head")
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_STAT_NAMES = {"mean": "running_mean", "var": "running_var"}
_MAX_LISTED = 5
_TOKENS = ("cls_token", "pos_embed", "mask_token")  # timm / MAE keep a leading batch axis


class LayoutError(ValueError):
    """A state dict does not have the keys or shapes the network needs."""


def _module_path(parts: list[str], kind: str, slots: int) -> list[str]:
    out = []
    for part in parts:
        layer = re.fullmatch(r"(layer\d+|blocks|decoder_blocks)_(\d+)", part)
        dense_or_bn = re.fullmatch(r"(dense|bn)(\d+)", part)
        if layer:
            out += [layer[1], layer[2]]
        elif part in ("downsample_conv", "downsample_bn"):
            out += ["downsample", "0" if part.endswith("conv") else "1"]
        elif kind == "vit" and part == "patch_embed":
            out += ["patch_embed", "proj"]
        elif dense_or_bn and kind in ("mlp", "dino_head"):
            index = int(dense_or_bn[2]) * slots + (dense_or_bn[1] == "bn")
            out += ["mlp", str(index)] if kind == "dino_head" else [str(index)]
        else:
            out.append(part)
    return out


def torch_key(path: str, kind: str, *, stat: bool = False, slots: int = 2) -> str:
    """The PyTorch key of the ssl_jax leaf at "/"-joined ``path`` (a BatchNorm statistic
    when ``stat``); ``slots``: Sequential entries per hidden layer (``"mlp"`` kinds)."""
    if kind not in KINDS:
        raise ValueError(f"unknown network kind {kind!r}; valid: {KINDS}.")
    *modules, leaf = path.split("/")
    if kind == "dino_head" and modules == ["last_layer"]:
        return {"kernel": "last_layer.weight_v", "scale": "last_layer.weight_g"}[leaf]
    if not modules:  # cls_token, pos_embed
        return leaf
    names = _module_path(modules, kind, slots)
    return ".".join([*names, (_STAT_NAMES if stat else _LEAF_NAMES)[leaf]])


def to_torch_tensor(path: str, value: np.ndarray) -> np.ndarray:
    """An ssl_jax leaf in PyTorch's layout (see the module docstring)."""
    value = np.asarray(value)
    leaf = path.rsplit("/", 1)[-1]
    if leaf in _TOKENS:
        return value[None]
    if value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if value.ndim == 2:  # Dense kernels and the weight-norm gain [1, out]
        return value.T
    return value


def from_torch_tensor(path: str, value: np.ndarray) -> np.ndarray:
    """The inverse of `to_torch_tensor`."""
    value = np.asarray(value)
    leaf = path.rsplit("/", 1)[-1]
    if leaf in _TOKENS:
        return value.reshape(value.shape[-2:])
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2:
        return value.T
    return value


def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as ``{"a/b/c": leaf}``."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(flat(v, f"{prefix}{k}/"))
        return out
    return {prefix[:-1]: tree}


def unflat(leaves: dict[str, Any]) -> dict:
    out: dict = {}
    for path, leaf in leaves.items():
        node = out
        *parents, last = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return out


def slots_of(params: Any, batch_stats: Any) -> int:
    """Sequential entries per hidden layer of an ``MLPHead`` / ``DINOHead``: 3 with BN."""
    return 3 if any(k.startswith("bn") for k in {**params, **(batch_stats or {})}) else 2


def to_torch(params: Any, batch_stats: Any, kind: str, prefix: str = "") -> dict[str, np.ndarray]:
    """The PyTorch state dict of a network (float32 NumPy arrays), keys under ``prefix``.
    BatchNorm layers get torchvision's ``num_batches_tracked`` (0) so that a strict
    ``load_state_dict`` accepts the dict."""
    slots = slots_of(params, batch_stats)
    out = {}
    for path, value in flat(params).items():
        out[prefix + torch_key(path, kind, slots=slots)] = to_torch_tensor(path, value)
    for path, value in flat(batch_stats or {}).items():
        key = prefix + torch_key(path, kind, stat=True, slots=slots)
        out[key] = np.asarray(value)
        if path.endswith("/mean"):
            out[key.rsplit(".", 1)[0] + ".num_batches_tracked"] = np.zeros((), np.int64)
    return out


def from_torch(
    state_dict: dict[str, np.ndarray],
    template_params: Any,
    template_stats: Any,
    kind: str,
    *,
    prefix: str = "",
    what: str = "network",
    ignore: tuple[str, ...] = (),
) -> tuple[dict, dict]:
    """``(params, batch_stats)`` shaped as the templates (trees of arrays or shape structs)
    from the keys under ``prefix``; every key under ``prefix`` must be used, except those
    starting with an ``ignore`` entry and BN's ``num_batches_tracked``. Fails naming the
    first missing, unexpected or mis-shaped keys."""
    slots = slots_of(template_params, template_stats)
    wanted = {}
    for path, leaf in flat(template_params).items():
        wanted[prefix + torch_key(path, kind, slots=slots)] = ("params", path, leaf.shape)
    for path, leaf in flat(template_stats or {}).items():
        wanted[prefix + torch_key(path, kind, stat=True, slots=slots)] = ("stats", path, leaf.shape)
    have = {
        k
        for k in state_dict
        if k.startswith(prefix)
        and not k.endswith("num_batches_tracked")
        and not any(k[len(prefix) :].startswith(i) for i in ignore)
    }
    missing, unexpected = sorted(set(wanted) - have), sorted(have - set(wanted))
    trees: dict[str, dict] = {"params": {}, "stats": {}}
    bad_shapes = []
    for key in sorted(set(wanted) & have):
        collection, path, shape = wanted[key]
        value = from_torch_tensor(path, state_dict[key]).astype(np.float32)
        if value.shape != tuple(shape):
            needed = to_torch_tensor(path, np.broadcast_to(np.float32(0), shape)).shape
            bad_shapes.append(f"{key} {tuple(state_dict[key].shape)} (needs {needed})")
        trees[collection][path] = value
    if missing or unexpected or bad_shapes:
        problems = [
            f"{label}: {', '.join(keys[:_MAX_LISTED])}{' ...' if len(keys) > _MAX_LISTED else ''}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", bad_shapes),
            )
            if keys
        ]
        raise LayoutError(f"the {what} does not fit: " + "; ".join(problems))
    return unflat(trees["params"]), unflat(trees["stats"])


def gap_norm(network: dict[str, Any], *, to_timm: bool) -> dict[str, Any]:
    """timm's global-pool ViT (``global_pool='avg'``, MAE's fine-tuned ones too) normalises
    the mean token with ``fc_norm``, its ``norm`` being an identity; ssl_jax's
    ``pool='gap'`` uses ``norm`` for that. Renames ``norm.*`` <-> ``fc_norm.*``."""
    old, new = ("norm.", "fc_norm.") if to_timm else ("fc_norm.", "norm.")
    return {(new + k[len(old) :] if k.startswith(old) else k): v for k, v in network.items()}


def strip(state_dict: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The entries under ``prefix``, with it removed."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def infer_resnet(state_dict: dict[str, np.ndarray], what: str) -> dict[str, Any]:
    """``{'backbone', 'stem', 'width_multiplier'}`` of the torchvision ResNet whose keys
    ``state_dict`` holds (a wide one widens every conv: SimCLR's 2x, SwAV's w2)."""
    if "conv1.weight" not in state_dict:
        raise LayoutError(f"the {what} has no 'conv1.weight': no torchvision ResNet.")
    stages = []
    for s in range(1, 5):
        blocks = {int(m[1]) for k in state_dict if (m := re.match(rf"layer{s}\.(\d+)\.", k))}
        stages.append(len(blocks))
    block = "bottleneck" if "layer1.0.conv3.weight" in state_dict else "basic"
    width, _, kernel, _ = state_dict["conv1.weight"].shape
    for name, (block_, stages_, base) in RESNETS.items():
        if (block_, stages_) == (block, tuple(stages)) and width % base == 0:
            stem = "imagenet" if kernel == 7 else "cifar"
            return {"backbone": name, "stem": stem, "width_multiplier": int(width) // base}
    raise LayoutError(
        f"the {what} is a ResNet with {block} blocks {tuple(stages)} and width {width}, "
        f"which is none of {sorted(RESNETS)} at any width multiplier."
    )


def infer_vit(state_dict: dict[str, np.ndarray], what: str) -> dict[str, Any]:
    """``{'backbone', 'patch_size', 'image_size'}`` of a timm-layout ViT (the image size
    from the position embedding's grid; the MLP ratio must be ssl_jax's 4)."""
    if "patch_embed.proj.weight" not in state_dict:
        raise LayoutError(f"the {what} has no 'patch_embed.proj.weight': no timm ViT.")
    width, _, patch, _ = state_dict["patch_embed.proj.weight"].shape
    depth = len({int(m[1]) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))})
    names = [n for n, (w, d, _) in VITS.items() if (w, d) == (width, depth)]
    if not names:
        raise LayoutError(
            f"the {what} is a ViT of width {width} and depth {depth}, which is none of "
            f"{ {n: v[:2] for n, v in VITS.items()} }."
        )
    hidden = state_dict["blocks.0.mlp.fc1.weight"].shape[0]
    if hidden != 4 * width:
        raise LayoutError(f"the {what} has MLP ratio {hidden / width:g}; ssl_jax's ViT uses 4.")
    image_size = None
    if "pos_embed" in state_dict:
        side = math.isqrt(state_dict["pos_embed"].shape[-2] - 1)
        image_size = side * int(patch)
    return {"backbone": names[0], "patch_size": int(patch), "image_size": image_size}
