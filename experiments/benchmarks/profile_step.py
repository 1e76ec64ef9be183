"""Where one training step spends its time: XLA ops of the JAX step, aten ops of PyTorch's.

    python experiments/benchmarks/profile_step.py --config=configs/moco_v2.py:cifar10 \
        --config.input.global_batch_size=64 --config.moco.bn_groups=1 \
        --config.moco.shuffle_keys=False [--torch] [--profile_steps=3] [--top=12]

JAX: the compiled update (synthetic batch, as benchmark.py) runs ``--profile_steps`` times
under ``jax.profiler``; the trace's per-op events of the CPU client threads (one per HLO
thunk: ``ynn_fusion`` = a convolution or dot with its fused epilogue run by XNNPACK's
successor YNNPACK, ``*fusion`` = XLA's own element-wise / reduction loops, ``copy`` /
``transpose`` = layout changes) are summed by name without the ``.N`` suffix. PyTorch:
``torch.profiler`` over the same number of reference steps, ``self_cpu_time_total`` per
aten op. Times are thunk / op times per step; ops that overlap count twice, so the shares
are of the summed time, not of the wall time.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import sys
import tempfile

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import benchmark  # noqa: E402  (its --config flag and helpers)

_PROFILE_STEPS = flags.DEFINE_integer("profile_steps", 3, "Steps traced (after 1 warm-up).")
_TOP = flags.DEFINE_integer("top", 12, "Op groups listed.")
_TORCH = benchmark._TORCH  # --torch: profile the PyTorch reference too


def jax_op_times(config, steps: int) -> dict[str, float]:
    """{op group: seconds per step} of the compiled update's CPU thunks."""
    import jax

    from ssl_jax import parallel, train
    from ssl_jax.data import pipeline

    config, _ = benchmark._with_loadable_source(config)
    mesh = parallel.make_mesh()
    setup = train.build(config, mesh)
    init_key, base_key = train.keys(config)
    base_key = parallel.replicate(base_key, mesh)
    trace_dir = tempfile.mkdtemp(prefix="ssl_jax_profile_")
    with jax.set_mesh(mesh):
        state = setup.init(init_key)
        batch = parallel.to_global(pipeline.synthetic_batch(config.input), mesh)
        compiled = setup.update.lower(state, batch, base_key).compile()
        state, _ = compiled(state, batch, base_key)
        jax.block_until_ready(state)
        jax.profiler.start_trace(trace_dir)
        for _ in range(steps):
            state, metrics = compiled(state, batch, base_key)
            jax.block_until_ready((state, metrics))
        jax.profiler.stop_trace()
    (path,) = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    return _thunk_times(jax.profiler.ProfileData.from_file(path), steps)


def _thunk_times(profile, steps: int) -> dict[str, float]:
    """Each HLO thunk event (stat ``hlo_op``) lasts until its ``end: <op>`` event, found by
    flow id (the thunk's ``_p`` is the end's ``_c``), on whatever thread that ran: a thunk
    that hands its work to the Eigen pool returns at once and finishes there."""
    starts, ends = {}, {}
    for plane in profile.planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                if "hlo_op" in stats:
                    starts[stats.get("_p", id(event))] = (stats["hlo_op"], event)
                elif event.name.startswith("end: ") and "_c" in stats:
                    ends[stats["_c"]] = event.end_ns
    totals: collections.Counter = collections.Counter()
    for flow, (op, event) in starts.items():
        end = max(event.end_ns, ends.get(flow, event.end_ns))
        totals[re.sub(r"\.\d+$", "", op)] += (end - event.start_ns) * 1e-9 / steps
    return dict(totals)


def torch_op_times(config, steps: int) -> dict[str, float]:
    """{aten op: self CPU seconds per step} of the PyTorch reference step."""
    import torch
    import torch_reference

    step = torch_reference.make_step(config)
    inputs = torch_reference.random_inputs(config)
    float(step(*inputs))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            float(step(*inputs))
    return {e.key: e.self_cpu_time_total * 1e-6 / steps for e in prof.key_averages()}


def format_times(title: str, times: dict[str, float], top: int) -> str:
    total = sum(times.values())
    lines = [f"{title}: {total * 1e3:.0f} ms of op time per step"]
    for name, seconds in sorted(times.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {seconds * 1e3:9.1f} ms  {100 * seconds / total:5.1f} %  {name}")
    return "\n".join(lines)


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    config = benchmark.cli._CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/moco_v2.py:cifar10")
    steps = _PROFILE_STEPS.value
    print(format_times("JAX (XLA CPU thunks)", jax_op_times(config, steps), _TOP.value))
    if _TORCH.value:
        print(format_times("PyTorch (aten, self time)", torch_op_times(config, steps), _TOP.value))


if __name__ == "__main__":
    app.run(_main, flags_parser=benchmark.cli.parse_flags)
