"""Reading BYOL's released ``.pkl`` checkpoints without running anything they name.

deepmind-research/byol saves ``dill.dump({'experiment_state': ..., 'step', 'rng'},
protocol=2)`` (utils/checkpointing.py), where the experiment state is its
``_ByolExperimentState`` NamedTuple of Haiku trees (``online_params``, ``target_params``,
``online_state``, ``target_state``, ``opt_state``) holding NumPy arrays. A pickle calls
whatever callables it names, so the unpickler here resolves only:

- NumPy's array, dtype and scalar reconstructors (and ``_codecs.encode``, with which
  protocol 2 writes their bytes);
- plain containers (``collections.OrderedDict``);
- by name, the release's own container types, rebuilt as plain Python values without
  importing their modules: the experiment state (-> dict of its fields), Haiku's
  ``FlatMapping`` / ``FlatMap`` / ``frozendict`` (-> dict), and the optimizer states'
  NamedTuples of ``byol.utils.optimizers`` and ``optax`` (-> tuple; not imported).

Anything else is refused, naming the ``module.name`` the file asked for.
"""

from __future__ import annotations

import pickle
from typing import Any

from ssl_jax import paths
from ssl_jax.weights.tensor_files import TensorFileError

EXPERIMENT_STATE = ("byol.byol_experiment", "_ByolExperimentState")
EXPERIMENT_FIELDS = ("online_params", "target_params", "online_state", "target_state", "opt_state")
_HAIKU_MAPPINGS = {
    ("haiku._src.data_structures", name) for name in ("FlatMapping", "FlatMap", "frozendict")
}
_NUMPY = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    # Protocol 2 has no bytes opcode: Python 3 writes an array's raw bytes as
    # _codecs.encode(text, 'latin1'), which only turns a str into bytes.
    ("_codecs", "encode"),
}


class _OptimizerState(tuple):
    """An optimizer state NamedTuple, kept as its fields (never imported)."""

    def __new__(cls, *fields):
        return tuple.__new__(cls, fields)


def _experiment_state(*fields) -> dict[str, Any]:
    return dict(zip(EXPERIMENT_FIELDS, fields, strict=True))


class _ExperimentState:
    """Stands in for ``_ByolExperimentState``: protocol 2 rebuilds a NamedTuple with
    ``cls.__new__(cls, *fields)``."""

    def __new__(cls, *fields):
        return _experiment_state(*fields)


class _Refused(pickle.UnpicklingError):
    """A global outside the allowed set."""


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY:
            return super().find_class(module, name)
        if (module, name) == EXPERIMENT_STATE:
            return _ExperimentState
        if (module, name) in _HAIKU_MAPPINGS:
            return dict
        if module.startswith(("optax.", "byol.utils.optimizers")) and name.endswith("State"):
            return _OptimizerState
        raise _Refused(f"refused global {module}.{name}")


def read(path: str) -> dict[str, Any]:
    """The released checkpoint's dict (see the module docstring)."""
    if not paths.exists(path):
        raise TensorFileError(f"{path}: no such file.")
    with paths.open_binary(path) as f:
        try:
            contents = _Unpickler(f).load()
        except _Refused as e:
            raise TensorFileError(
                f"{path}: not a BYOL checkpoint this reader admits ({e}; it admits NumPy "
                "arrays, plain containers and the release's own state types)."
            ) from None
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file fails anywhere
            raise TensorFileError(
                f"{path}: not a readable pickle, as BYOL's .pkl is ({type(e).__name__}: {e})."
            ) from None
    if not isinstance(contents, dict):
        raise TensorFileError(f"{path}: holds a {type(contents).__name__}, not a checkpoint dict.")
    return contents
