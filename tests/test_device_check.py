"""experiments/benchmarks/device_check.py: its --smoke run end to end on MAE's JAX case
(with its PyTorch case beside it; the end-to-end tier, -m slow), the GPU cases' settings,
the deadline and the per-case time limit, and the PyTorch reference steps it times.

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
    return json.loads((out / "device_check.json").read_text()), proc.stdout, out


def _positive(record: dict, keys) -> None:
    for key in keys:
        value = record[key]
        assert value is not None and math.isfinite(value) and value > 0, (record["case"], key)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """``--smoke`` end to end on MAE's JAX case (a process of its own, as on the GPU): the
    report and the printed progress. Its PyTorch case is checked in this process below
    (the same function its process would run), which saves a second start-up."""
    return _run(tmp_path_factory.mktemp("smoke"), "--smoke", "--cases=mae_vit_b16/jax")


def _smoke_args(**kw):
    values = dict(smoke=True, torch_compile=False, steps=None, warmup=None)
    return types.SimpleNamespace(**dict(values, per_device_batch=None, allow_cpu=False, **kw))


@pytest.mark.slow  # end to end: a device_check process and its case's process (~30 s)
def test_smoke_run_writes_one_json_with_positive_figures(smoke_run):
    report, stdout, out = smoke_run
    assert [p.name for p in out.glob("**/*.json")] == ["device_check.json"]
    assert report["smoke"] and report["complete"] and report["wall_s"] < report["budget_s"]
    assert report["peak_flops_per_s"] > 0 and "measured" in report["peak_flops_source"]
    assert report["environment"]["modules"]["jax"]
    (jax_case,) = report["cases"]
    assert jax_case["case"] == "mae_vit_b16/jax" and jax_case["status"] == "ok", jax_case
    keys = ("images_per_s", "step_time_s", "compile_s", "model_flops_per_step", "mfu", "hfu")
    _positive(jax_case, (*keys, "peak_memory_bytes", "compiled_memory_bytes"))
    assert jax_case["per_device_batch"] == 16 and jax_case["details"]["devices"] == 1
    assert jax_case["details"]["dtype"] == "float32"  # the smoke form; the GPU run's: bf16
    assert len(jax_case["details"]["step_times_s"]) == 2
    (row,) = report["summary"]
    _positive(row, ("jax_images_per_s", "jax_mfu", "jax_peak_memory_bytes"))
    assert row["torch_images_per_s"] is None and row["jax_over_torch"] is None
    assert "[1/1] mae_vit_b16/jax: ok" in stdout and "| mae_vit_b16 | 16 |" in stdout


@pytest.mark.slow  # shares the end-to-end run's fixture
def test_smoke_torch_case_gets_the_jax_cases_model_flops(smoke_run):
    pytest.importorskip("torch")
    report, _, _ = smoke_run
    (jax_case,) = report["cases"]
    case = device_check.plan("mae_vit_b16/torch")[0]
    details = device_check._torch_case(case, _smoke_args())
    record = dict(case=case.name, model=case.model.name, status="ok", details=details)
    model_flops = {case.model.name: (jax_case["model_flops_per_step"], "the JAX case")}
    peak = dict(flops_per_s=report["peak_flops_per_s"], source=report["peak_flops_source"])
    device_check.figures(record, case, model_flops, peak)
    _positive(record, ("images_per_s", "step_time_s", "mfu"))
    _positive(details, ("torch_counted_flops_per_step",))
    assert record["model_flops_per_step"] == jax_case["model_flops_per_step"]  # same work
    assert details["torch_device"] == "cpu" and len(details["torch_step_times_s"]) == 2
    (row,) = device_check.summary([jax_case, record])
    _positive(row, ("torch_images_per_s", "torch_mfu", "jax_over_torch"))


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
    report, stdout, _ = _run(tmp_path, "--budget_s=5", "--cases=*/jax")
    assert [r["status"] for r in report["cases"]] == ["skipped"] * 4
    assert all("budget" in r["error"] for r in report["cases"]) and not report["complete"]
    assert "[4/4] dino_vit_s16/jax: skipped" in stdout
    assert not list((tmp_path / "device_check_logs").iterdir())  # nothing was started


def test_a_case_past_its_limit_is_stopped(tmp_path):
    case = device_check.plan("mae_vit_b16/jax")[0]
    log = str(tmp_path / "case.log")
    record = device_check.run_case(case, _smoke_args(), limit_s=0.5, log_path=log)
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
