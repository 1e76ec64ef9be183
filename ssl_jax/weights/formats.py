"""The released checkpoints of the family, as the official repositories wrote them.

Each format's reader takes the file's contents (``tensor_files.read``) and returns the
networks it holds as `Release`: PyTorch state dicts with the release's prefixes removed.
Key layouts, from each repository's saving and loading code:

- ``moco`` (facebookresearch/moco, v1 and v2): ``{'state_dict': ...}`` with
  ``module.encoder_q.*`` / ``module.encoder_k.*`` (torchvision ResNet; ``fc`` is the
  projection head: one Linear in v1, ``fc.0`` / ``fc.2`` in v2's MLP), ``module.queue``
  ``[dim, K]`` and ``module.queue_ptr``.
- ``moco_v3`` (facebookresearch/moco-v3): ``{'state_dict': ...}`` with
  ``module.base_encoder.*`` / ``module.momentum_encoder.*`` (ResNet with the projector as
  ``fc``; ViT with it as ``head``) and ``module.predictor.*``.
- ``simsiam`` (facebookresearch/simsiam): ``{'state_dict': ...}`` with
  ``module.encoder.*`` (projector as ``fc``) and ``module.predictor.*``.
- ``dino`` (facebookresearch/dino): a backbone-only state dict (``dino_*_pretrain.pth``,
  no prefix), or the full checkpoint ``{'student', 'teacher', 'dino_loss': {'center'},
  ...}`` with ``[module.]backbone.*`` / ``[module.]head.*`` in each network.
- ``mae`` (facebookresearch/mae): ``{'model': ...}``, the encoder with timm ViT keys (the
  full files add ``decoder_*`` and ``mask_token``).
- ``torchvision`` / ``timm``: a plain state dict (also under ``state_dict`` or
  ``model``); the classifier (``fc``, ``head``) is not part of the encoder.
- ``simclr`` (TensorFlow 2) and ``byol`` (Haiku ``.pkl``): see ``google_releases``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ssl_jax.weights import google_releases, restricted_pickle, tensor_files, tf_checkpoint
from ssl_jax.weights.release import Release, fold_bias_into_bn
from ssl_jax.weights.torch_layout import LayoutError, strip


def _tensors(tree: Any) -> dict[str, np.ndarray]:
    return {k: v for k, v in tree.items() if isinstance(v, np.ndarray)}


def _entry(contents: dict, names: tuple[str, ...], what: str) -> dict[str, np.ndarray]:
    """The state dict under the first of ``names`` present, else the file itself."""
    for name in names:
        if isinstance(contents.get(name), dict):
            return _tensors(contents[name])
    state = _tensors(contents)
    if not state:
        raise LayoutError(
            f"no state dict: the file has neither {' nor '.join(map(repr, names))} nor "
            f"tensors at its top level (it has {sorted(contents)[:8]}), as {what} releases do."
        )
    return state


def _without_module(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """DistributedDataParallel's ``module.`` prefix removed where every key has it."""
    if state and all(k.startswith("module.") for k in state):
        return strip(state, "module.")
    return state


def _require(state: dict, prefix: str, what: str) -> dict[str, np.ndarray]:
    part = strip(state, prefix)
    if not part:
        first = sorted(state)[:3]
        raise LayoutError(f"no '{prefix}*' keys, as {what} files have (first keys: {first}).")
    return part


def _split_classifier(network: dict, name: str) -> tuple[dict, dict]:
    """``(network without ``name``.*, the ``name`` sub-dict)``; a bare Linear
    (``fc.weight``) becomes Sequential index 0, as a one-layer ``MLPHead`` expects."""
    rest = {k: v for k, v in network.items() if not k.startswith(f"{name}.")}
    head = strip(network, f"{name}.")
    if set(head) <= {"weight", "bias"}:
        head = {f"0.{k}": v for k, v in head.items()}
    return rest, head


def _kind(backbone: dict) -> str:
    if "patch_embed.proj.weight" in backbone:
        return "vit"
    if "conv1.weight" in backbone:
        return "resnet"
    raise LayoutError(
        f"neither a torchvision ResNet ('conv1.weight') nor a timm ViT "
        f"('patch_embed.proj.weight'); first keys: {sorted(backbone)[:5]}."
    )


def read_moco(contents: dict) -> Release:
    state = _without_module(_entry(contents, ("state_dict",), "MoCo"))
    query = _require(state, "encoder_q.", "MoCo")
    key = _require(state, "encoder_k.", "MoCo")
    backbone, head = _split_classifier(query, "fc")
    target_backbone, target_head = _split_classifier(key, "fc")
    arrays = {}
    if "queue" in state:
        arrays["queue"] = np.asarray(state["queue"]).T  # [dim, K] -> [K, dim]
        arrays["queue_ptr"] = np.asarray(state.get("queue_ptr", np.zeros(1))).reshape(())
    return Release(
        _kind(backbone),
        "moco",
        online={"backbone": backbone, "head": head},
        target={"backbone": target_backbone, "head": target_head},
        arrays=arrays,
    )


