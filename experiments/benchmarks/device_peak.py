"""What a device can do at most, and how much memory a compiled step used.

* Peak FLOP/s: on CPU a float32 matmul timed in this process over all of its cores (the
  attainable peak of this machine as XLA uses it, not a spec sheet); on GPU / TPU the
  vendor's spec-sheet dense peak per chip, by ``device_kind``.
* Peak memory: the runtime's ``peak_bytes_in_use`` where the backend reports memory stats
  (GPU, TPU), else the compiled program's ``memory_analysis()``: arguments + outputs +
  temporaries - aliased (donated) bytes, which is what the program needs at once.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp

# device_kind substring (lower case) -> (bf16 dense, fp32 dense) TFLOP/s per chip, from the
# vendors' spec sheets (sparsity not counted). H200 has H100 SXM's compute.
SPEC_SHEET_TFLOPS: dict[str, tuple[float, float]] = {
    "h100": (989.0, 67.0),
    "h200": (989.0, 67.0),
    "a100": (312.0, 19.5),
    "tpu v4": (275.0, 275.0),  # TPU MXUs take fp32 as bf16 passes; no separate fp32 figure
    "tpu v5 lite": (197.0, 197.0),  # v5e's device_kind
    "tpu v5e": (197.0, 197.0),
    "tpu v5p": (459.0, 459.0),
    "tpu v5": (459.0, 459.0),
    "tpu v6 lite": (918.0, 918.0),  # v6e (Trillium)
    "tpu v6e": (918.0, 918.0),
}


def measured_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n float32 matmul on the default device (2 n^3 per product)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()  # compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def peak_flops(dtype: str) -> tuple[float, str]:
    """(peak FLOP/s of all local devices together, where the number comes from).

    On CPU the fake devices of ``--xla_force_host_platform_device_count`` share the same
    cores, so the host's measured matmul rate is the peak whatever the device count.
    """
    device = jax.local_devices()[0]
    if device.platform == "cpu":
        return measured_matmul_flops(), "measured float32 matmul (this process, all cores)"
    spec = spec_sheet_flops(device.device_kind, dtype)
    if spec is None:
        return float("nan"), f"unknown device_kind {device.device_kind!r}: no spec-sheet peak"
    return spec[0] * jax.local_device_count(), spec[1]


def spec_sheet_flops(device_kind: str, dtype: str) -> tuple[float, str] | None:
    """(dense FLOP/s of one chip, label) for a ``device_kind`` (or a CUDA device name such
    as 'NVIDIA H200') in ``SPEC_SHEET_TFLOPS``; None if it is not there."""
    for name, (bf16, fp32) in SPEC_SHEET_TFLOPS.items():
        if name in device_kind.lower():
            per_chip = bf16 if dtype == "bfloat16" else fp32
            return (
                per_chip * 1e12,
                f"spec sheet {device_kind} {dtype} dense {per_chip:g} TFLOP/s/chip",
            )
    return None


def peak_memory(compiled: Any) -> tuple[int, str]:
    """(bytes, source) of the most memory one device held while running the step."""
    stats = jax.local_devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device memory_stats peak_bytes_in_use"
    source = "compiled memory_analysis: arguments + outputs + temp - aliased"
    return compiled_memory(compiled), source


def compiled_memory(compiled: Any) -> int:
    """Bytes the compiled program needs at once on one device, from XLA's buffer
    assignment: arguments + outputs + temporaries - aliased (donated) bytes. Unlike the
    runtime peak it is the program's alone (not the process's highest so far)."""
    m = compiled.memory_analysis()
    total = (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )
    return int(total)


def step_flops(compiled: Any) -> float:
    """XLA's FLOP count of one step, over all devices of the mesh.

    ``cost_analysis`` describes the per-device SPMD program; in data parallelism every
    device runs it once per step (the replicated optimizer update included). ``compiled``
    may also be the ``Lowered`` step: then the count is of the HLO before XLA's backend
    passes (fusion, layouts, a GPU's cuDNN / cuBLAS calls), counted the same way on every
    platform; rematerialised recomputation is in it.
    """
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per program
        cost = cost[0]
    return float(cost.get("flops", float("nan"))) * jax.device_count()
