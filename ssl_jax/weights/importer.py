"""`ssl-jax import`: a released checkpoint -> an ssl_jax workdir (config.json + step 0).

The workdir is an ordinary run directory, so ``ssl-jax eval``, ``ssl-jax export``,
``supervised.init_from=W`` and ``ssl-jax pretrain`` (continued pretraining) work on it.

1. The file is read (``tensor_files`` for PyTorch and safetensors files, ``tf_checkpoint``
   for SimCLR's, ``restricted_pickle`` for BYOL's) and split into its networks
   (``formats``, ``google_releases``).
2. The architecture is read off the shapes and set in the ``--config`` preset's model:
   the backbone name, stem and width multiplier of a ResNet, and what its framework fixed
   (``Release.settings``: TensorFlow's padding, SimCLR's unnormalised pixels); a ViT's
   size, patch size, and position embedding: ``sincos`` / ``sincos_mae`` when the file's
   table equals the MoCo v3 / MAE sin-cos table ssl_jax computes, else ``learned``
   holding the file's values (DINO's), resized to the preset's grid when it differs. ViT
   heads are not in the shapes: ``model.vit.num_heads`` if set, else the release's (MoCo
   v3 ViT-S: 12), else the registry's.
3. The preset's train state is initialised as for pretraining; the file's networks replace
   their counterparts in it. The backbone always; heads, predictor, momentum encoder /
   teacher, MoCo's queue, DINO's center and MAE's decoder (whose fixed table must be the
   encoder's layout) only when the preset's method is the release's
   (then the heads' sizes must be the preset's: a mismatch is named). A momentum encoder or
   teacher the file lacks starts as the imported online network, as the method's own init
   does. The rest keeps its fresh init, and ``import.json`` lists which parts came from the
   file and which did not.
4. ``config.json`` and the checkpoint at step 0 are written only once all of this
   succeeded; a workdir that already holds a run is refused.

Continued pretraining starts from step 0 of the preset's schedule with a fresh optimizer
state (the releases' optimizer states are not imported).
"""

from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections
import numpy as np

from ssl_jax import config_base, paths
from ssl_jax.checkpoint import CONFIG_FILE, Checkpointer, check_and_save_config
from ssl_jax.models import VITS
from ssl_jax.models.pos_embed import SINCOS_LAYOUTS, interpolate_pos_embed, sincos_pos_embed
from ssl_jax.weights import formats
from ssl_jax.weights.torch_layout import (
    LayoutError,
    from_torch,
    gap_norm,
    infer_resnet,
    infer_vit,
)

IMPORT_RECORD = "import.json"
_SINCOS_TOLERANCE = 1e-5


def _model_settings(release: formats.Release, fmt: str, config) -> dict[str, Any]:
    """The ``config`` keys (dotted) that the file's backbone decides, with their values."""
    backbone = release.online.get("backbone") or release.target["backbone"]
    if release.backbone_kind == "resnet":
        found = infer_resnet(backbone, "backbone")
        return {
            "model.backbone": found["backbone"],
            "model.stem": found["stem"],
            "model.width_multiplier": found["width_multiplier"],
            **release.settings,
        }
    found = infer_vit(backbone, "backbone")
    name, patch = found["backbone"], found["patch_size"]
    settings = {"model.backbone": name, "model.vit.patch_size": patch}
    if not config.model.vit.num_heads:
        heads = formats.DEFAULT_HEADS.get(fmt, {}).get(name)
        if heads:
            settings["model.vit.num_heads"] = heads
    # timm's global-pool ViTs (and MAE's fine-tuned ones) normalise the mean token with
    # fc_norm; every other release pools the class token.
    settings["model.vit.pool"] = "gap" if "fc_norm.weight" in backbone else "cls"
    if "pos_embed" in backbone:
        settings["model.vit.pos_embed"] = _pos_embed_kind(backbone["pos_embed"], VITS[name][0])
    decoder_table = release.arrays.get("decoder_pos_embed")
    if decoder_table is not None:
        encoder = settings.get("model.vit.pos_embed", config.model.vit.pos_embed)
        # ssl_jax's MAE decoder computes its table in the encoder's sin-cos layout.
        expected = "sincos_mae" if encoder == "sincos_mae" else "sincos"
        found = _pos_embed_kind(decoder_table, decoder_table.shape[-1])
        if found != expected:
            raise LayoutError(
                f"decoder_pos_embed is {found!r} where the encoder's {encoder!r} table "
                f"implies {expected!r}: ssl_jax's MAE decoder cannot hold it."
            )
    return settings


