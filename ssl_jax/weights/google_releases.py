"""The family's two non-PyTorch releases, translated into torchvision keys.

Both readers return a `Release` whose networks are torchvision-layout state dicts (conv
kernels ``[out, in, kh, kw]``, Linear ``[out, in]``, BN ``weight`` / ``bias`` /
``running_mean`` / ``running_var``), so the rest of the import is the PyTorch formats'.

- ``simclr`` (google-research/simclr, tf2/): a TF2 checkpoint read by attribute path
  (``tf_checkpoint``). The ResNet is ``model/resnet_model``: the stem
  ``initial_conv_relu_max_pool/{0: conv, 2: BN}``; bottleneck ``b`` of group ``g`` is
  ``block_groups/g/layers/b`` with ``conv_relu_dropblock_layers/{0,3,6}`` (convs) and
  ``{1,4,7}`` (BNs), and ``projection_layers/{0: conv, 1: BN}`` for the shortcut; each conv
  is ``.../conv2d/kernel`` (HWIO), each BN ``.../bn/{gamma, beta, moving_mean,
  moving_variance}``. The projection head is ``model/_projection_head/linear_layers/j``
  (``dense/kernel`` and ``bn_relu/bn/*``; the last BN has no beta); the linear classifier
  ``model/supervised_head`` is not part of the encoder. Its strided convs pad as PyTorch's
  but its max-pool is 'SAME', and it feeds [0, 1] pixels without normalising:
  ``model.padding='same_pool'``, ``input.mean=0``, ``input.std=1``. Selective-kernel (sk1)
  ResNets are refused.
- ``byol`` (deepmind-research/byol): the ``.pkl`` read by ``restricted_pickle``; Haiku trees
  ``{module path: {name: array}}`` of a ResNet v1 (``res_net50/~/initial_conv``,
  ``.../block_group_g/~/block_b/~/conv_i`` and ``batchnorm_i``, ``shortcut_conv`` /
  ``shortcut_batchnorm``; conv ``w`` HWIO, BN ``scale`` / ``offset`` of shape
  ``[1, ..., C]``) and ``projector`` / ``predictor`` MLPs (``linear``, ``batch_norm``,
  ``linear_1``); BN statistics in the state trees as ``.../mean_ema`` and ``var_ema``
  (``average``: zero-debiased). Haiku's convs and max-pool are 'SAME':
  ``model.padding='same'``.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ssl_jax.weights.release import Release, fold_bias_into_bn
from ssl_jax.weights.torch_layout import LayoutError

_MAX_NAMED = 5


def _conv(kernel: np.ndarray) -> np.ndarray:
    return np.transpose(np.asarray(kernel), (3, 2, 0, 1))  # HWIO -> OIHW


def _unknown(keys: list[str], what: str) -> LayoutError:
    listed = ", ".join(sorted(keys)[:_MAX_NAMED])
    return LayoutError(f"{len(keys)} keys that are not {what}: {listed}.")


# --- SimCLR (TensorFlow 2) -----------------------------------------------------------

_TF_BN = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
_SIMCLR_STEM = re.compile(r"initial_conv_relu_max_pool/(\d+)/(conv2d|bn)/(\w+)")
_SIMCLR_BLOCK = re.compile(
    r"block_groups/(\d+)/layers/(\d+)/(conv_relu_dropblock_layers|projection_layers)/(\d+)/"
    r"(conv2d|bn)/(\w+)"
)
_SIMCLR_HEAD = re.compile(r"linear_layers/(\d+)/(dense|bn_relu/bn)/(\w+)")


def _torch_modules(where: tuple, kind: str, by_index: dict) -> list[str]:
    """torchvision module names of one SimCLR layer list's convs or BNs (``kind``), in
    list order: the stem's, a shortcut's, or a bottleneck's three."""
    if where == ("stem",):
        return ["conv1" if kind == "conv" else "bn1"]
    block = f"layer{where[0] + 1}.{where[1]}"
    if where[2] == "projection_layers":
        return [f"{block}.downsample.{0 if kind == 'conv' else 1}"]
    return [f"{block}.{kind}{i + 1}" for i in range(len(by_index))]


