"""SimCLR's TF2 and BYOL's Haiku release formats, written here from torchvision-layout
weights, and a TensorFlow forward of the two releases' ResNets to compare with.

The files are the real formats: a TF2 SavedModel (and a ``tf.train.Checkpoint`` run
directory) whose objects carry the attribute names of simclr/tf2 (``model.resnet_model``,
``block_groups``, ``conv_relu_dropblock_layers``, ...), and a protocol-2 pickle whose
globals are the names the BYOL release's classes have (``byol.byol_experiment.
_ByolExperimentState``, Haiku's ``FlatMapping``, the optimizer states), defined here only
while pickling, as dill writes importable classes: by reference.
"""

import contextlib
import pickle
import re
import sys
import types
from typing import NamedTuple

import numpy as np
import tensorflow as tf

BN_EPS = 1e-5  # both releases' BatchNorm epsilon


def hwio(weight):
    return np.transpose(weight, (2, 3, 1, 0))


# --- the TF reference forward ----------------------------------------------------------


def _conv(x, kernel, stride, padding):
    kernel = hwio(kernel)
    k = kernel.shape[0]
    if padding == "same" or stride == 1:
        return tf.nn.conv2d(x, kernel, stride, "SAME")
    # simclr/tf2 resnet.py FixedPadding: (k - 1) // 2 before, the rest after, then VALID.
    beg = (k - 1) // 2
    x = tf.pad(x, [[0, 0], [beg, k - 1 - beg], [beg, k - 1 - beg], [0, 0]])
    return tf.nn.conv2d(x, kernel, stride, "VALID")


def _bn(x, sd, name):
    scale = sd[f"{name}.weight"] / np.sqrt(sd[f"{name}.running_var"] + BN_EPS)
    return (x - sd[f"{name}.running_mean"]) * scale + sd[f"{name}.bias"]


def resnet_features(sd, images, padding):
    """Eval-mode pooled features of a bottleneck ResNet v1.5 given in torchvision keys;
    ``padding``: 'simclr' (fixed padding of strided convs) or 'same' (Haiku: every conv
    'SAME'); the max-pool is 'SAME' in both."""
    x = tf.constant(images)
    x = tf.nn.relu(_bn(_conv(x, sd["conv1.weight"], 2, padding), sd, "bn1"))
    x = tf.nn.max_pool2d(x, 3, 2, "SAME")
    blocks = sorted({m[0] for k in sd if (m := re.match(r"layer\d\.\d+", k))})
    blocks.sort(key=lambda b: (int(b[5]), int(b.split(".")[1])))
    for block in blocks:
        stride = 2 if block.endswith(".0") and block != "layer1.0" else 1
        shortcut = x
        if f"{block}.downsample.0.weight" in sd:
            w = sd[f"{block}.downsample.0.weight"]
            shortcut = _bn(_conv(x, w, stride, padding), sd, f"{block}.downsample.1")
        y = tf.nn.relu(_bn(_conv(x, sd[f"{block}.conv1.weight"], 1, padding), sd, f"{block}.bn1"))
        y = tf.nn.relu(
            _bn(_conv(y, sd[f"{block}.conv2.weight"], stride, padding), sd, f"{block}.bn2")
        )
        y = _bn(_conv(y, sd[f"{block}.conv3.weight"], 1, padding), sd, f"{block}.bn3")
        x = tf.nn.relu(y + shortcut)
    return tf.reduce_mean(x, [1, 2]).numpy()


# --- SimCLR: the TF2 object layout ------------------------------------------------------

_TF_BN = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}


def simclr_paths(sd):
    """torchvision keys -> simclr/tf2 attribute paths under ``model/resnet_model``."""
    out = {}
    for key, value in sd.items():
        *module, leaf = key.split(".")
        module = ".".join(module)
        if leaf == "num_batches_tracked":
            continue
        if module == "conv1":
            path = "initial_conv_relu_max_pool/0/conv2d"
        elif module == "bn1":
            path = "initial_conv_relu_max_pool/2/bn"
        else:
            layer, block, *rest = module.split(".")
            group = f"block_groups/{int(layer[5:]) - 1}/layers/{block}"
            if rest[0] == "downsample":
                path = f"{group}/projection_layers/{rest[1]}/" + (
                    "conv2d" if rest[1] == "0" else "bn"
                )
            else:
                i = int(rest[0][-1]) - 1  # conv1..3 / bn1..3 -> list slots 0,3,6 / 1,4,7
                path = f"{group}/conv_relu_dropblock_layers/{3 * i + (rest[0].startswith('bn'))}/"
                path += "bn" if rest[0].startswith("bn") else "conv2d"
        value = hwio(value) if leaf == "weight" and value.ndim == 4 else value
        out[f"{path}/{'kernel' if value.ndim == 4 else _TF_BN[leaf]}"] = value
    return out


