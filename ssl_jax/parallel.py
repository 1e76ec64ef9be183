"""Mesh, shardings, multi-process start-up, and host-local -> global arrays.

The whole project uses one 1-D mesh ``('data',)`` over every device of every process.
The train state is replicated (``P()``) and every batch leaf is sharded on its leading
axis (``P('data')``); method code is written in the global view (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed(
    enabled: bool,
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Joins the processes of a multi-host job (Cloud TPU VM pods, Slurm, ...).

    With no arguments ``jax.distributed.initialize()`` auto-detects the cluster on Cloud
    TPU VMs and under Slurm; anywhere else (a GPU box per process, the tests' processes
    over loopback) pass all three. It must run before any other JAX call. On CPU the
    processes' collectives go through gloo.
    """
    explicit = (coordinator_address, num_processes, process_id)
    if not enabled:
        if any(v is not None for v in explicit):
            raise ValueError(
                "--coordinator_address, --num_processes and --process_id need --distributed."
            )
        return
    if any(v is not None for v in explicit) and any(v is None for v in explicit):
        raise ValueError(
            "pass all of --coordinator_address, --num_processes and --process_id, or none "
            f"(got {coordinator_address!r}, {num_processes!r}, {process_id!r})."
        )
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"--process_id={process_id} is not in [0, {num_processes}).")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D data-parallel mesh over all devices of all processes (or the given ones)."""
    if devices is None:
        return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_global_batch(
    global_batch_size: int, devices: int, key: str = "input.global_batch_size"
) -> int:
    """Returns the per-process batch size, or fails naming the config key and numbers
    (``devices``: the mesh's device count)."""
    if global_batch_size % devices:
        raise ValueError(
            f"{key}={global_batch_size} is not divisible by the "
            f"{devices} devices of the mesh; use a multiple of {devices}."
        )
    return global_batch_size // jax.process_count()


def to_global(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's slice of the batch into one global sharded array."""
    sharding = data_sharded(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local_batch.items()
    }


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree (identical on every process) replicated on the mesh.

    ``device_put`` cannot target another process's devices, so each process builds its
    own shards of the global array from its host copy; PRNG keys travel as their data.
    """
    sharding = replicated(mesh)

    def put(x: Any) -> jax.Array:
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(x)
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=impl)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def host_scalar(x: jax.Array) -> float:
    """A replicated scalar as a Python float, on any process (no cross-host gather)."""
    return float(np.asarray(x.addressable_data(0)))


def fetch(tree: Any) -> Any:
    """Brings a replicated or sharded pytree to host numpy on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def agree(flag: bool) -> bool:
    """Process 0's ``flag`` on every process (for a decision only process 0 can make)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))
