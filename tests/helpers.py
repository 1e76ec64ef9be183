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


def ssl_jax_process(*args, devices: int = 8, env: dict | None = None, **popen_kwargs):
    """Starts ``python -m ssl_jax.main *args`` with ``devices`` fake CPU devices."""
    import subprocess
    import sys

    # This process's XLA flags (conftest's), with the device count replaced.
    flags = [
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    flags.append(f"--xla_force_host_platform_device_count={devices}")
    full_env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags), **(env or {}))
    return subprocess.Popen(
        [sys.executable, "-m", "ssl_jax.main", *args],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen_kwargs,
    )


def config_flags(**overrides) -> list[str]:
    """``--config.a.b=v`` flags from ``a__b=v`` keyword arguments."""
    return [f"--config.{k.replace('__', '.')}={v}" for k, v in overrides.items()]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
