"""Reading a TensorFlow 2 object-based checkpoint by its objects' attribute paths.

SimCLR's TF2 releases are SavedModels (``saved_model/variables/variables``) and its runs
write ``ckpt-N`` files; both name a variable by the attribute path that reaches it
(``model/resnet_model/block_groups/0/layers/0/...``). A SavedModel also reaches every
trainable variable through a list (SimCLR's ``trainable_variables_list``), and TensorFlow
names each variable by its *shortest* path, so the checkpoint keys alone lose the layout.
The checkpoint's object graph keeps every edge: each variable is named here by its
shortest path that passes through no such aggregate list.
"""

from __future__ import annotations

import collections

import numpy as np

from ssl_jax import paths
from ssl_jax.weights.tensor_files import TensorFileError

# Edges that gather variables or layers already reachable by their attributes (tf.Module,
# Keras and SavedModel bookkeeping; SimCLR's build_saved_model adds the first).
_AGGREGATES = frozenset(
    {
        "trainable_variables_list",
        "variables",
        "trainable_variables",
        "non_trainable_variables",
        "trainable_weights",
        "non_trainable_weights",
        "weights",
        "keras_api",
        "layers_list",
        "submodules",
        "signatures",
    }
)
_VALUE = "VARIABLE_VALUE"
_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def checkpoint_prefix(path: str) -> str:
    """The checkpoint ``path`` names: a prefix (``.../ckpt-1000``, ``.index`` beside it),
    a SavedModel directory, or a directory of ``ckpt-N`` files (its latest)."""
    import tensorflow as tf

    if paths.exists(path + ".index"):
        return path
    saved_model_variables = paths.join(path, "variables", "variables")
    if paths.exists(saved_model_variables + ".index"):
        return saved_model_variables
    if paths.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest:
            return latest
    raise TensorFileError(
        f"{path}: no TensorFlow checkpoint: expected a checkpoint prefix (PATH.index beside "
        "it), a SavedModel directory (variables/variables.index) or a directory with a "
        "'checkpoint' file."
    )


def read(path: str) -> dict[str, np.ndarray]:
    """``{attribute path: array}`` of every variable in the checkpoint at ``path``."""
    import tensorflow as tf
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    prefix = checkpoint_prefix(path)
    try:
        reader = tf.train.load_checkpoint(prefix)
        graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(
            reader.get_tensor(_GRAPH_KEY)
        )
    except Exception as e:  # noqa: BLE001 - TensorFlow raises many error types here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TensorFileError(
            f"{prefix}: not a readable TensorFlow 2 checkpoint ({first})."
        ) from None
    named = _named_paths(graph)
    variables = {}
    for node_id, node in enumerate(graph.nodes):
        for attribute in node.attributes:
            if attribute.name == _VALUE:
                name = named.get(node_id) or attribute.checkpoint_key.split("/.ATTRIBUTES")[0]
                variables[name] = np.asarray(reader.get_tensor(attribute.checkpoint_key))
    return variables


def _named_paths(graph) -> dict[int, str]:
    """Each object's shortest path from the root that avoids the aggregate edges."""
    found = {0: ""}
    queue = collections.deque([0])
    while queue:
        node_id = queue.popleft()
        for child in graph.nodes[node_id].children:
            if child.local_name in _AGGREGATES or child.node_id in found:
                continue
            parent = found[node_id]
            found[child.node_id] = f"{parent}/{child.local_name}" if parent else child.local_name
            queue.append(child.node_id)
    return found
