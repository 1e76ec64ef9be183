"""What `ssl-jax list` prints: methods, backbones, data sets and every config preset."""

from __future__ import annotations

import os

from ssl_jax import methods, models
from ssl_jax.config_files import CONFIGS_DIR, config_module, load_config  # noqa: F401
from ssl_jax.data import LOCAL_KINDS
from ssl_jax.models import vit


def config_presets(configs_dir: str = CONFIGS_DIR) -> dict[str, list[str]]:
    """``{config name: [preset, ...]}`` from each shipped file's ``PRESETS``."""
    if not os.path.isdir(configs_dir):
        raise FileNotFoundError(
            f"no configs folder at {configs_dir}: the install lacks ssl_jax.configs "
            "(reinstall ssl_jax, or pass --config=<path to a config file>:<preset>)."
        )
    presets = {}
    for name in sorted(os.listdir(configs_dir)):
        if not name.endswith(".py") or name.startswith("_"):
            continue
        module = config_module(name[:-3], configs_dir)
        presets[name[:-3]] = list(getattr(module, "PRESETS", {}))
    return presets


def catalog_text(configs_dir: str = CONFIGS_DIR) -> str:
    lines = [
        "methods (config.method):",
        "  " + ", ".join(methods.METHODS),
        "backbones (config.model.backbone):",
        "  ResNets: " + ", ".join(models.RESNETS),
        "  ViTs: " + ", ".join(vit.VITS),
        "data sets (config.input.dataset):",
        f"  {LOCAL_KINDS}, or a tfds name (e.g. cifar10, imagenet2012) prepared under "
        "config.input.data_dir",
        "config presets (--config=<name>:<preset>, e.g. moco_v2:digits, from any directory;",
        f"  the files are in {configs_dir}; --config=<your file>.py:<preset> works too):",
    ]
    for name, presets in config_presets(configs_dir).items():
        lines.append(f"  {name}: {', '.join(presets)}")
    return "\n".join(lines)
