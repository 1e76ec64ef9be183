"""experiments/benchmarks/device_check.py: its --smoke run end to end on one model (the JAX
case and the PyTorch case, each in its own process), the GPU cases' settings, the
deadline and the per-case time limit, and the PyTorch reference steps it times.

No timing assertions: the figures depend on the machine; they must be there, finite and
positive.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
import types

import pytest
from helpers import ROOT, load_config

from ssl_jax.data import pipeline

BENCH_DIR = os.path.join(ROOT, "experiments", "benchmarks")
SCRIPT = os.path.join(BENCH_DIR, "device_check.py")
HAS_TORCH = importlib.util.find_spec("torch") is not None


def _load():
    if "device_check" in sys.modules:
        return sys.modules["device_check"]
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["device_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


device_check = _load()


def _run(out, *args, timeout=300) -> tuple[dict, str]:
    """device_check.py ``args`` in a process of its own (it installs a SIGTERM handler);
    the environment is conftest's (CPU, XLA flags: the script makes it one device)."""
    proc = subprocess.run(
        [sys.executable, SCRIPT, f"--out={out}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((out / "device_check.json").read_text()), proc.stdout


def _positive(record: dict, keys) -> None:
    for key in keys:
        value = record[key]
        assert value is not None and math.isfinite(value) and value > 0, (record["case"], key)


def test_smoke_run_writes_one_json_with_positive_figures(tmp_path):
    cases = ["mae_vit_b16/jax", "mae_vit_b16/torch"]
    report, stdout = _run(tmp_path, "--smoke", f"--cases={','.join(cases)}")
    assert [p.name for p in tmp_path.glob("**/*.json")] == ["device_check.json"]
    assert report["smoke"] and report["complete"] and report["wall_s"] < report["budget_s"]
    assert report["peak_flops_per_s"] > 0 and "measured" in report["peak_flops_source"]
    assert report["environment"]["modules"]["jax"]
    by_case = {r["case"]: r for r in report["cases"]}
    assert list(by_case) == cases
    jax_case = by_case["mae_vit_b16/jax"]
    assert jax_case["status"] == "ok", jax_case
    keys = ("images_per_s", "step_time_s", "compile_s", "model_flops_per_step", "mfu", "hfu")
    _positive(jax_case, (*keys, "peak_memory_bytes", "compiled_memory_bytes"))
    assert jax_case["per_device_batch"] == 16 and jax_case["details"]["devices"] == 1
    assert jax_case["details"]["dtype"] == "float32"  # the smoke form; the GPU run's: bf16
    assert len(jax_case["details"]["step_times_s"]) == 2
    torch_case = by_case["mae_vit_b16/torch"]
    (row,) = report["summary"]
    if not HAS_TORCH:
        assert torch_case["status"] == "skipped"
        assert row["torch_images_per_s"] is None
        return
    assert torch_case["status"] == "ok", torch_case
    _positive(torch_case, ("images_per_s", "step_time_s", "mfu"))
    _positive(torch_case["details"], ("torch_counted_flops_per_step",))
    # One model-FLOPs figure for both sides: the same work.
    assert torch_case["model_flops_per_step"] == jax_case["model_flops_per_step"]
    _positive(row, ("jax_images_per_s", "jax_mfu", "torch_images_per_s", "jax_over_torch"))
    assert "[2/2] mae_vit_b16/torch: ok" in stdout
    assert "| mae_vit_b16 | 16 |" in stdout  # the summary table


def test_gpu_cases_are_the_papers_per_device_batches_in_bfloat16():
    cases = device_check.plan()
    assert [c.name for c in cases] == [
        "moco_v2_r50/jax",
        "moco_v2_r50/torch",
        "simclr_r50/jax",
        "simclr_r50/torch",
        "mae_vit_b16/jax",
        "mae_vit_b16/torch",
        "dino_vit_s16/jax",
        "dino_vit_s16/torch",
        "mae_vit_b16/jax_remat",
        "dino_vit_s16/jax_remat",
    ]
    batches, configs = {}, {}
    for case in cases:
        config = device_check.case_config(case, smoke=False)
        assert config.model.dtype == "bfloat16" and not config.evals.online_linear
        assert config.model.vit.remat == case.remat
        batches[case.model.name] = config.input.global_batch_size
        configs[case.name] = config
    assert batches == dict(moco_v2_r50=32, simclr_r50=32, mae_vit_b16=64, dino_vit_s16=64)
    for name in ("moco_v2_r50", "simclr_r50"):
        model = configs[f"{name}/jax"].model
        assert (model.backbone, model.stem) == ("resnet50", "imagenet")
    moco = configs["moco_v2_r50/jax"].moco
    assert moco.bn_groups == 1 and not moco.shuffle_keys and moco.queue_size == 65536
    mae = configs["mae_vit_b16/jax"]
    assert (mae.model.backbone, mae.model.vit.patch_size, mae.input.image_size) == (
        "vit_base",
        16,
        224,
    )
    dino = configs["dino_vit_s16/jax_remat"]
    assert (dino.model.backbone, dino.model.vit.patch_size) == ("vit_small", 16)
    spec = pipeline.batch_spec(dino.input)  # 2 x 224 + 8 x 96 crops
    assert spec["global_views"][0] == (64, 2, 224, 224, 3)
    assert spec["local_views"][0] == (64, 8, 96, 96, 3)


def test_a_case_that_cannot_start_in_the_budget_is_skipped(tmp_path):
    report, stdout = _run(tmp_path, "--budget_s=5", "--cases=*/jax")
    assert [r["status"] for r in report["cases"]] == ["skipped"] * 4
    assert all("budget" in r["error"] for r in report["cases"]) and not report["complete"]
    assert "[4/4] dino_vit_s16/jax: skipped" in stdout
    assert not list((tmp_path / "device_check_logs").iterdir())  # nothing was started


def test_a_case_past_its_limit_is_stopped(tmp_path):
    case = device_check.plan("mae_vit_b16/jax")[0]
    args = types.SimpleNamespace(
        smoke=True,
        torch_compile=False,
        steps=None,
        warmup=None,
        per_device_batch=None,
        torch_device=None,
    )
    log = str(tmp_path / "case.log")
    record = device_check.run_case(case, args, limit_s=0.5, log_path=log)
    assert record["status"] == "timed_out" and record["wall_s"] < 10


def test_torch_reference_crops_are_the_pipelines():
    pytest.importorskip("torch")
    sys.path.insert(0, BENCH_DIR)
    import torch_reference

    for smoke in (True, False):
        for case in device_check.plan("*/torch"):
            config = device_check.case_config(case, smoke)
            spec = pipeline.batch_spec(config.input)
            groups = [spec[k][0] for k in ("views", "global_views", "local_views") if k in spec]
            assert torch_reference.crop_shapes(config) == [(g[1], g[2]) for g in groups]


def test_torch_reference_dino_multicrop_step_trains_under_autocast():
    pytest.importorskip("torch")
    sys.path.insert(0, BENCH_DIR)
    import torch_reference

    config = load_config("dino", "smoke_vit", model__dtype="bfloat16")  # 2 x 16 + 2 x 8 px
    step = torch_reference.make_step(config)
    inputs = torch_reference.random_inputs(config)
    assert [x.shape[-1] for x in inputs] == [16, 16, 8, 8]
    losses = [float(step(*inputs)) for _ in range(2)]
    assert all(math.isfinite(loss) for loss in losses), losses


def test_torch_reference_imagenet_resnet50_encoder():
    """The GPU run's ResNet-50 (torchvision's, or tests/torch_nets.py's without it)."""
    torch = pytest.importorskip("torch")
    sys.path.insert(0, BENCH_DIR)
    import torch_reference

    config = load_config("simclr", "imagenet")
    net, source = torch_reference.encoder(config)
    assert sum(p.numel() for p in net[0].parameters()) == 23_508_032  # torchvision's, no fc
    assert source.startswith(("torchvision", "tests/torch_nets.py"))
    with torch.no_grad():
        out = net.eval()(torch.zeros(2, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    assert out.shape == (2, 128)
