"""Installs ssl_jax and the `ssl-jax` console script.

Ranges admit jax 0.10 (Python 3.11) through 0.12 (Python 3.12+); requirements.txt pins the
exact versions that CI tests.
"""

from setuptools import find_packages, setup

setup(
    name="ssl_jax",
    version="0.1.0",
    description="Self-supervised visual representation learning in JAX/Flax (MoCo, SimCLR, ...)",
    # configs/ ships inside the package as ssl_jax.configs (--config=moco_v2:digits).
    packages=find_packages(include=["ssl_jax", "ssl_jax.*"]) + ["ssl_jax.configs"],
    package_dir={"ssl_jax.configs": "configs"},
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2,<0.13",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "chex>=0.1.90",
        "einops>=0.8",
        "ml-collections>=1.0",
        "absl-py>=2.1",
        "numpy>=1.26",
        "tensorflow-cpu>=2.18; platform_machine != 'aarch64' and sys_platform != 'darwin'",
        "tensorflow>=2.18; platform_machine == 'aarch64' or sys_platform == 'darwin'",
        "tensorflow-datasets>=4.9.7",
        "importlib_resources>=6",
        "scikit-learn>=1.4",
        "matplotlib>=3.8",
        "tensorboard>=2.18",
        "safetensors>=0.4",
        "tqdm>=4.60",  # evaluation progress bars on a terminal
    ],
    # torch only reads and writes .pth files (ssl-jax import / export); nothing else uses it.
    # wandb: the optional W&B log (--config.log.wandb=<project>).
    extras_require={
        "test": ["pytest>=8", "ruff>=0.6"],
        "torch": ["torch>=2.1"],
        "wandb": ["wandb>=0.17"],
    },
    entry_points={"console_scripts": ["ssl-jax=ssl_jax.main:run"]},
)
