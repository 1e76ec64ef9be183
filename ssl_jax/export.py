"""`ssl-jax export`: a run's encoder as one file any Flax user can load.

The file is Flax msgpack (``flax.serialization``) of a plain dict:

* ``params``, ``batch_stats`` -- the backbone's variables (DINO: the teacher's, the
  network its paper evaluates); ``batch_stats`` is ``{}`` for a ViT;
* ``model`` -- the run's ``config.model`` as JSON (backbone name and its options);
* ``image_size`` -- the training resolution (a ViT's position-embedding grid);
* ``source`` -- JSON naming the workdir, method, step and checkpoint paths read.

Without ssl_jax::

    import flax.serialization
    blob = flax.serialization.msgpack_restore(open("backbone.msgpack", "rb").read())
    variables = {"params": blob["params"], "batch_stats": blob["batch_stats"]}

With it, `load_exported(path)` also rebuilds the Linen module:
``module.apply(variables, images, train=False)`` gives ``[B, D]`` features of
normalised ``[B, H, W, 3]`` images.
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


def export_backbone(workdir: str, out_path: str | None = None) -> str:
    """Writes the encoder of ``workdir``'s latest checkpoint; returns the file's path."""
    params, batch_stats, info = pretrained.load_encoder(workdir)
    config = pretrained.source_config(workdir)
    blob = {
        "params": params,
        "batch_stats": batch_stats,
        "model": json.dumps(config["model"]),
        "image_size": np.asarray(config["input"]["image_size"], np.int32),
        "source": json.dumps(info),
    }
    out_path = out_path or paths.join(workdir, EXPORT_FILE)
    paths.write_bytes(out_path, flax.serialization.msgpack_serialize(blob))
    return out_path


def load_exported(path: str) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """``(module, variables, source)`` of a file written by `export_backbone`."""
    blob = flax.serialization.msgpack_restore(paths.read_bytes(path))
    missing = {"params", "batch_stats", "model", "image_size"} - set(blob)
    if missing:
        raise ValueError(f"{path} is no ssl-jax export: it lacks {sorted(missing)}.")
    model_cfg = ml_collections.ConfigDict(json.loads(blob["model"]))
    module = models.make_backbone(model_cfg, image_size=int(blob["image_size"]))
    variables = {"params": blob["params"]}
    if blob["batch_stats"]:
        variables["batch_stats"] = blob["batch_stats"]
    return module, variables, json.loads(blob.get("source", "{}"))
