"""The shipped config files: where they are, ``--config`` by name, loading one.

Light on purpose (no jax, no TensorFlow): the command line resolves ``--config`` with it
before absl parses the flags.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any


def _configs_dir() -> str:
    """Where the shipped config files are: the ``ssl_jax.configs`` package of an install
    (a wheel holds them there; ``pip install -e .`` maps it to the checkout's configs/),
    else the configs/ beside the package (a checkout on ``PYTHONPATH``)."""
    spec = importlib.util.find_spec("ssl_jax.configs")
    if spec is not None and spec.origin:
        return os.path.dirname(spec.origin)
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


CONFIGS_DIR = _configs_dir()


def shipped_names(configs_dir: str = CONFIGS_DIR) -> list[str]:
    """The names ``--config=<name>:<preset>`` accepts: the shipped config files."""
    if not os.path.isdir(configs_dir):
        return []
    files = sorted(os.listdir(configs_dir))
    return [f[:-3] for f in files if f.endswith(".py") and not f.startswith("_")]


def resolve_config_flag(value: str) -> str:
    """``--config``'s value with a shipped config's name (``moco_v2:digits``, ``moco_v2``)
    replaced by its file's path, so it works from any directory; a path to a file, the
    user's own included, is returned as it is."""
    file, sep, preset = value.partition(":")
    if os.path.exists(file) or "/" in file or file.endswith(".py"):
        return value
    path = os.path.join(CONFIGS_DIR, f"{file}.py")
    if not file.isidentifier() or file.startswith("_") or not os.path.isfile(path):
        return value  # ml_collections then names the file it could not load
    return f"{path}{sep}{preset}"


def config_module(name: str, configs_dir: str = CONFIGS_DIR) -> Any:
    """The module of ``configs/<name>.py`` (its ``get_config`` and ``PRESETS``)."""
    path = os.path.join(configs_dir, f"{name}.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config file {path}")
    spec = importlib.util.spec_from_file_location(f"_ssl_jax_configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(name: str, preset: str, configs_dir: str = CONFIGS_DIR) -> Any:
    """``configs/<name>.py:<preset>``, exactly what ``--config=configs/<name>.py:<preset>``
    reads (notebooks and tests start from it)."""
    return config_module(name, configs_dir).get_config(preset)
