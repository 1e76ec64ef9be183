"""Mesh, shardings, multi-process start-up, and host-local -> global arrays.

The whole project uses one 1-D mesh ``('data',)`` over every device of every process.
The train state is replicated (``P()``) and every batch leaf is sharded on its leading
axis (``P('data')``); method code is written in the global view (DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed(enabled: bool) -> None:
    """Joins the processes of a multi-host job (Cloud TPU VM pods, Slurm, ...).

    ``jax.distributed.initialize()`` with no arguments auto-detects the cluster on
    Cloud TPU VMs and under Slurm; it must run before any other JAX call.
    """
    if enabled:
        jax.distributed.initialize()


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D data-parallel mesh over all devices of all processes (or the given ones)."""
    if devices is None:
        return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_global_batch(global_batch_size: int, mesh: Mesh) -> int:
    """Returns the per-process batch size, or fails naming the offending numbers."""
    devices = mesh.devices.size
    if global_batch_size % devices:
        raise ValueError(
            f"input.global_batch_size={global_batch_size} is not divisible by the "
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
    """Places a host pytree (identical on every process) replicated on the mesh."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)


def host_scalar(x: jax.Array) -> float:
    """A replicated scalar as a Python float, on any process (no cross-host gather)."""
    return float(np.asarray(x.addressable_data(0)))


def fetch(tree: Any) -> Any:
    """Brings a replicated or sharded pytree to host numpy on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
