"""Loading a pretrained encoder from any ssl_jax workdir (for fine-tuning / linear probes).

Every method keeps its encoder under ``params['backbone']`` (and BatchNorm statistics under
``batch_stats['backbone']``), so the encoder of any run can be read from its latest
checkpoint. The source run's ``config.json`` names its method, whose ``ENCODER``
(``methods/__init__.py``) says where the evaluated encoder lives: for DINO the teacher
(``extra/target_params/backbone``), the network its paper evaluates and
facebookresearch/dino eval_linear.py loads by default (``--checkpoint_key teacher``); for
every other method the trained encoder itself.

The checkpoint is read with orbax directly (this module must not import ssl_jax.train):
only the needed subtrees are restored, onto one local device, from the tree metadata, so
no template of the source run's train state (nor its optimizer state) is needed. The steps
are listed through a read-only ``Checkpointer``: reading never writes to the source run,
which may still be training, and an unreadable newest step is skipped, not moved.

A learned ViT position embedding saved for another patch grid is resized bicubically to
this config's grid (``vit.interpolate_pos_embed``, as MAE's util/pos_embed.py
``interpolate_pos_embed`` does when fine-tuning at another resolution); every other name or
shape mismatch is an error listing the offending paths.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import SingleDeviceSharding

from ssl_jax import methods, paths
from ssl_jax.checkpoint import CONFIG_FILE, Checkpointer, saved_config
from ssl_jax.models.vit import interpolate_pos_embed

_MAX_LISTED = 5


class PretrainedMismatchError(ValueError):
    """The source encoder does not fit this config's backbone (names or shapes)."""


def source_config(workdir: str) -> dict:
    """The resolved config a run wrote to ``<workdir>/config.json``."""
    config = saved_config(workdir)
    if config is None:
        raise FileNotFoundError(
            f"{workdir!r} has no {CONFIG_FILE}; name the --workdir of a pretraining run."
        )
    return config


def checkpoint_paths(workdir: str) -> list[tuple[str, int]]:
    """``(path of the saved train state, step)`` of every checkpoint of ``workdir``, newest
    first, listed read-only (a run still training there is undisturbed)."""
    reader = Checkpointer(workdir, read_only=True)
    steps = reader.all_steps()
    reader.close()
    if not steps:
        raise FileNotFoundError(f"no checkpoint under {reader.directory}.")
    return [(paths.join(reader.directory, str(s), "default"), s) for s in reversed(steps)]


def read_latest(
    workdir: str, required: list[str], optional: list[str] = ()
) -> tuple[dict[str, Any], int]:
    """``read_subtrees`` of the newest readable checkpoint of ``workdir`` and its step. An
    unreadable newer step is skipped with a warning and left where it is (as
    ``Checkpointer.restore`` does for a reader); when no step can be read, the newest
    one's error is raised (a ``KeyError`` for a missing sub-tree)."""
    errors = []
    for path, step in checkpoint_paths(workdir):
        try:
            return read_subtrees(path, required, optional), step
        except Exception as e:  # noqa: BLE001 - orbax and TensorStore raise many types
            logging.warning("checkpoint step %d is unreadable (%s); trying older", step, e)
            errors.append(e)
    raise errors[0]


def _subtree(tree: Any, dotted: str, where: str) -> Any:
    node = tree
    for key in dotted.split("/"):
        if not isinstance(node, dict) or key not in node:
            raise KeyError(f"{where} has no '{dotted}' (missing key {key!r})")
        node = node[key]
    return node


def _nest(dotted: str, value: Any) -> dict:
    for key in reversed(dotted.split("/")):
        value = {key: value}
    return value


def read_subtrees(path: str, required: list[str], optional: list[str] = ()) -> dict[str, Any]:
    """The sub-trees at the "/"-joined paths (``params``, ``extra/target_params/backbone``)
    of the train state saved at ``path``, as NumPy trees by path; an ``optional`` path the
    checkpoint lacks (or holds empty, as a ViT's statistics) maps to ``{}``.

    Read-only and template-free: only these sub-trees are restored, onto one local device
    (the source run's mesh and optimizer state are irrelevant; the caller places them)."""
    checkpointer = ocp.PyTreeCheckpointer()
    metadata = checkpointer.metadata(path)
    # orbax returns StepMetadata (item_metadata: the tree metadata) or the tree metadata.
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    found, wanted = {}, {}
    for dotted in [*required, *optional]:
        try:
            meta = _subtree(tree, dotted, f"the checkpoint {path}")
        except KeyError:
            if dotted in required:
                raise
            meta = {}
        found[dotted] = bool(jax.tree.leaves(meta))
        if found[dotted]:
            wanted = _merge(wanted, _nest(dotted, meta))
    sharding = SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), wanted)
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), wanted)
    restored = checkpointer.restore(
        path,
        args=ocp.args.PyTreeRestore(abstract, restore_args=restore_args, partial_restore=True),
    )
    return {
        dotted: jax.tree.map(np.asarray, _subtree(restored, dotted, path)) if has else {}
        for dotted, has in found.items()
    }


