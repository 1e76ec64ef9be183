"""Installs the ssl_jax checkout into a Colab (or any prepared) runtime without replacing
the JAX, TensorFlow and NumPy it ships.

``pip install -r requirements.txt`` would pin this project's CPU builds over Colab's CUDA
or TPU JAX and its TensorFlow; a plain ``pip install -e .`` would add tensorflow-cpu beside
Colab's tensorflow and could move NumPy. Instead: the package without its dependencies,
then only the requirements the runtime lacks or has at a version outside our range, with
every package of ``HELD`` that is installed constrained to its current version (a pip
constraints file), so pip either fits around them or says why it cannot.

    python experiments/notebooks/colab_install.py [extra requirement ...]

The notebooks' first cell runs it on Colab (``"jax[tpu]..."`` as an extra on a TPU host).
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tempfile

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The runtime's builds of these stay as they are.
HELD = ("jax", "jaxlib", "numpy", "tensorflow", "tensorflow-cpu", "keras", "protobuf")


def plan(requirements: list[str], installed: dict[str, str]) -> tuple[list[str], list[str]]:
    """``(to_install, constraints)`` for ``requirements`` (ssl_jax's metadata, markers
    included) given ``installed`` (``{canonical name: version}``): what is missing or out
    of range, and ``name==version`` for every installed package of ``HELD``."""
    to_install = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # another platform's line, or an optional extra
        name = canonicalize_name(req.name)
        if name == "tensorflow-cpu" and "tensorflow" in installed:
            continue  # the runtime's full TensorFlow serves; a second one would clash
        version = installed.get(name)
        if version is not None and req.specifier.contains(version, prereleases=True):
            continue
        req.marker = None
        to_install.append(str(req))
    constraints = [f"{name}=={installed[name]}" for name in HELD if name in installed]
    return to_install, constraints


def _installed() -> dict[str, str]:
    return {
        canonicalize_name(d.metadata["Name"]): d.version
        for d in importlib.metadata.distributions()
        if d.metadata["Name"]
    }


def main(extra: list[str]) -> None:
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", "-e", ROOT], check=True)
    to_install, constraints = plan(importlib.metadata.requires("ssl_jax") or [], _installed())
    to_install += extra
    if not to_install:
        print("ssl_jax installed; the runtime already had every requirement.")
        return
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(constraints) + "\n")
    print("Installing", ", ".join(to_install), "| held:", ", ".join(constraints) or "none")
    subprocess.run([*pip, *to_install, "-c", f.name], check=True)


if __name__ == "__main__":
    main(sys.argv[1:])
