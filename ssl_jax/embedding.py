"""The Python API for features: ``ssl_jax.load_encoder`` and ``ssl_jax.embed``.

    import ssl_jax
    features = ssl_jax.embed("/tmp/moco_digits", images)      # np.ndarray [N, D]
    module, variables = ssl_jax.load_encoder("backbone.msgpack")

A source is any of: a workdir (its latest checkpoint's evaluated encoder, e.g. DINO's
teacher), an ``ssl-jax export`` file (``.msgpack``), or a PyTorch state dict in
torchvision or timm layout (``.safetensors`` / ``.pth``, such as ``ssl-jax export
--format=torchvision|timm`` writes; a file without ssl_jax's metadata is taken as an
ImageNet model: ImageNet mean/std, 224 px).

``embed`` takes uint8 images ``[N, H, W, 3]`` (scaled to 0..1 and normalised with the
encoder's training mean/std) or float images already normalised; it runs them in batches
sharded over this process's devices and returns float32 features in input order.
Single-process only (a multi-host job shards its own data: see ``evaluate/features.py``).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ssl_jax import config_base, models, paths

_IMAGENET_SIZE = 224


@dataclasses.dataclass(frozen=True)
class _Loaded:
    module: nn.Module
    variables: dict[str, Any]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _from_workdir(workdir: str) -> _Loaded:
    from ssl_jax import pretrained

    config = pretrained.source_config(workdir)
    params, batch_stats, _ = pretrained.load_encoder(workdir)
    module = models.make_backbone(
        ml_collections.ConfigDict(config["model"]), image_size=config["input"]["image_size"]
    )
    variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
    return _Loaded(module, variables, tuple(config["input"]["mean"]), tuple(config["input"]["std"]))


def _from_msgpack(path: str) -> _Loaded:
    from ssl_jax import export

    blob = export.read_export(path)
    module, variables = export.module_and_variables(blob)
    if "mean" not in blob:
        raise ValueError(f"{path} records no input mean/std (exported before they were kept).")
    return _Loaded(module, variables, tuple(blob["mean"].tolist()), tuple(blob["std"].tolist()))


def _json_or_text(value: Any) -> Any:
    """A safetensors header value: JSON-encoded by ``tensor_files.write``, or plain text."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _from_state_dict(path: str) -> _Loaded:
    from ssl_jax.weights import formats, tensor_files, torch_layout

    contents, metadata = tensor_files.read(path)
    if "ssl_jax" in contents and "state_dict" in contents:
        metadata, contents = contents["ssl_jax"], contents["state_dict"]
    meta = {k: _json_or_text(v) for k, v in metadata.items()}
    kind_name = "timm" if "patch_embed.proj.weight" in contents else "torchvision"
    release = formats.read_release(kind_name, contents, path)
    network = release.online["backbone"]
    model_cfg = config_base.base_config().model
    image_size = int(meta.get("image_size", _IMAGENET_SIZE))
    if release.backbone_kind == "resnet":
        found = torch_layout.infer_resnet(network, path)
        model_cfg.backbone, model_cfg.stem = found["backbone"], found["stem"]
        model_cfg.width_multiplier = found["width_multiplier"]
    else:
        found = torch_layout.infer_vit(network, path)
        model_cfg.backbone, model_cfg.vit.patch_size = found["backbone"], found["patch_size"]
        model_cfg.vit.pos_embed = "learned"  # the file's table, whatever its layout
        if "fc_norm.weight" in network:
            model_cfg.vit.pool = "gap"
            network = torch_layout.gap_norm(network, to_timm=False)
        image_size = found["image_size"] or image_size
    module = models.make_backbone(model_cfg, image_size=image_size)
    dummy = np.zeros((1, image_size, image_size, 3), np.float32)
    template = jax.eval_shape(lambda: module.init(jax.random.key(0), dummy, train=False))
    params, stats = torch_layout.from_torch(
        network,
        template["params"],
        template.get("batch_stats", {}),
        release.backbone_kind,
        what=f"state dict in {path}",
    )
    variables = {"params": params, **({"batch_stats": stats} if stats else {})}
    mean = tuple(meta.get("mean", config_base.IMAGENET_MEAN))
    std = tuple(meta.get("std", config_base.IMAGENET_STD))
    return _Loaded(module, variables, mean, std)


def _load(source: str) -> _Loaded:
    if paths.isdir(source):
        return _from_workdir(source)
    if source.endswith(".msgpack"):
        return _from_msgpack(source)
    return _from_state_dict(source)


def load_encoder(source: str, *, nnx: bool = False) -> Any:
    """``(module, variables)`` of a workdir, an export or a torchvision / timm state dict:
    ``module.apply(variables, images, train=False)`` -> ``[B, D]`` features of normalised
    ``[B, H, W, 3]`` images.

    ``nnx=True``: one Flax NNX module holding the variables instead (Flax's Linen -> NNX
    bridge, ``nnx.bridge.ToNNX``), ``model(images, train=False)`` -> the same features;
    ``nnx.split(model)`` gives its graph and state for NNX training code."""
    loaded = _load(source)
    if not nnx:
        return loaded.module, loaded.variables
    from flax.nnx import bridge
    from flax.nnx.bridge import variables as bridge_variables

    model = bridge.ToNNX(loaded.module)
    # What ToNNX's own lazy_init stores, from these variables instead of a random init.
    for name, value in bridge_variables.linen_vars_to_nnx_attrs(loaded.variables).items():
        setattr(model, name, value)
    return model


def embed(source: str, images: Any, *, batch_size: int = 256) -> np.ndarray:
    """Features ``[N, D]`` (float32) of ``images [N, H, W, 3]`` (see the module
    docstring); ``batch_size`` images per device step, rounded up to the device count."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [N, H, W, 3], got shape {images.shape}.")
    loaded = _load(source)
    devices = jax.local_devices()
    mesh = Mesh(np.asarray(devices), ("data",))
    batch = -(-max(1, batch_size) // len(devices)) * len(devices)
    mean, std = np.asarray(loaded.mean, np.float32), np.asarray(loaded.std, np.float32)
    sharding = NamedSharding(mesh, P("data"))
    apply = jax.jit(lambda v, x: loaded.module.apply(v, x, train=False))
    variables = jax.device_put(loaded.variables, NamedSharding(mesh, P()))
    out = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        x = (chunk / 255.0 - mean) / std if chunk.dtype == np.uint8 else chunk
        x = x.astype(np.float32)
        rows = -(-len(x) // len(devices)) * len(devices)  # the last batch: fewer rows
        padded = np.concatenate([x, np.zeros((rows - len(x), *x.shape[1:]), np.float32)])
        feats = apply(variables, jax.device_put(padded, sharding))
        out.append(np.asarray(feats)[: len(x)])
    if not out:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(out)