def _pos_embed_kind(table: np.ndarray, width: int) -> str:
    """``model.vit.pos_embed`` for a file's table: a sin-cos layout ssl_jax computes
    (MoCo v3's, MAE's), or ``learned`` (kept as a parameter)."""
    table = np.asarray(table).reshape(-1, width)
    side = int(round((table.shape[0] - 1) ** 0.5))
    for kind, layout in SINCOS_LAYOUTS.items():
        ours = sincos_pos_embed(width, side, side, layout=layout)
        if table.shape == ours.shape and np.abs(table - ours).max() < _SINCOS_TOLERANCE:
            return kind
    return "learned"


def _fit_pos_embed(network: dict, template_params: Any) -> dict:
    """The file's position embedding resized to the template's grid (or dropped for a
    sin-cos model, which computes the same table)."""
    if "pos_embed" not in network:
        return network
    network = dict(network)
    table = np.asarray(network.pop("pos_embed"))
    target = template_params.get("pos_embed")
    if target is None:
        return network
    table = table.reshape(table.shape[-2:])
    if table.shape != target.shape:
        side = int(round((target.shape[0] - 1) ** 0.5))
        table = np.asarray(interpolate_pos_embed(table, (side, side)))
    network["pos_embed"] = table[None]
    return network


def _fixed_gain(network: dict, template: Any) -> dict:
    """DINO's ``norm_last_layer``: the weight-norm gain ``last_layer.weight_g`` is fixed at
    1, which ssl_jax's DINOHead does not store; a file whose gain is not 1 needs
    ``dino.norm_last_layer=False``."""
    gain = network.get("last_layer.weight_g")
    if gain is None or "scale" in template["last_layer"]:
        return network
    if not np.allclose(gain, 1.0):
        raise LayoutError(
            "the head's last_layer.weight_g is not 1 (trained with --norm_last_layer "
            "false): set --config.dino.norm_last_layer=False."
        )
    return {k: v for k, v in network.items() if k != "last_layer.weight_g"}


def _place(
    release: formats.Release, state: Any, same_method: bool
) -> tuple[Any, list[str], list[str]]:
    """``state`` (NumPy trees) with the file's networks in place; ``(state, loaded,
    fresh)``, the last two naming the parts."""
    params, stats = dict(state.params), dict(state.batch_stats)
    extra = dict(state.extra)
    loaded, fresh = [], []

    def put(network: dict, name: str, params_tree: dict, stats_tree: dict, where: str):
        kind = release.backbone_kind if name == "backbone" else "mlp"
        if name == "head" and "last_layer" in params_tree.get(name, {}):
            kind = "dino_head"
            network = _fixed_gain(network, params_tree[name])
        if name == "backbone" and kind == "vit":
            network = _fit_pos_embed(gap_norm(network, to_timm=False), params_tree[name])
        new_params, new_stats = from_torch(
            network,
            params_tree[name],
            stats_tree.get(name, {}),
            kind,
            what=f"{where} {name}",
        )
        params_tree[name] = new_params
        if new_stats or name in stats_tree:
            stats_tree[name] = new_stats
        loaded.append(f"{where} {name}")

    online = (
        release.online
        if release.online.get("backbone")
        else {"backbone": release.target["backbone"]}
    )
    for name in ("backbone", "head", "predictor"):
        network = online.get(name)
        if name not in params:
            continue
        if network and (name == "backbone" or same_method):
            put(network, name, params, stats, "online")
        else:
            fresh.append(f"online {name}")
    if same_method and release.method == "mae":  # the decoder: every other parameter
        if "decoder" in online:
            template = {k: v for k, v in params.items() if k != "backbone"}
            decoder, _ = from_torch(online["decoder"], template, {}, "vit", what="decoder")
            params.update(decoder)
            loaded.append("decoder")
        else:
            fresh.append("decoder")
    if "target_params" in extra:
        t_params, t_stats = dict(extra["target_params"]), dict(extra["target_batch_stats"])
        for name in ("backbone", "head", "predictor"):
            if name not in t_params:
                continue
            network = (release.target.get(name) if same_method else None) or (
                online.get(name) if name == "backbone" or same_method else None
            )
            if network:
                put(network, name, t_params, t_stats, "target")
            elif name in params and f"online {name}" not in fresh:
                t_params[name] = params[name]  # the method's init: a copy of the online one
                if name in stats:
                    t_stats[name] = stats[name]
                loaded.append(f"target {name} (= online)")
            else:
                fresh.append(f"target {name}")
        extra["target_params"], extra["target_batch_stats"] = t_params, t_stats
    for name, value in release.arrays.items() if same_method else ():
        if name not in extra:
            continue
        if np.shape(extra[name]) != np.shape(value):
            raise LayoutError(
                f"the file's {name} has shape {np.shape(value)}, the config's "
                f"{np.shape(extra[name])} (set the config's size to the file's)."
            )
        extra[name] = np.asarray(value, np.asarray(extra[name]).dtype)
        loaded.append(name)
    state = state.replace(params=params, batch_stats=stats, extra=extra)
    return state, loaded, fresh


