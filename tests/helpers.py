"""Shared test helpers: load a config file the way `--config=path:preset` does, find each
registered method's config, start `ssl-jax`."""

import functools
import os
import subprocess
import sys

from ssl_jax import catalog, config_base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, preset: str = "smoke", **overrides):
    """configs/<name>.py:<preset>, unlocked overrides applied, then locked again."""
    config = catalog.load_config(name, preset, os.path.join(ROOT, "configs"))
    return config_base.with_values(config, {k.replace("__", "."): v for k, v in overrides.items()})


def finished_smoke_run(tmp_path_factory, name: str = "moco_v2", steps: int = 2):
    """``(config, workdir)`` of a short smoke pretraining without evaluations."""
    from ssl_jax import train

    config = load_config(
        name, schedule__total_steps=steps, evals__at_end=False, evals__knn_every_steps=0
    )
    workdir = str(tmp_path_factory.mktemp(name) / "run")
    train.pretrain(config, workdir)
    return config, workdir


@functools.cache
def configs_by_method() -> dict[str, tuple[str, ...]]:
    """``{method: config file names whose smoke preset trains it}`` from every file in
    configs/, so a method added to ``methods.METHODS`` with a config is covered by the
    parameterised tests without editing a list."""
    found: dict[str, list[str]] = {}
    for file in sorted(os.listdir(os.path.join(ROOT, "configs"))):
        if file.endswith(".py") and not file.startswith("_"):
            found.setdefault(load_config(file[:-3]).method, []).append(file[:-3])
    return {method: tuple(names) for method, names in found.items()}


def smoke_config(method: str, **overrides):
    """The smoke preset of the method's newest config file (moco: moco_v2, not moco_v1)."""
    names = configs_by_method().get(method)
    assert names, f"method {method!r} has no configs/<name>.py whose smoke preset trains it"
    return load_config(max(names), **overrides)


def ssl_jax_process(
    *args, devices: int = 8, merge_stderr: bool = True, fast_compile: bool = True, cwd=ROOT
):
    """Starts ``python -m ssl_jax.main *args`` in ``cwd`` (the checkout) with ``devices``
    fake CPU devices; its stderr goes to its stdout unless ``merge_stderr=False``.
    ``fast_compile=False`` drops conftest's LLVM optimisation level: the code users run."""
    # This process's XLA flags (conftest's), with the device count replaced.
    dropped = ("--xla_force_host_platform_device_count",)
    if not fast_compile:
        dropped += ("--xla_backend_optimization_level",)
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(dropped)]
    flags.append(f"--xla_force_host_platform_device_count={devices}")
    return subprocess.Popen(
        [sys.executable, "-m", "ssl_jax.main", *args],
        cwd=cwd,
        env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=True,
    )


def run_ssl_jax(*args, timeout: float = 120, cwd=ROOT) -> subprocess.CompletedProcess:
    """Runs ``ssl-jax *args`` to the end in ``cwd``; stdout and stderr kept apart."""
    proc = ssl_jax_process(*args, merge_stderr=False, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def config_flags(**overrides) -> list[str]:
    """``--config.a.b=v`` flags from ``a__b=v`` keyword arguments."""
    return [f"--config.{k.replace('__', '.')}={v}" for k, v in overrides.items()]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_listing(directory):
    """``{relative path: (mtime_ns, size)}`` of everything under ``directory``: equal
    listings mean nothing was created, deleted, renamed or rewritten there."""
    found = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = os.path.join(root, name)
            stat = os.stat(path)
            found[os.path.relpath(path, directory)] = (stat.st_mtime_ns, stat.st_size)
    return found


def assert_states_close(config, workdir, reference, steps):
    """The latest checkpoints of two runs are at ``steps`` and agree leaf by leaf within
    float32 summation noise (runs on other device or process counts: ~1e-6 on weights of
    ~0.05; a semantic difference is far larger)."""
    import jax
    import numpy as np

    from ssl_jax import train

    state = jax.device_get(train.restore_state(config, workdir)[1])
    expected = jax.device_get(train.restore_state(config, reference)[1])
    assert int(state.step) == steps
    leaves = jax.tree_util.tree_leaves_with_path(expected)
    for (path, b), a in zip(leaves, jax.tree.leaves(state), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))


def tiny_state(model, config, init_extra=None, size: int = 8):
    """A method's fresh ``TrainState`` for unit tests: ``model`` initialised on a
    ``[1, size, size, 3]`` input (jitted), ``extra`` from ``init_extra`` (``{}`` without),
    no optimizer state."""
    import jax
    import jax.numpy as jnp

    from ssl_jax.state import TrainState

    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, size, size, 3)), train=False))(
        jax.random.key(0)
    )
    params, stats = variables["params"], variables["batch_stats"]
    extra = init_extra(params, stats, config) if init_extra else {}
    return TrainState(jnp.zeros((), jnp.int32), params, stats, None, extra)