def simclr_head(rng, dims):
    """SimCLR v2's ProjectionHead variables: LinearLayers ``nl_j`` of widths ``dims``
    (Dense without bias, BN; the last BN has no beta)."""
    out = {}
    last = len(dims) - 2
    for j, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        prefix = f"linear_layers/{j}"
        out[f"{prefix}/dense/kernel"] = rng.normal(0, 0.05, (d_in, d_out)).astype(np.float32)
        out[f"{prefix}/bn_relu/bn/gamma"] = rng.uniform(0.5, 1.5, d_out).astype(np.float32)
        if j != last:
            out[f"{prefix}/bn_relu/bn/beta"] = rng.normal(0, 0.1, d_out).astype(np.float32)
        out[f"{prefix}/bn_relu/bn/moving_mean"] = rng.normal(0, 0.1, d_out).astype(np.float32)
        out[f"{prefix}/bn_relu/bn/moving_variance"] = rng.uniform(0.5, 1.5, d_out).astype(
            np.float32
        )
    return out


def _module_tree(variables, trainable):
    """Nested tf.Modules (lists where a path segment is an index) holding ``variables``."""
    root = tf.Module()
    for path, value in variables.items():
        *parts, leaf = path.split("/")
        node = root
        for part, following in zip(parts, [*parts[1:], leaf], strict=True):
            if isinstance(node, list):
                while len(node) <= int(part):
                    node.append(tf.Module())  # the release's variable-less layers
                child = node[int(part)]
            else:
                child = getattr(node, part, None)
                if child is None:
                    child = [] if following.isdigit() else tf.Module()
                    setattr(node, part, child)
                    child = getattr(node, part)  # tf.Module wraps a list to track it
            node = child
        variable = tf.Variable(value, trainable=not leaf.startswith("moving_"))
        setattr(node, leaf, variable)
        if variable.trainable:
            trainable.append(variable)
    return root


def write_simclr(variables, directory, kind="saved_model"):
    """``variables`` (paths under ``model/``) as the release's SavedModel (the root holds
    ``model`` and SimCLR's ``trainable_variables_list``) or, ``kind='run'``, as a run
    directory of ``ckpt-N`` files (tf2/run.py's CheckpointManager)."""
    trainable = []
    model = _module_tree(variables, trainable)
    if kind == "saved_model":
        root = tf.Module()
        root.model = model
        root.trainable_variables_list = trainable  # build_saved_model's list
        tf.saved_model.save(root, directory)
        return directory
    slots = tf.Module()
    slots.momentum = [tf.Variable(tf.zeros_like(v)) for v in trainable[:2]]
    checkpoint = tf.train.Checkpoint(model=model, global_step=tf.Variable(7), optimizer=slots)
    tf.train.CheckpointManager(checkpoint, directory, max_to_keep=1).save()
    return directory


# --- BYOL: the Haiku pickle -------------------------------------------------------------

_HAIKU_BN = {"weight": "scale", "bias": "offset"}


def haiku_resnet(sd, root="res_net50"):
    """torchvision keys -> Haiku ``(params, state)`` of byol's ResNet50 (hk.nets blocks)."""
    params, state = {}, {}
    for key, value in sd.items():
        *module, leaf = key.split(".")
        module = ".".join(module)
        if leaf == "num_batches_tracked":
            continue
        if module == "conv1":
            name, kind = "initial_conv", "conv"
        elif module == "bn1":
            name, kind = "initial_batchnorm", "bn"
        else:
            layer, block, *rest = module.split(".")
            prefix = f"block_group_{int(layer[5:]) - 1}/~/block_{block}/~/"
            if rest[0] == "downsample":
                kind = "conv" if rest[1] == "0" else "bn"
                name = prefix + ("shortcut_conv" if kind == "conv" else "shortcut_batchnorm")
            else:
                kind = "bn" if rest[0].startswith("bn") else "conv"
                index = int(rest[0][-1]) - 1
                name = prefix + (f"conv_{index}" if kind == "conv" else f"batchnorm_{index}")
        path = f"{root}/~/{name}"
        if kind == "conv":
            params[path] = {"w": hwio(value)}
        elif leaf in _HAIKU_BN:
            params.setdefault(path, {})[_HAIKU_BN[leaf]] = value.reshape(1, 1, 1, -1)
        else:
            ema = "mean_ema" if leaf == "running_mean" else "var_ema"
            state[f"{path}/~/{ema}"] = haiku_ema(value.reshape(1, 1, 1, -1))
    return params, state


