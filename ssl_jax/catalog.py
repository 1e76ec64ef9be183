"""What `ssl-jax list` prints: methods, backbones, data sets and every config preset."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from ssl_jax import methods, models
from ssl_jax.data import sources
from ssl_jax.models import vit

# The config files next to the package in a checkout (pip install -e .).
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


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


def config_presets(configs_dir: str = CONFIGS_DIR) -> dict[str, list[str]]:
    """``{config file: [preset, ...]}`` from each file's ``PRESETS``."""
    if not os.path.isdir(configs_dir):
        raise FileNotFoundError(
            f"no configs folder at {configs_dir}; `ssl-jax list` reads the configs/ of a "
            "checkout installed with `pip install -e .`."
        )
    presets = {}
    for name in sorted(os.listdir(configs_dir)):
        if not name.endswith(".py") or name.startswith("_"):
            continue
        module = config_module(name[:-3], configs_dir)
        presets[f"configs/{name}"] = list(getattr(module, "PRESETS", {}))
    return presets


def catalog_text(configs_dir: str = CONFIGS_DIR) -> str:
    lines = [
        "methods (config.method):",
        "  " + ", ".join(methods.METHODS),
        "backbones (config.model.backbone):",
        "  ResNets: " + ", ".join(models.RESNETS),
        "  ViTs: " + ", ".join(vit.VITS),
        "data sets (config.input.dataset):",
        f"  {sources.LOCAL_KINDS}, or a tfds name (e.g. cifar10, imagenet2012) prepared under "
        "config.input.data_dir",
        "config presets (--config=<file>:<preset>):",
    ]
    for path, names in config_presets(configs_dir).items():
        lines.append(f"  {path}: {', '.join(names)}")
    return "\n".join(lines)
