"""Reading and writing PyTorch tensor files without trusting them.

- ``.pth`` / ``.pth.tar`` / ``.pt`` / ``.bin``: ``torch.load(weights_only=True)``, which
  unpickles only tensors and plain containers; ``argparse.Namespace`` is admitted too,
  because DINO's and MAE's training checkpoints store their ``args`` in one. torch is
  imported only here, from the optional extra (``pip install ssl_jax[torch]``).
- ``.safetensors``: the ``safetensors`` package's NumPy API (no torch needed); the header's
  string metadata is returned with the tensors.

Tensors come back as NumPy arrays (bfloat16 / float16 as float32) inside the file's own
nesting (``{'state_dict': {...}, 'epoch': 100}``); everything is read on the CPU.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

import numpy as np

from ssl_jax import paths

TORCH_SUFFIXES = (".pth", ".pth.tar", ".pt", ".bin", ".tar")
SAFETENSORS_SUFFIX = ".safetensors"


class TensorFileError(ValueError):
    """A file that cannot be read as the tensor file its name says."""


def kind_of(path: str) -> str:
    """``'torch'`` or ``'safetensors'`` by the file's name; fails naming the suffixes."""
    if path.endswith(SAFETENSORS_SUFFIX):
        return "safetensors"
    if path.endswith(TORCH_SUFFIXES):
        return "torch"
    raise TensorFileError(
        f"{path}: unknown file type; expected a PyTorch file ({', '.join(TORCH_SUFFIXES)}) "
        f"or {SAFETENSORS_SUFFIX}."
    )


def _torch():
    try:
        import torch
    except ImportError:
        raise TensorFileError(
            "reading or writing a PyTorch file needs torch: pip install 'ssl_jax[torch]' "
            "(or save the weights as .safetensors, which needs no torch)."
        ) from None
    return torch


def _to_numpy(value: Any, torch: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        return value.numpy()
    if isinstance(value, dict):
        return {k: _to_numpy(v, torch) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_numpy(v, torch) for v in value)
    return value


def _reason(error: Exception) -> str:
    """The line of torch's error that says why: for a refused pickle the object it holds
    ("Unsupported global: GLOBAL mymodule.MyNet ..."), else the first line."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line]
    for line in lines:
        if "Unsupported global" in line or "Unsupported operand" in line:
            line = line.split(" was not an allowed global")[0]
            return line.removeprefix("WeightsUnpickler error: ")
    return lines[0] if lines else type(error).__name__


def read(path: str) -> tuple[dict[str, Any], dict[str, str]]:
    """``(contents, metadata)`` of a tensor file; ``metadata`` is a safetensors header's
    string map (``{}`` for PyTorch files)."""
    if not paths.exists(path):
        raise TensorFileError(f"{path}: no such file.")
    kind = kind_of(path)
    if kind == "safetensors":
        return _read_safetensors(path)
    torch = _torch()
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            contents = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip and torch raise many types
        raise TensorFileError(
            f"{path}: not a PyTorch checkpoint that torch.load(weights_only=True) reads "
            f"({_reason(e)})."
        ) from None
    if not isinstance(contents, dict):
        raise TensorFileError(
            f"{path}: holds a {type(contents).__name__}, not a state dict or a checkpoint dict."
        )
    return _to_numpy(contents, torch), {}


def _read_safetensors(path: str) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        tensors, metadata = {}, {}
        with safe_open(path, framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError) as e:
        raise TensorFileError(f"{path}: not a readable .safetensors file ({e}).") from None
    return tensors, metadata


def write(path: str, state_dict: dict[str, np.ndarray], metadata: dict[str, Any]) -> None:
    """A flat state dict as ``.safetensors`` (``metadata`` in the header, JSON-encoded
    values) or as a PyTorch file ``{'state_dict': ..., 'ssl_jax': metadata}``."""
    kind = kind_of(path)
    arrays = {k: np.array(v, order="C") for k, v in state_dict.items()}  # writable copies
    if kind == "safetensors":
        from safetensors.numpy import save

        header = {k: json.dumps(v) for k, v in metadata.items()}  # the header holds text
        paths.write_bytes(path, save(arrays, metadata=header))
        return
    torch = _torch()
    import io

    buffer = io.BytesIO()
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    torch.save({"state_dict": tensors, "ssl_jax": dict(metadata)}, buffer)
    paths.write_bytes(path, buffer.getvalue())
