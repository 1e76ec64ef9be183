"""Shared test helpers: load a config file the way `--config=path:preset` does."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, preset: str = "smoke", **overrides):
    """configs/<name>.py:<preset>, unlocked overrides applied, then locked again."""
    path = os.path.join(ROOT, "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(preset)
    with config.unlocked():
        for dotted, value in overrides.items():
            *parents, leaf = dotted.split("__")
            node = config
            for p in parents:
                node = node[p]
            node[leaf] = value
    return config