def read_moco_v3(contents: dict) -> Release:
    state = _without_module(_entry(contents, ("state_dict",), "MoCo v3"))
    base = _require(state, "base_encoder.", "MoCo v3")
    momentum = _require(state, "momentum_encoder.", "MoCo v3")
    kind = _kind(base)
    head_name = "fc" if kind == "resnet" else "head"
    backbone, head = _split_classifier(base, head_name)
    target_backbone, target_head = _split_classifier(momentum, head_name)
    online = {"backbone": backbone, "head": head, "predictor": strip(state, "predictor.")}
    target = {"backbone": target_backbone, "head": target_head}
    return Release(kind, "moco_v3", online=online, target=target)


def read_simsiam(contents: dict) -> Release:
    state = _without_module(_entry(contents, ("state_dict",), "SimSiam"))
    backbone, head = _split_classifier(_require(state, "encoder.", "SimSiam"), "fc")
    head = fold_bias_into_bn(head, "6", "7")  # the frozen bias of encoder.fc[6]
    online = {"backbone": backbone, "head": head, "predictor": strip(state, "predictor.")}
    return Release(_kind(backbone), "simsiam", online=online)


def _dino_network(state: dict) -> dict:
    state = _without_module(_tensors(state))
    return {"backbone": strip(state, "backbone."), "head": strip(state, "head.")}


def read_dino(contents: dict) -> Release:
    if "teacher" in contents and "student" in contents:
        student, teacher = _dino_network(contents["student"]), _dino_network(contents["teacher"])
        if not teacher["backbone"]:
            raise LayoutError("the 'teacher' entry has no 'backbone.*' keys, as DINO's do.")
        arrays = {}
        center = contents.get("dino_loss", {}).get("center")
        if isinstance(center, np.ndarray):
            arrays["center"] = center.reshape(-1)
        return Release(
            _kind(teacher["backbone"]), "dino", online=student, target=teacher, arrays=arrays
        )
    state = _without_module(_entry(contents, ("teacher", "state_dict", "model"), "DINO"))
    if any(k.startswith("backbone.") for k in state):
        state = strip(state, "backbone.")
    backbone, _ = _split_classifier(state, "head" if _kind(state) == "vit" else "fc")
    # The released backbones are the teacher's; the student starts as the same network.
    return Release(_kind(backbone), "dino", online={"backbone": backbone})


def read_mae(contents: dict) -> Release:
    state = _without_module(_entry(contents, ("model", "state_dict"), "MAE"))
    decoder_keys = [k for k in state if k.startswith("decoder_") or k == "mask_token"]
    decoder = {k: state[k] for k in decoder_keys}
    encoder = {k: v for k, v in state.items() if k not in decoder}
    encoder, _ = _split_classifier(encoder, "head")
    online = {"backbone": encoder}
    arrays = {}
    if decoder:
        # A fixed table (requires_grad=False in models_mae.py): checked, not imported.
        arrays["decoder_pos_embed"] = decoder.pop("decoder_pos_embed", None)
        online["decoder"] = decoder
    return Release("vit", "mae", online=online, arrays=arrays)


def _plain(classifier: str, contents: dict) -> Release:
    state = _without_module(_entry(contents, ("state_dict", "model"), "plain"))
    kind = _kind(state)
    backbone, head = _split_classifier(state, classifier)
    left_out = [f"the classifier '{classifier}' (not part of the encoder)"] if head else []
    return Release(kind, "supervised", online={"backbone": backbone}, left_out=left_out)


FORMATS: dict[str, Callable[[dict], Release]] = {
    "moco": read_moco,
    "moco_v3": read_moco_v3,
    "simsiam": read_simsiam,
    "dino": read_dino,
    "mae": read_mae,
    "torchvision": lambda contents: _plain("fc", contents),
    "timm": lambda contents: _plain("head", contents),
    "simclr": google_releases.read_simclr,
    "byol": google_releases.read_byol,
}

# How each format's file is read; the PyTorch formats' default is ``tensor_files.read``.
_FILE_READERS: dict[str, Callable[[str], dict]] = {
    "simclr": tf_checkpoint.read,
    "byol": restricted_pickle.read,
}


def read_file(fmt: str, path: str) -> dict:
    """The contents of the checkpoint at ``path`` as format ``fmt``'s reader takes them."""
    if fmt in _FILE_READERS:
        return _FILE_READERS[fmt](path)
    return tensor_files.read(path)[0]


# ViT heads are not in the shapes: each release's own choice, unless model.vit.num_heads.
DEFAULT_HEADS = {"moco_v3": {"vit_small": 12}}


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise LayoutError(f"unknown --format={fmt!r}; valid formats: {sorted(FORMATS)}.")


def read_release(fmt: str, contents: dict, path: str) -> Release:
    """The `Release` of ``contents`` in format ``fmt``; errors name the file and format."""
    check_format(fmt)
    try:
        release = FORMATS[fmt](contents)
    except LayoutError as e:
        raise LayoutError(f"{path} is not a {fmt!r} checkpoint: {e}") from None
    if "optimizer" in contents:
        release.left_out.append("the optimizer state (continued pretraining starts a fresh one)")
    return release
