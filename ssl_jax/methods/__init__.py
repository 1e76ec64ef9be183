"""Methods, one module each, loaded by name (no base classes).

Each module exports get_config, make_model, init_extra, loss_fn and update_extra
(DESIGN.md, "Train state and methods"), and may export eval_variables(state) to choose
the variables the evaluations read (DINO: its teacher).
"""

from __future__ import annotations

import importlib
from types import ModuleType

METHODS = ("moco", "simclr", "simsiam", "byol", "moco_v3", "dino", "mae", "supervised")


def get_method(name: str) -> ModuleType:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    return importlib.import_module(f"ssl_jax.methods.{name}")
