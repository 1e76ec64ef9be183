"""`ssl-jax export`: a run's encoder as one file any Flax user can load.

The file is Flax msgpack (``flax.serialization``) of a plain dict:

* ``params``, ``batch_stats`` -- the backbone's variables (DINO: the teacher's, the
  network its paper evaluates); ``batch_stats`` is ``{}`` for a ViT;
* ``model`` -- the run's ``config.model`` as JSON (backbone name and its options);
* ``image_size`` -- the training resolution (a ViT's position-embedding grid);
* ``mean``, ``std`` -- the input normalisation (0..1 scale) the encoder was trained with;
* ``source`` -- JSON naming the workdir, method, step and checkpoint paths read.

Without ssl_jax::

    import flax.serialization
    blob = flax.serialization.msgpack_restore(open("backbone.msgpack", "rb").read())
    variables = {"params": blob["params"], "batch_stats": blob["batch_stats"]}

With it, `load_exported(path)` also rebuilds the Linen module:
``module.apply(variables, images, train=False)`` gives ``[B, D]`` features of
normalised ``[B, H, W, 3]`` images.

``--format=torchvision`` (ResNets) or ``--format=timm`` (ViTs) writes the encoder as a
PyTorch state dict instead (``weights/torch_layout.py``), to ``.safetensors`` (the
normalisation and image size in its header's metadata) or ``.pth`` (``{'state_dict': ...,
'ssl_jax': metadata}``). It holds no classifier: load it into ``torchvision.models.
resnet50()`` after ``model.fc = torch.nn.Identity()``, or into ``timm.create_model(
'vit_base_patch16_224', num_classes=0)``, with ``strict=True``. A sin-cos ViT gets its
table as timm's ``pos_embed``; a ``pool='gap'`` ViT's final norm is timm's ``fc_norm``
(``global_pool='avg'``).
"""

from __future__ import annotations

import json
from typing import Any

import flax.serialization
import ml_collections
import numpy as np
from flax import linen as nn

from ssl_jax import models, paths, pretrained

EXPORT_FILE = "backbone.msgpack"
TORCH_FORMATS = {"torchvision": "resnet", "timm": "vit"}


def export_backbone(workdir: str, out_path: str | None = None) -> str:
    """Writes the encoder of ``workdir``'s latest checkpoint; returns the file's path."""
    params, batch_stats, info = pretrained.load_encoder(workdir)
    config = pretrained.source_config(workdir)
    blob = {
        "params": params,
        "batch_stats": batch_stats,
        "model": json.dumps(config["model"]),
        "image_size": np.asarray(config["input"]["image_size"], np.int32),
        "mean": np.asarray(config["input"]["mean"], np.float32),
        "std": np.asarray(config["input"]["std"], np.float32),
        "source": json.dumps(info),
    }
    out_path = out_path or paths.join(workdir, EXPORT_FILE)
    paths.write_bytes(out_path, flax.serialization.msgpack_serialize(blob))
    return out_path


def read_export(path: str) -> dict[str, Any]:
    """The contents of a file written by `export_backbone`, checked to be one."""
    blob = flax.serialization.msgpack_restore(paths.read_bytes(path))
    missing = {"params", "batch_stats", "model", "image_size"} - set(blob)
    if missing:
        raise ValueError(f"{path} is no ssl-jax export: it lacks {sorted(missing)}.")
    return blob


def module_and_variables(blob: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """The Linen backbone and its variables of a `read_export` blob."""
    model_cfg = ml_collections.ConfigDict(json.loads(blob["model"]))
    module = models.make_backbone(model_cfg, image_size=int(blob["image_size"]))
    variables = {"params": blob["params"]}
    if blob["batch_stats"]:
        variables["batch_stats"] = blob["batch_stats"]
    return module, variables


def load_exported(path: str) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """``(module, variables, source)`` of a file written by `export_backbone`."""
    blob = read_export(path)
    module, variables = module_and_variables(blob)
    return module, variables, json.loads(blob.get("source", "{}"))


def export_torch(workdir: str, fmt: str, out_path: str) -> str:
    """Writes ``workdir``'s encoder as a ``fmt`` PyTorch state dict to ``out_path``
    (``.safetensors`` or ``.pth``); returns the path."""
    from ssl_jax.models.pos_embed import SINCOS_LAYOUTS, sincos_pos_embed
    from ssl_jax.weights import tensor_files, torch_layout

    if fmt not in TORCH_FORMATS:
        raise ValueError(f"unknown export --format={fmt!r}; valid: {sorted(TORCH_FORMATS)}.")
    if not out_path:
        raise ValueError(f"export --format={fmt} needs --out=FILE.safetensors or FILE.pth.")
    tensor_files.kind_of(out_path)  # a bad suffix fails before anything is read
    config = pretrained.source_config(workdir)
    backbone = config["model"]["backbone"]
    kind = "resnet" if backbone in models.RESNETS else "vit"
    if TORCH_FORMATS[fmt] != kind:
        want = {v: k for k, v in TORCH_FORMATS.items()}[kind]
        raise ValueError(f"{workdir} has a {backbone}; export it with --format={want}.")
    padding = config["model"].get("padding", "torch")
    if kind == "resnet" and padding != "torch":
        raise ValueError(
            f"{workdir} has a ResNet padded as TensorFlow's {padding!r} (model.padding), "
            "which torchvision's resnet does not compute: its features would differ."
        )
    params, batch_stats, info = pretrained.load_encoder(workdir)
    state_dict = torch_layout.to_torch(params, batch_stats, kind)
    image_size = int(config["input"]["image_size"])
    if kind == "vit":
        vit = config["model"]["vit"]
        if "pos_embed" not in state_dict:
            grid = image_size // int(vit["patch_size"])
            width = models.VITS[backbone][0]
            layout = SINCOS_LAYOUTS[vit["pos_embed"]]
            state_dict["pos_embed"] = sincos_pos_embed(width, grid, grid, layout=layout)[None]
        if vit["pool"] == "gap":
            state_dict = torch_layout.gap_norm(state_dict, to_timm=True)
    metadata = {
        "format": fmt,
        "backbone": backbone,
        "image_size": image_size,
        "mean": list(config["input"]["mean"]),
        "std": list(config["input"]["std"]),
        "source": info,
    }
    tensor_files.write(out_path, state_dict, metadata)
    return out_path
