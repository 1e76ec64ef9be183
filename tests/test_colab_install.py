"""The notebooks' Colab installer keeps the runtime's JAX, TensorFlow and NumPy: it
installs only what is missing or out of range, and holds those packages at their version."""

import os
import sys

from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "experiments", "notebooks"))
import colab_install  # noqa: E402

REQUIREMENTS = [
    "jax<0.13,>=0.10.2",
    "flax>=0.12",
    "numpy>=1.26",
    "tensorflow-cpu>=2.18; platform_machine != 'aarch64' and sys_platform != 'darwin'",
    "tensorflow>=2.18; platform_machine == 'aarch64' or sys_platform == 'darwin'",
    "safetensors>=0.4",
    "etils[epath]>=1.5",
    'torch>=2.1; extra == "torch"',
]


def test_a_colab_runtime_keeps_its_jax_tensorflow_and_numpy():
    colab = {
        "jax": "0.11.1",
        "jaxlib": "0.11.1",
        "numpy": "2.0.2",
        "tensorflow": "2.19.0",
        "flax": "0.10.4",
        "protobuf": "5.29.4",
    }
    to_install, constraints = colab_install.plan(REQUIREMENTS, colab)
    # flax is below our range; safetensors and etils are missing; torch is an extra;
    # tensorflow-cpu is not added beside the runtime's tensorflow.
    assert to_install == ["flax>=0.12", "safetensors>=0.4", "etils[epath]>=1.5"]
    assert constraints == [
        "jax==0.11.1",
        "jaxlib==0.11.1",
        "numpy==2.0.2",
        "tensorflow==2.19.0",
        "protobuf==5.29.4",
    ]


def test_a_bare_runtime_gets_every_requirement_of_this_platform():
    to_install, constraints = colab_install.plan(REQUIREMENTS, {})
    assert "jax<0.13,>=0.10.2" in to_install and "numpy>=1.26" in to_install
    assert not any(r.startswith("torch") for r in to_install) and constraints == []
    assert sum(r.startswith("tensorflow") for r in to_install) == 1  # this platform's one