def haiku_ema(average, decay=0.9, counter=100):
    """hk.ExponentialMovingAverage's state: ``hidden`` biased, ``average`` debiased."""
    return {
        "counter": np.asarray(counter, np.int32),
        "hidden": average * (1 - decay**counter),
        "average": average,
    }


def haiku_mlp(rng, name, d_in, hidden, d_out):
    """byol/utils/networks.py MLP: Linear(bias) -> BatchNorm -> ReLU -> Linear(no bias)."""
    params = {
        f"{name}/~/linear": {
            "w": rng.normal(0, 0.05, (d_in, hidden)).astype(np.float32),
            "b": rng.normal(0, 0.1, hidden).astype(np.float32),
        },
        f"{name}/~/batch_norm": {
            "scale": rng.uniform(0.5, 1.5, (1, hidden)).astype(np.float32),
            "offset": rng.normal(0, 0.1, (1, hidden)).astype(np.float32),
        },
        f"{name}/~/linear_1": {"w": rng.normal(0, 0.05, (hidden, d_out)).astype(np.float32)},
    }
    mean = rng.normal(0, 0.1, (1, hidden)).astype(np.float32)
    var = rng.uniform(0.5, 1.5, (1, hidden)).astype(np.float32)
    state = {
        f"{name}/~/batch_norm/~/mean_ema": haiku_ema(mean),
        f"{name}/~/batch_norm/~/var_ema": haiku_ema(var),
    }
    return params, state


class _ByolExperimentState(NamedTuple):
    online_params: object
    target_params: object
    online_state: object
    target_state: object
    opt_state: object


class ScaleByLarsState(NamedTuple):
    mu: object


class EmptyState(NamedTuple):
    pass


class FlatMapping(dict):
    """Haiku 0.0.3's FlatMapping pickles as ``FlatMapping(mapping)``."""

    def __reduce__(self):
        return FlatMapping, (dict(self),)


_RELEASE_CLASSES = {
    "byol.byol_experiment": [_ByolExperimentState],
    "byol.utils.optimizers": [ScaleByLarsState],
    "optax._src.base": [EmptyState],
    "haiku._src.data_structures": [FlatMapping],
}


@contextlib.contextmanager
def _release_modules():
    saved = {}
    try:
        for module_name, classes in _RELEASE_CLASSES.items():
            for parent in [
                ".".join(module_name.split(".")[:i]) for i in range(1, module_name.count(".") + 1)
            ]:
                saved.setdefault(parent, sys.modules.get(parent))
                sys.modules.setdefault(parent, types.ModuleType(parent))
            saved.setdefault(module_name, sys.modules.get(module_name))
            module = types.ModuleType(module_name)
            for cls in classes:
                cls.__module__, cls.__qualname__ = module_name, cls.__name__
                setattr(module, cls.__name__, cls)
            sys.modules[module_name] = module
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _frozen(tree):
    return FlatMapping({k: FlatMapping(v) for k, v in tree.items()})


def write_byol(path, online, target, step=1000):
    """``online`` / ``target``: ``(params, state)``; the file byol's Checkpointer writes."""
    state = _ByolExperimentState(
        online_params=_frozen(online[0]),
        target_params=_frozen(target[0]),
        online_state=_frozen(online[1]),
        target_state=_frozen(target[1]),
        opt_state=(ScaleByLarsState(mu=_frozen(online[0])), EmptyState()),
    )
    data = {"experiment_state": state, "step": step, "rng": np.zeros(2, np.uint32)}
    with _release_modules(), open(path, "wb") as f:
        pickle.dump(data, f, protocol=2)
    return path