def _flag_value(value: Any) -> str:
    """A config value as a flag takes it (a tuple without spaces, for the shell)."""
    if isinstance(value, tuple):
        return "(" + ",".join(map(str, value)) + ")"
    return str(value)


def _refuse_existing(workdir: str) -> None:
    checkpoints = paths.join(workdir, "checkpoints")
    if paths.exists(paths.join(workdir, CONFIG_FILE)) or (
        paths.isdir(checkpoints) and paths.listdir(checkpoints)
    ):
        raise ValueError(f"{workdir} already holds a run; import into a new --workdir.")


def import_checkpoint(
    path: str, fmt: str, config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
    """Writes ``workdir`` from the released checkpoint at ``path`` (see the module
    docstring) and returns the import record."""
    from ssl_jax import parallel, train

    _refuse_existing(workdir)
    formats.check_format(fmt)  # before a file is read as some other format
    release = formats.read_release(fmt, formats.read_file(fmt, path), path)
    try:
        settings = _model_settings(release, fmt, config)
        config = config_base.with_values(config, settings)
        mesh = parallel.make_mesh()
        setup = train.build(config, mesh)
        with jax.set_mesh(mesh):
            state = setup.init(train.keys(config)[0])
        host = jax.tree.map(np.asarray, jax.device_get(state))
        same_method = config.method == release.method
        host, loaded, fresh = _place(release, host, same_method)
    except LayoutError as e:
        hint = (
            " (set the config's model.head / model.predictor sizes to the file's)"
            if "head does not fit" in str(e) or "predictor does not fit" in str(e)
            else ""
        )
        raise LayoutError(f"{path} (--format={fmt}): {e}{hint}") from None
    left_out = list(release.left_out)
    holds_more = set(release.online) - {"backbone"} or release.target or release.arrays
    if not same_method and holds_more:
        left_out.append(
            f"everything but the backbone: the file holds a {release.method} run, the "
            f"config's method is {config.method}"
        )
    check_and_save_config(config, workdir, total_steps=setup.total_steps)
    ckpt = Checkpointer(workdir, async_save=False)
    ckpt.save(0, parallel.replicate(host, mesh), force=True)
    ckpt.wait()
    ckpt.close()
    record = {
        "file": path,
        "format": fmt,
        "method": config.method,
        "config_overrides": [f"--config.{k}={_flag_value(v)}" for k, v in settings.items()],
        "from_the_file": loaded,
        "fresh_init": fresh,
        "not_imported": left_out,
    }
    if jax.process_index() == 0:
        paths.write_text(paths.join(workdir, IMPORT_RECORD), json.dumps(record, indent=2))
    return record


def summary(record: dict[str, Any], workdir: str) -> str:
    """What ``ssl-jax import`` prints: where the run is and what it holds."""
    lines = [f"Imported {record['file']} ({record['format']}) into {workdir}"]
    lines.append("  from the file: " + (", ".join(record["from_the_file"]) or "nothing"))
    if record["fresh_init"]:
        lines.append("  fresh init: " + ", ".join(record["fresh_init"]))
    for item in record["not_imported"]:
        lines.append(f"  not imported: {item}")
    if record["config_overrides"]:
        lines.append(
            "  continued pretraining: ssl-jax pretrain with the same --config and "
            + " ".join(record["config_overrides"])
        )
    return "\n".join(lines)
