"""Training-step benchmark: throughput, step and compile time, memory, FLOPs, utilisation.

    python experiments/benchmark.py --config=configs/moco_v2.py:cifar10 \
        --config.input.global_batch_size=64 [--steps=10] [--input=real] [--donate=false] \
        [--torch] [--json_out=row.json] [--smoke]

For one config it compiles the update of ``ssl_jax.train.build`` once (lower + compile
timed), runs ``--warmup`` steps, then times ``--steps`` steps one by one, each ended by
``jax.block_until_ready``, and reports the median. Images/s counts samples of the global
batch (each carries all its views), as the training log does.

* ``--input=synthetic`` (default): one random batch with the pipeline's shapes and dtypes,
  placed with ``parallel.to_global`` once, so the step is timed alone. If the config's data
  set cannot be loaded here (e.g. tfds ``cifar10`` without ``data_dir``), a placeholder npz
  of B tiny images stands in for it: it only sets the lr schedule's steps per epoch.
* ``--input=real``: batches from ``pipeline.pretrain_iterator``; also reports the
  device-idle fraction, the time spent waiting for the next host batch (``next`` +
  ``to_global``, the step before it finished) over the loop's time: near 0 the step is the
  bottleneck, near 1 the input pipeline is.
* ``--donate=false``: the update without buffer donation (its memory effect).
* ``--torch``: the PyTorch reference step of ``experiments/benchmarks/torch_reference.py``
  at the same sizes, timed in the same process, and the ratio JAX / PyTorch images/s.

Peak FLOP/s and memory sources are in ``experiments/benchmarks/device_peak.py``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmarks"))
from ssl_jax import main as cli  # noqa: E402  (its --config flag and its flag parser)

_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after warm-up); the median counts.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_INPUT = flags.DEFINE_enum("input", "synthetic", ["synthetic", "real"], "Batch source.")
_DONATE = flags.DEFINE_bool("donate", True, "Donate the train state's buffers to the update.")
_TORCH = flags.DEFINE_bool("torch", False, "Also time the PyTorch reference step.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Write the results as JSON here.")
_SMOKE = flags.DEFINE_bool("smoke", False, "CI mode: 1 warm-up step and 2 timed steps.")
_LABEL = flags.DEFINE_string("label", None, "Row name in tables (default: method/backbone).")


def _with_loadable_source(config: Any) -> tuple[Any, str | None]:
    """The config, or a copy whose ``input.dataset`` is a placeholder npz when the real one
    cannot be loaded here (synthetic input only needs the steps per epoch)."""
    import numpy as np

    from ssl_jax.data import pipeline

    try:
        pipeline.steps_per_epoch(config.input)
        return config, None
    except Exception as e:  # noqa: BLE001  any loader error: tfds, missing file, too small
        reason = f"{config.input.dataset!r} not loadable here ({type(e).__name__})"
    path = os.path.join(tempfile.mkdtemp(prefix="ssl_jax_bench_"), "placeholder.npz")
    b = config.input.global_batch_size
    np.savez(path, images=np.zeros((b, 8, 8, 3), np.uint8), labels=np.zeros(b, np.int32))
    config = config.copy_and_resolve_references()
    with config.unlocked():
        # Its one split serves the evaluation splits too, which the config check loads.
        config.input.update(
            dataset=f"npz:{path}",
            train_split="train",
            eval_train_split="train",
            eval_test_split="train",
        )
    return config, f"schedule from a placeholder npz: {reason}"


def _median_step(fn, steps: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def run(
    config: Any,
    *,
    steps: int = 10,
    warmup: int = 2,
    input_mode: str = "synthetic",
    donate: bool = True,
    torch: bool = False,
    label: str | None = None,
) -> dict[str, Any]:
    """Benchmarks the update of ``config``; returns the results (see the module doc)."""
    import device_peak
    import jax

    from ssl_jax import parallel, train
    from ssl_jax.data import pipeline

    if steps < 1 or warmup < 0:
        raise ValueError(f"--steps={steps} must be >= 1 and --warmup={warmup} >= 0")
    if input_mode not in ("synthetic", "real"):
        raise ValueError(f"--input={input_mode!r}: expected 'synthetic' or 'real'")
    note = None
    if input_mode == "synthetic":
        config, note = _with_loadable_source(config)
    b = config.input.global_batch_size
    mesh = parallel.make_mesh()
    setup = train.build(config, mesh, donate_state=donate)
    init_key, base_key = train.keys(config)
    base_key = parallel.replicate(base_key, mesh)
    with jax.set_mesh(mesh):
        state = setup.init(init_key)
        if input_mode == "real":
            batches = pipeline.pretrain_iterator(config.input, seed=config.seed)
            first = next(batches)
        else:
            first = pipeline.synthetic_batch(config.input, config.seed)
        batch = parallel.to_global(first, mesh)
        start = time.perf_counter()
        lowered = setup.update.lower(state, batch, base_key)
        compiled = lowered.compile()
        compile_s = time.perf_counter() - start

        def step(next_batch=None):
            nonlocal state
            state, metrics = compiled(state, next_batch or batch, base_key)
            jax.block_until_ready((state, metrics))

        for _ in range(warmup):
            step()
        step_s, times = _median_step(step, steps)
        result = dict(
            label=label or f"{config.method}/{config.model.backbone}",
            method=config.method,
            backbone=config.model.backbone,
            image_size=config.input.image_size,
            global_batch_size=b,
            dtype=config.model.dtype,
            donate=donate,
            input=input_mode,
            augment_on_device=bool(config.input.get("augment_on_device", False)),
            platform=jax.devices()[0].platform,
            device_kind=jax.devices()[0].device_kind,
            devices=jax.device_count(),
            compile_s=compile_s,
            step_time_s=step_s,
            step_times_s=times,
            images_per_s=b / step_s,
        )
        if input_mode == "real":
            result.update(_real_input_loop(step, batches, mesh, b, steps))
    flops = device_peak.step_flops(compiled)
    peak, peak_source = device_peak.peak_flops(config.model.dtype)
    memory, memory_source = device_peak.peak_memory(compiled)
    result.update(
        flops_per_step=flops,
        lowered_flops_per_step=device_peak.step_flops(lowered),
        achieved_flops_per_s=flops / step_s,
        peak_flops_per_s=peak,
        peak_flops_source=peak_source,
        utilisation=flops / step_s / peak,
        peak_memory_bytes=memory,
        peak_memory_source=memory_source,
        compiled_memory_bytes=device_peak.compiled_memory(compiled),
        note=note,
    )
    if torch:
        result.update(_torch_row(config, steps, warmup, result["images_per_s"]))
    return result


def _real_input_loop(step, batches, mesh, b: int, steps: int) -> dict[str, float]:
    """Steps on real batches; the wait for each host batch is device-idle time because the
    previous step has already finished (``step`` blocks)."""
    from ssl_jax import parallel

    wait = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = parallel.to_global(next(batches), mesh)
        wait += time.perf_counter() - t0
        step(batch)
    total = time.perf_counter() - start
    return dict(
        real_input_images_per_s=b * steps / total,
        device_idle_fraction=wait / total,
        input_wait_s_per_step=wait / steps,
    )


def _torch_row(config: Any, steps: int, warmup: int, jax_ips: float) -> dict[str, Any]:
    try:
        import torch_reference
    except ImportError as e:
        raise ImportError(
            f"--torch needs PyTorch ({e}); install: pip install torch "
            "--index-url https://download.pytorch.org/whl/cpu"
        ) from e
    row = torch_reference.time_step(config, steps=steps, warmup=warmup, seed=config.seed)
    return dict(row, jax_over_torch=jax_ips / row["torch_images_per_s"])


def format_result(r: dict[str, Any]) -> str:
    """Two readable columns: what, value."""
    rows = [
        ("config", f"{r['label']}  B={r['global_batch_size']} {r['image_size']}px {r['dtype']}"),
        ("device", f"{r['platform']} {r['device_kind']} x{r['devices']}"),
        ("input / donate", f"{r['input']} / {r['donate']}"),
        ("compile (lower+compile)", f"{r['compile_s']:.1f} s"),
        ("step time (median)", f"{r['step_time_s'] * 1e3:.1f} ms"),
        ("images/s", f"{r['images_per_s']:.1f}"),
        ("FLOPs/step (XLA)", f"{r['flops_per_step'] / 1e9:.2f} GFLOP"),
        ("achieved", f"{r['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s"),
        ("peak", f"{r['peak_flops_per_s'] / 1e9:.1f} GFLOP/s ({r['peak_flops_source']})"),
        ("utilisation", f"{100 * r['utilisation']:.1f} %"),
        ("peak memory", f"{r['peak_memory_bytes'] / 2**20:.1f} MiB ({r['peak_memory_source']})"),
    ]
    if "device_idle_fraction" in r:
        rows.append(("real input images/s", f"{r['real_input_images_per_s']:.1f}"))
        rows.append(("device idle (input wait)", f"{100 * r['device_idle_fraction']:.1f} %"))
    if "torch_images_per_s" in r:
        rows.append(
            ("PyTorch images/s", f"{r['torch_images_per_s']:.1f} ({r['torch_threads']} threads)")
        )
        rows.append(("JAX / PyTorch", f"{r['jax_over_torch']:.2f}x"))
    if r.get("note"):
        rows.append(("note", r["note"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    config = cli._CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/moco_v2.py:cifar10")
    smoke = _SMOKE.value
    result = run(
        config,
        steps=2 if smoke else _STEPS.value,
        warmup=1 if smoke else _WARMUP.value,
        input_mode=_INPUT.value,
        donate=_DONATE.value,
        torch=_TORCH.value,
        label=_LABEL.value,
    )
    print(format_result(result))
    if _JSON_OUT.value:
        with open(_JSON_OUT.value, "w") as f:
            json.dump(result, f, indent=2)
        print(f"Wrote {_JSON_OUT.value}")


if __name__ == "__main__":
    app.run(_main, flags_parser=cli.parse_flags)
