"""experiments/benchmark.py (smoke mode) and the PyTorch reference steps beside it.

No timing assertions: the numbers depend on the machine. The checks are that every field
is there and finite, that XLA counted FLOPs, that donation lowers the compiled step's
memory, and that the reference losses have the value their formulas give when every
logit is equal.
"""

import importlib.util
import json
import math
import os
import sys

import pytest
from helpers import ROOT, load_config

from ssl_jax.data import pipeline

BENCH_DIR = os.path.join(ROOT, "experiments", "benchmarks")


def _load(name: str, path: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


benchmark = _load("benchmark", os.path.join(ROOT, "experiments", "benchmark.py"))

POSITIVE = (
    "compile_s",
    "step_time_s",
    "images_per_s",
    "flops_per_step",
    "achieved_flops_per_s",
    "peak_flops_per_s",
    "utilisation",
    "peak_memory_bytes",
)


@pytest.fixture(scope="module")
def donated():
    return benchmark.run(load_config("moco_v2"), steps=2, warmup=1)


def test_smoke_run_reports_every_field_finite(donated, tmp_path):
    for key in POSITIVE:
        assert math.isfinite(donated[key]) and donated[key] > 0, (key, donated[key])
    assert donated["devices"] == 8 and donated["global_batch_size"] == 16
    assert len(donated["step_times_s"]) == 2
    assert "memory_analysis" in donated["peak_memory_source"]  # CPU has no memory_stats
    path = tmp_path / "row.json"
    path.write_text(json.dumps(donated))  # the --json_out content is plain JSON
    assert json.loads(path.read_text())["label"] == "moco/resnet_tiny"
    assert "images/s" in benchmark.format_result(donated)


def test_real_input_without_donation_reports_idle_fraction_and_more_memory(donated):
    r = benchmark.run(load_config("moco_v2"), steps=2, warmup=1, input_mode="real", donate=False)
    assert 0.0 <= r["device_idle_fraction"] < 1.0
    assert r["real_input_images_per_s"] > 0 and r["input_wait_s_per_step"] >= 0
    assert not r["donate"] and r["input"] == "real"
    # Without donation the new state cannot reuse the old state's buffers.
    assert r["peak_memory_bytes"] > donated["peak_memory_bytes"]


def test_synthetic_batch_has_the_pipeline_structure():
    spec = pipeline.batch_spec(load_config("dino").input)
    assert set(spec) == {"global_views", "local_views", "label", "index"}
    spec = pipeline.batch_spec(load_config("simclr").input)
    assert spec["views"] == ((16, 2, 16, 16, 3), "float32")


@pytest.mark.parametrize("name", ["moco_v2", "simclr"])
def test_torch_reference_loss_with_equal_logits(name):
    pytest.importorskip("torch")
    sys.path.insert(0, BENCH_DIR)
    import torch_reference

    # T -> infinity makes every logit 0: loss = log(number of candidates), exactly.
    section = "moco" if name == "moco_v2" else "simclr"
    config = load_config(name, **{f"{section}__temperature": 1e4})
    step = torch_reference.make_step(config)
    x1, x2 = torch_reference.random_inputs(config)
    loss = float(step(x1, x2))
    # MoCo: 1 positive + K=64 negatives; SimCLR: 2 x log(2B - 1), B=16 (self masked out).
    expected = math.log(65) if name == "moco_v2" else 2 * math.log(31)
    assert torch_reference.expected_initial_loss(config) == pytest.approx(expected)
    assert loss == pytest.approx(expected, abs=2e-3)
    assert math.isfinite(float(step(x1, x2)))  # the optimizer step left finite weights


def test_profile_parser_times_the_traced_ops(tmp_path):
    import glob

    import jax
    import jax.numpy as jnp

    profile_step = _load("profile_step", os.path.join(BENCH_DIR, "profile_step.py"))
    x, w = jnp.ones((8, 16, 16, 32)), jnp.ones((3, 3, 32, 32))
    dims = ("NHWC", "HWIO", "NHWC")
    loss = lambda w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dims)
    grad = jax.jit(jax.grad(lambda w: jnp.tanh(loss(w)).sum()))
    grad(w).block_until_ready()
    with jax.profiler.trace(str(tmp_path)):
        grad(w).block_until_ready()
    (path,) = glob.glob(str(tmp_path / "**" / "*.xplane.pb"), recursive=True)
    times = profile_step._thunk_times(jax.profiler.ProfileData.from_file(path), steps=1)
    assert times and all(t >= 0 for t in times.values()) and sum(times.values()) > 0
    assert not any(name[-1].isdigit() for name in times)  # ".N" suffixes grouped
    assert "ms of op time per step" in profile_step.format_times("JAX", times, top=3)