def load_encoder(workdir: str) -> tuple[dict, dict, dict]:
    """``(params, batch_stats, info)`` of the source run's encoder (NumPy trees; the
    statistics ``{}`` for a ViT); ``info`` names the method, step and paths read."""
    config = source_config(workdir)
    method = config.get("method", "")
    encoder = methods.get_method(method).ENCODER
    params_at, stats_at = f"{encoder.params}/backbone", f"{encoder.batch_stats}/backbone"
    try:
        trees, step = read_latest(workdir, [params_at], [stats_at])
    except KeyError as e:
        raise KeyError(
            f"{e.args[0]} (method {method!r}): ssl_jax keeps every method's encoder under "
            "'backbone'; this checkpoint was not written by a method that has one."
        ) from None
    info = dict(
        workdir=workdir,
        method=method,
        step=step,
        params=params_at,
        batch_stats=stats_at,
        backbone=config.get("model", {}).get("backbone"),
    )
    return trees[params_at], trees[stats_at], info


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if k in out and isinstance(v, dict) else v
    return out


def _flat(tree: Any) -> dict[str, Any]:
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def _resize_pos_embed(source: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray | None:
    """A learned ``[1 + n*n, D]`` embedding resized to ``target_shape``'s grid, or None."""
    if len(source.shape) != 2 or len(target_shape) != 2 or source.shape[1] != target_shape[1]:
        return None
    side = math.isqrt(target_shape[0] - 1)
    if side * side != target_shape[0] - 1:
        return None
    return np.asarray(interpolate_pos_embed(source, (side, side)))


def fit_to(target: Any, source: Any, *, what: str, source_info: dict | None = None) -> Any:
    """``source`` arranged as ``target`` (same paths, shapes, dtypes); fails listing the
    first mismatching paths with both shapes."""
    want, have = _flat(target), _flat(source)
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    out, bad_shapes = {}, []
    for name in sorted(set(want) & set(have)):
        value = np.asarray(have[name])
        shape = tuple(want[name].shape)
        if value.shape != shape and name.rsplit("/", 1)[-1] == "pos_embed":
            resized = _resize_pos_embed(value, shape)
            value = value if resized is None else resized
        if value.shape != shape:
            bad_shapes.append(f"{name}: checkpoint {value.shape} vs model {shape}")
        out[name] = value.astype(want[name].dtype)
    if missing or unexpected or bad_shapes:
        lines = []
        if bad_shapes:
            lines.append("shape mismatch: " + "; ".join(bad_shapes[:_MAX_LISTED]))
        if missing:
            lines.append("missing in the checkpoint: " + ", ".join(missing[:_MAX_LISTED]))
        if unexpected:
            lines.append("not in the model: " + ", ".join(unexpected[:_MAX_LISTED]))
        src = source_info or {}
        hint = (
            f" The source run ({src.get('workdir')}, method {src.get('method')!r}) used "
            f"model.backbone={src.get('backbone')!r}; use the same backbone and model.vit "
            "settings (patch_size, pos_embed; a learned pos_embed is resized to a new grid, "
            "a sin-cos one has no parameter)."
            if src
            else ""
        )
        raise PretrainedMismatchError(
            f"the pretrained {what} does not fit this model ({len(bad_shapes)} shape, "
            f"{len(missing)} missing, {len(unexpected)} unexpected): " + " | ".join(lines) + hint
        )
    leaves = [out[name] for name in _flat(target)]
    return jax.tree.unflatten(jax.tree.structure(target), leaves)


def load_backbone(workdir: str, params: Any, batch_stats: Any) -> tuple[Any, Any, dict]:
    """The source encoder of ``workdir`` fitted to this model's ``params['backbone']`` and
    ``batch_stats['backbone']`` (NumPy arrays); returns ``(backbone params, backbone
    batch_stats, info)``."""
    if "backbone" not in params:
        raise KeyError(f"the model has no 'backbone' params (top-level: {sorted(params)})")
    src_params, src_stats, info = load_encoder(workdir)
    new_params = fit_to(
        params["backbone"], src_params, what=f"{info['params']} params", source_info=info
    )
    new_stats = fit_to(
        batch_stats.get("backbone", {}),
        src_stats,
        what=f"{info['batch_stats']} statistics",
        source_info=info,
    )
    return new_params, new_stats, info