def _simclr_resnet(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    state: dict[str, np.ndarray] = {}
    convs: dict[tuple, dict[int, np.ndarray]] = {}  # (prefix) -> {list index: kernel}
    bns: dict[tuple, dict[int, dict[str, np.ndarray]]] = {}
    unknown = []
    for key, value in variables.items():
        if m := _SIMCLR_STEM.fullmatch(key):
            where, index, leaf = ("stem",), int(m[1]), (m[2], m[3])
        elif m := _SIMCLR_BLOCK.fullmatch(key):
            where, index, leaf = (int(m[1]), int(m[2]), m[3]), int(m[4]), (m[5], m[6])
        else:
            unknown.append(key)
            continue
        if leaf[0] == "conv2d":
            convs.setdefault(where, {})[index] = value
        else:
            bns.setdefault(where, {}).setdefault(index, {})[leaf[1]] = value
    if unknown:
        sk = any("conv2d_fixed_padding" in k or "/conv2d_0/" in k for k in unknown)
        hint = " (a selective-kernel sk1 ResNet; ssl_jax builds sk0 ones)" if sk else ""
        raise _unknown(unknown, f"a SimCLR bottleneck ResNet{hint}")
    if len(convs.get(("stem",), {})) != 1:
        raise LayoutError(
            "the stem has several convs (SimCLR v2's sk1 ResNet-D stem); ssl_jax builds the "
            "sk0 ResNets."
        )
    for where, by_index in convs.items():
        names = _torch_modules(where, "conv", by_index)
        for name, index in zip(names, sorted(by_index), strict=True):
            state[f"{name}.weight"] = _conv(by_index[index])
    for where, by_index in bns.items():
        names = _torch_modules(where, "bn", by_index)
        for name, index in zip(names, sorted(by_index), strict=True):
            for leaf, value in by_index[index].items():
                state[f"{name}.{_TF_BN[leaf]}"] = np.asarray(value)
    return state


def _simclr_head(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The projection head as an ``nn.Sequential`` of (Linear, BN, ReLU) slots."""
    head, unknown = {}, []
    for key, value in variables.items():
        m = _SIMCLR_HEAD.fullmatch(key)
        if not m:
            unknown.append(key)
            continue
        layer, part, leaf = int(m[1]), m[2], m[3]
        if part == "dense":
            value = np.asarray(value).T if leaf == "kernel" else np.asarray(value)
            head[f"{3 * layer}.{'weight' if leaf == 'kernel' else 'bias'}"] = value
        else:
            head[f"{3 * layer + 1}.{_TF_BN[leaf]}"] = np.asarray(value)
    if unknown:
        raise _unknown(unknown, "SimCLR projection-head layers")
    return head


def read_simclr(variables: dict[str, np.ndarray]) -> Release:
    """``variables``: ``{attribute path: array}`` (``tf_checkpoint.read``)."""
    roots = {k[: k.index("resnet_model/")] for k in variables if "resnet_model/" in k}
    if len(roots) != 1:
        first = sorted(variables)[:3]
        raise LayoutError(f"no 'resnet_model/' variables, as SimCLR's have (first: {first}).")
    (root,) = roots

    def under(prefix: str) -> dict[str, np.ndarray]:
        return {
            k[len(root + prefix) :]: v for k, v in variables.items() if k.startswith(root + prefix)
        }

    online = {"backbone": _simclr_resnet(under("resnet_model/"))}
    left_out = []
    projection = under("_projection_head/")
    if projection:
        online["head"] = _simclr_head(projection)
    else:
        left_out.append("no projection head: the file has none (SimCLR v1's releases)")
    if under("supervised_head/"):
        left_out.append("the linear classifier 'supervised_head' (not part of the encoder)")
    if any(k.startswith("optimizer/") for k in variables):
        left_out.append("the optimizer state (continued pretraining starts a fresh one)")
    settings = {
        "model.padding": "same_pool",
        "input.mean": (0.0, 0.0, 0.0),
        "input.std": (1.0, 1.0, 1.0),
    }
    return Release("resnet", "simclr", online=online, left_out=left_out, settings=settings)


# --- BYOL (Haiku) ---------------------------------------------------------------------

_HAIKU_BLOCK = re.compile(r"block_group_(\d+)/~/block_(\d+)/~/(conv|batchnorm)_(\d+)")
_HAIKU_SHORTCUT = re.compile(r"block_group_(\d+)/~/block_(\d+)/~/shortcut_(conv|batchnorm)")
_HAIKU_MLP = {"linear": "0", "batch_norm": "1", "linear_1": "3"}


def _torch_module(path: str) -> tuple[str, str] | None:
    """``(torchvision module, 'conv' | 'bn')`` of a Haiku ResNet module path."""
    if path == "initial_conv":
        return "conv1", "conv"
    if path == "initial_batchnorm":
        return "bn1", "bn"
    if m := _HAIKU_BLOCK.fullmatch(path):
        kind = "conv" if m[3] == "conv" else "bn"
        return f"layer{int(m[1]) + 1}.{m[2]}.{kind}{int(m[4]) + 1}", kind
    if m := _HAIKU_SHORTCUT.fullmatch(path):
        kind = "conv" if m[3] == "conv" else "bn"
        return f"layer{int(m[1]) + 1}.{m[2]}.downsample.{0 if kind == 'conv' else 1}", kind
    return None


def _haiku_bn(params: dict, stats: dict, module: str, name: str, out: dict) -> None:
    for leaf, torch_leaf in (("scale", "weight"), ("offset", "bias")):
        if leaf in params.get(module, {}):
            out[f"{name}.{torch_leaf}"] = np.asarray(params[module][leaf]).reshape(-1)
    for ema, torch_leaf in (("mean_ema", "running_mean"), ("var_ema", "running_var")):
        average = stats.get(f"{module}/~/{ema}", {}).get("average")
        if average is None:
            raise LayoutError(f"the state has no '{module}/~/{ema}' average for {module!r}.")
        out[f"{name}.{torch_leaf}"] = np.asarray(average).reshape(-1)


def _haiku_network(params: dict, stats: dict, what: str) -> dict[str, dict[str, np.ndarray]]:
    encoders = {k.split("/~/")[0] for k in params if k.endswith("/~/initial_conv")}
    if len(encoders) != 1:
        raise LayoutError(
            f"the {what} has no '<resnet>/~/initial_conv' module (first: {sorted(params)[:3]})."
        )
    (encoder,) = encoders
    if f"{encoder}/~/final_batchnorm" in params:
        raise LayoutError(f"the {what} is a ResNet v2 (final_batchnorm); ssl_jax builds v1.")
    network: dict[str, dict[str, np.ndarray]] = {"backbone": {}}
    unknown = []
    for module in params:
        if module.startswith(f"{encoder}/~/"):
            found = _torch_module(module[len(encoder) + 3 :])
            if found is None:
                unknown.append(module)
            elif found[1] == "conv":
                network["backbone"][f"{found[0]}.weight"] = _conv(params[module]["w"])
            else:
                _haiku_bn(params, stats, module, found[0], network["backbone"])
            continue
        mlp, _, layer = module.partition("/~/")
        if mlp in ("projector", "predictor") and layer in _HAIKU_MLP:
            net = network.setdefault("head" if mlp == "projector" else "predictor", {})
            index = _HAIKU_MLP[layer]
            if layer == "batch_norm":
                _haiku_bn(params, stats, module, index, net)
            else:
                net[f"{index}.weight"] = np.asarray(params[module]["w"]).T
                if "b" in params[module]:
                    net[f"{index}.bias"] = np.asarray(params[module]["b"])
        elif module != "classifier":
            unknown.append(module)
    if unknown:
        raise _unknown(unknown, f"modules of BYOL's {what} (ResNet v1, projector, predictor)")
    for name in ("head", "predictor"):
        if name in network:  # networks.MLP's first Linear has a bias, then BN
            network[name] = fold_bias_into_bn(network[name], "0", "1")
    return network


def read_byol(contents: dict[str, Any]) -> Release:
    """``contents``: the unpickled checkpoint (``restricted_pickle.read``)."""
    state = contents.get("experiment_state")
    if not isinstance(state, dict) or "online_params" not in state:
        raise LayoutError(
            f"no 'experiment_state' with 'online_params', as BYOL's pretrain.pkl has "
            f"(it has {sorted(contents)[:8]})."
        )
    online = _haiku_network(
        state["online_params"], state.get("online_state") or {}, "online network"
    )
    target = {}
    if state.get("target_params"):
        target = _haiku_network(
            state["target_params"], state.get("target_state") or {}, "target network"
        )
        target.pop("predictor", None)
    left_out = []
    if "classifier" in state["online_params"]:
        left_out.append("the online linear classifier 'classifier' (not part of the encoder)")
    if state.get("opt_state") is not None:
        left_out.append("the optimizer state (continued pretraining starts a fresh one)")
    return Release(
        "resnet",
        "byol",
        online=online,
        target=target,
        left_out=left_out,
        settings={"model.padding": "same"},
    )
