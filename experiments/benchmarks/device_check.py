"""The device check: four papers' training steps on one accelerator, JAX beside PyTorch, in
one bounded run that writes one JSON file.

    bash experiments/benchmarks/device_check.sh OUT_DIR      # one GPU: ends within 8 minutes
    python experiments/benchmarks/device_check.py --smoke --out=OUT_DIR   # CPU, tiny (CI)

Models (``MODELS``), each at its paper's per-device batch on one device, bfloat16 compute
(float32 parameters), synthetic batches of the pipeline's shapes (``benchmark.py``):

=============  ============================  =====  =========================================
model          config                        batch  per-device batch: where it comes from
=============  ============================  =====  =========================================
moco_v2_r50    configs/moco_v2.py:imagenet   32     256 on 8 GPUs (the preset's "8 GPUs x 32",
                                                    main_moco.py --batch-size 256)
simclr_r50     configs/simclr.py:imagenet    32     4096 on 128 TPU v3 cores (SimCLR paper,
                                                    Sec. 2.2): 32 per core; the paper has no
                                                    GPU setting
mae_vit_b16    configs/mae.py:               64     4096 = 64 per GPU x 8 GPUs x 8 nodes
               imagenet_vit_base                    (the preset's docstring, PRETRAIN.md)
dino_vit_s16   configs/dino.py:imagenet      64     1024 over 16 GPUs for ViT-S/16 (DINO
                                                    paper, implementation details; main_dino.py
                                                    --batch_size_per_gpu 64); 2 x 224 + 8 x 96
                                                    crops (--local_crops_number 8)
=============  ============================  =====  =========================================

Cases, in this order so that what is measured first matters most: for each model the
ssl_jax step (``benchmark.run``), then the PyTorch reference step
(``torch_reference.time_step``: AMP bfloat16, channels-last ResNets, cuDNN benchmark mode,
``--torch_compile`` optional and off by default); then the two ViTs again with
``model.vit.remat=True``. MoCo runs with global BN (``moco.bn_groups=1``, no key shuffle):
one GPU of the official run normalises over its own 32 images, and shuffle BN needs several
GPUs. The online linear probe is off (the official steps have none).

Every case runs in its own process: the runtime's ``peak_bytes_in_use`` is the highest of
the process so far, JAX preallocates most of the GPU (PyTorch would find none), and a
process can be stopped in the middle of a compilation. The run has one deadline
(``--budget_s``, 450 s): a case gets ``min(its limit, the time left)`` and is killed when
that runs out; a case that would start with under ``MIN_START_S`` left is skipped. Each
case's status (ok / failed / timed_out / skipped) and the JSON are written as the run goes,
so an interrupted run keeps what it measured.

Figures per case: images/s (batch / median step), step and compile time, peak memory
(GPU: ``peak_bytes_in_use`` / ``max_memory_allocated``; CPU: the compiled program's
``memory_analysis``, PyTorch none), and MFU = model FLOPs / step time / peak FLOP/s. Model
FLOPs are XLA's count of the model's step without remat before the backend's passes
(``Lowered.cost_analysis``), the same number for the JAX, JAX-remat and PyTorch steps of a
model: the work the step has to do; ``hfu`` counts what the program runs (remat's
recomputation too). Peak: ``device_peak.peak_flops`` (the spec sheet by ``device_kind``,
H100 / H200 989 bf16 TFLOP/s; on CPU a matmul measured in the JAX case's process).
PyTorch's own count (``torch.utils.flop_counter``, convs and matmuls) is recorded as a check.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MIN_START_S = 20.0  # a case needs at least this much time left to start
# (JAX case, PyTorch case) limits in seconds; the smoke run's are for a shared 2-core CPU.
CASE_LIMITS_S = {"gpu": (150.0, 75.0), "smoke": (180.0, 60.0)}
TORCH_COMPILE_LIMIT_S = 240.0
STEPS = {"gpu": dict(jax=(3, 10), torch=(5, 10)), "smoke": dict(jax=(1, 2), torch=(1, 2))}
# What ssl_jax.train imports (requirements.txt); a JAX case is skipped without them.
JAX_MODULES = (
    "jax", "jaxlib", "flax", "optax", "orbax", "chex", "einops", "ml_collections",
    "tensorflow", "sklearn", "matplotlib",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    config: str  # configs/<file>.py
    preset: str
    smoke_preset: str
    per_device_batch: int
    batch_source: str
    overrides: tuple[tuple[str, Any], ...] = ()
    vit: bool = False  # also timed with model.vit.remat=True


MODELS = (
    Model(
        "moco_v2_r50",
        "moco_v2",
        "imagenet",
        "smoke",
        32,
        "256 on 8 GPUs (configs/moco_v2.py imagenet: '8 GPUs x 32'; main_moco.py)",
        (("moco.bn_groups", 1), ("moco.shuffle_keys", False)),
    ),
    Model(
        "simclr_r50",
        "simclr",
        "imagenet",
        "smoke",
        32,
        "4096 on 128 TPU v3 cores (SimCLR paper Sec. 2.2): 32 per core",
    ),
    Model(
        "mae_vit_b16",
        "mae",
        "imagenet_vit_base",
        "smoke",
        64,
        "4096 = 64 per GPU x 8 GPUs x 8 nodes (configs/mae.py, MAE PRETRAIN.md)",
        vit=True,
    ),
    Model(
        "dino_vit_s16",
        "dino",
        "imagenet",
        "smoke_vit",
        64,
        "1024 over 16 GPUs (DINO paper, ViT-S/16; main_dino.py --batch_size_per_gpu 64)",
        vit=True,
    ),
)


@dataclasses.dataclass(frozen=True)
class Case:
    model: Model
    side: str  # "jax" or "torch"
    remat: bool = False

    @property
    def name(self) -> str:
        return f"{self.model.name}/{self.side}{'_remat' if self.remat else ''}"


def plan(patterns: str = "") -> list[Case]:
    """Each model's JAX then PyTorch case, then the ViTs' remat cases; only those whose
    name matches one of the comma-separated ``fnmatch`` patterns, if any are given."""
    cases = [Case(m, side) for m in MODELS for side in ("jax", "torch")]
    cases += [Case(m, "jax", remat=True) for m in MODELS if m.vit]
    wanted = [p for p in patterns.split(",") if p]
    return [c for c in cases if not wanted or any(fnmatch.fnmatch(c.name, p) for p in wanted)]


def case_config(case: Case, smoke: bool, per_device_batch: int | None = None):
    """The ssl_jax config of a case: the preset with the check's overrides."""
    from ssl_jax import config_base, config_files

    m = case.model
    preset = m.smoke_preset if smoke else m.preset
    config = config_files.load_config(m.config, preset, os.path.join(ROOT, "configs"))
    batch = per_device_batch or (config.input.global_batch_size if smoke else m.per_device_batch)
    values = dict(m.overrides)
    values.update(
        {
            "input.global_batch_size": batch,  # one device
            "model.dtype": "float32" if smoke else "bfloat16",
            "evals.online_linear": False,
        }
    )
    if m.vit:
        values["model.vit.remat"] = case.remat
    return config_base.with_values(config, values)


# ---- one case, in its own process ------------------------------------------------------


def _jax_case(case: Case, args) -> dict[str, Any]:
    sys.path.insert(0, os.path.dirname(HERE))
    import benchmark
    import jax

    if jax.device_count() != 1:
        raise RuntimeError(f"one device expected, JAX sees {jax.devices()}")
    if jax.devices()[0].platform == "cpu" and not (args.smoke or args.allow_cpu):
        raise RuntimeError("JAX sees no GPU (jax[cuda12] installed?): it would time a CPU")
    config = case_config(case, args.smoke, args.per_device_batch)
    warmup, steps = _steps(args, "jax")
    result = benchmark.run(config, steps=steps, warmup=warmup, label=case.name)
    if case.remat:  # the model's FLOPs: the same step without remat, lowered, not compiled
        plain = case_config(
            dataclasses.replace(case, remat=False), args.smoke, args.per_device_batch
        )
        result["model_flops_per_step"] = _lowered_flops(benchmark, plain)
    return result


def _lowered_flops(benchmark, config) -> float:
    """XLA's count of ``config``'s step before the backend's passes (no compilation)."""
    import device_peak
    import jax

    from ssl_jax import parallel, train
    from ssl_jax.data import pipeline

    config, _ = benchmark._with_loadable_source(config)
    mesh = parallel.make_mesh()
    setup = train.build(config, mesh)
    init_key, base_key = train.keys(config)
    with jax.set_mesh(mesh):
        state = jax.eval_shape(setup.init, init_key)
        batch = parallel.to_global(pipeline.synthetic_batch(config.input, config.seed), mesh)
        lowered = setup.update.lower(state, batch, parallel.replicate(base_key, mesh))
    return device_peak.step_flops(lowered)


def _torch_case(case: Case, args) -> dict[str, Any]:
    sys.path.insert(0, HERE)
    import device_peak
    import torch
    import torch_reference

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not (args.smoke or args.allow_cpu):
        raise RuntimeError("torch.cuda.is_available() is False: no GPU for PyTorch")
    torch.backends.cudnn.benchmark = True  # as main_moco.py, main_dino.py, MAE's
    config = case_config(case, args.smoke, args.per_device_batch)
    warmup, steps = _steps(args, "torch")
    # The spec-sheet peak by the CUDA device's name (None on a CPU: the run's JAX case
    # measures that one).
    name = torch.cuda.get_device_name() if device == "cuda" else device
    spec = device_peak.spec_sheet_flops(name, config.model.dtype)
    result = torch_reference.time_step(
        config,
        steps=steps,
        warmup=warmup,
        device=device,
        channels_last=config.model.backbone.startswith("resnet"),
        compile=args.torch_compile,
        count_flops=True,
    )
    return dict(
        result,
        global_batch_size=config.input.global_batch_size,
        image_size=config.input.image_size,
        dtype=config.model.dtype,
        peak_flops_per_s=spec and spec[0],
        peak_flops_source=spec and spec[1],
    )


def _steps(args, side: str) -> tuple[int, int]:
    warmup, steps = STEPS["smoke" if args.smoke else "gpu"][side]
    return (warmup if args.warmup is None else args.warmup), (args.steps or steps)


def _child(args) -> None:
    case = {c.name: c for c in plan()}[args.child]
    result = (_jax_case if case.side == "jax" else _torch_case)(case, args)
    with open(args.child_json, "w") as f:
        json.dump(result, f)


# ---- the run: every case under one deadline --------------------------------------------


# module -> the distributions that may provide it (for its version)
DISTRIBUTIONS = dict(
    jax=("jax",),
    jaxlib=("jaxlib",),
    jax_cuda_plugin=("jax-cuda12-plugin", "jax-cuda13-plugin"),
    flax=("flax",),
    optax=("optax",),
    orbax=("orbax-checkpoint",),
    chex=("chex",),
    einops=("einops",),
    ml_collections=("ml-collections",),
    tensorflow=("tensorflow", "tensorflow-cpu"),
    sklearn=("scikit-learn",),
    matplotlib=("matplotlib",),
    torch=("torch",),
    torchvision=("torchvision",),
)


def environment() -> dict[str, Any]:
    """Which modules the cases need are there (found without importing them: no GPU is
    touched here), their versions, and the GPUs."""
    modules = {}
    for name, dists in DISTRIBUTIONS.items():
        top = "jax_plugins" if name == "jax_cuda_plugin" else name
        if importlib.util.find_spec(top) is None:
            modules[name] = None
            continue
        modules[name] = "installed"  # unless a distribution says which version
        for dist in dists:
            try:
                modules[name] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                pass
    gpus = None
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"]
        try:
            gpus = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout
            gpus = gpus.strip().splitlines()
        except (OSError, subprocess.SubprocessError) as e:
            gpus = [f"nvidia-smi failed: {e}"]
    return dict(
        python=platform.python_version(),
        machine=platform.machine(),
        cpu_count=os.cpu_count(),
        modules=modules,
        nvidia_smi=gpus,
    )


def _child_env(side: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("CUDA_VISIBLE_DEVICES", "0")  # one GPU, both sides
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    if side == "torch":
        env["JAX_PLATFORMS"] = "cpu"  # ssl_jax's config modules import jax: keep it off the GPU
    else:  # one device also where the CPU is split into several (tests' XLA_FLAGS)
        flags = env.get("XLA_FLAGS", "").split()
        flags = [f for f in flags if not f.startswith("--xla_force_host_platform_device_count")]
        env["XLA_FLAGS"] = " ".join([*flags, "--xla_force_host_platform_device_count=1"])
    return env


def run_case(case: Case, args, limit_s: float, log_path: str) -> dict[str, Any]:
    """Runs one case in a child process for at most ``limit_s``; its status and figures."""
    # The child's figures pass through a temporary file: the run's one JSON is the report.
    tmp = tempfile.mkdtemp(prefix="device_check_")
    out_json = os.path.join(tmp, "case.json")
    cmd = [sys.executable, os.path.abspath(__file__), f"--child={case.name}"]
    cmd.append(f"--child_json={out_json}")
    cmd += ["--smoke"] * args.smoke + ["--torch_compile"] * args.torch_compile
    cmd += ["--allow_cpu"] * args.allow_cpu
    for flag in ("steps", "warmup", "per_device_batch"):
        if getattr(args, flag) is not None:
            cmd.append(f"--{flag}={getattr(args, flag)}")
    start = time.monotonic()
    try:
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=_child_env(case.side),
                cwd=ROOT, start_new_session=True,
            )  # fmt: skip
            try:
                rc = proc.wait(timeout=limit_s)
            except subprocess.TimeoutExpired:
                rc = None
            finally:  # also when this process is told to stop (SIGTERM from `timeout`)
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)  # the child and what it started
                    proc.wait()
        record = dict(wall_s=time.monotonic() - start, limit_s=limit_s, log=log_path)
        if rc is None:
            return dict(record, status="timed_out", error=f"stopped after {limit_s:.0f} s")
        if rc != 0 or not os.path.exists(out_json):
            return dict(record, status="failed", error=_tail(log_path))
        with open(out_json) as f:
            return dict(record, status="ok", details=json.load(f))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tail(path: str, lines: int = 8) -> str:
    with open(path, errors="replace") as f:
        kept = [line.rstrip() for line in f if line.strip() and not line.startswith(("W0", "I0"))]
    return "\n".join(kept[-lines:])


def figures(record: dict[str, Any], case: Case, model_flops: dict, peak: dict) -> None:
    """Adds the case's headline figures (images/s, MFU, memory) to ``record``.

    Model FLOPs: the lowered count of the model's step without remat, from the JAX case
    (a remat case lowers that step itself); a PyTorch case takes its model's from the
    run's JAX case, or else its own ``flop_counter`` count. Peak: the JAX case's
    (``device_peak.peak_flops``), or the PyTorch case's spec sheet by CUDA device name.
    """
    d = record.get("details")
    if d is None:
        return
    jax_side = case.side == "jax"
    step_s = d["step_time_s"] if jax_side else d["torch_step_time_s"]
    if jax_side:
        source = f"XLA lowered count of {case.model.name}/jax"
        if case.remat:
            flops, source = d["model_flops_per_step"], f"{source} (lowered in this case)"
        else:
            flops = d["lowered_flops_per_step"]
        model_flops.setdefault(case.model.name, (flops, source))
        finite = math.isfinite(d["peak_flops_per_s"])
        case_peak, peak_source = (d["peak_flops_per_s"] if finite else None), d["peak_flops_source"]
        peak.setdefault("flops_per_s", case_peak)
        peak.setdefault("source", peak_source)
    else:
        counted = d["torch_counted_flops_per_step"]
        flops, source = model_flops.get(case.model.name, (counted, "torch flop_counter"))
        case_peak = d["peak_flops_per_s"] or peak.get("flops_per_s")
        peak_source = d["peak_flops_source"] or peak.get("source")
    record.update(
        per_device_batch=d["global_batch_size"],
        image_size=d["image_size"],
        images_per_s=d["images_per_s"] if jax_side else d["torch_images_per_s"],
        step_time_s=step_s,
        compile_s=d["compile_s"] if jax_side else None,
        model_flops_per_step=flops,
        model_flops_source=source,
        mfu=flops / step_s / case_peak if flops and case_peak else None,
        peak_flops_per_s=case_peak,
        peak_flops_source=peak_source,
        peak_memory_bytes=d["peak_memory_bytes"] if jax_side else d["torch_peak_memory_bytes"],
        peak_memory_source=(
            d["peak_memory_source"] if jax_side else "torch.cuda.max_memory_allocated"
        ),
    )
    if jax_side:
        record["hfu"] = d["lowered_flops_per_step"] / step_s / case_peak if case_peak else None
        record["compiled_memory_bytes"] = d["compiled_memory_bytes"]


def summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model: each side's images/s, MFU and peak memory, JAX / PyTorch."""
    rows = []
    for m in MODELS:
        cases = {r["case"]: r for r in records if r["model"] == m.name and r["status"] == "ok"}
        if not any(r["model"] == m.name for r in records):
            continue
        row = dict(model=m.name, per_device_batch=None)
        for side in ("jax", "torch", "jax_remat"):
            r = cases.get(f"{m.name}/{side}", {})
            row["per_device_batch"] = row["per_device_batch"] or r.get("per_device_batch")
            for key in ("images_per_s", "mfu", "peak_memory_bytes"):
                row[f"{side}_{key}"] = r.get(key)
        jax_ips, torch_ips = row["jax_images_per_s"], row["torch_images_per_s"]
        row["jax_over_torch"] = jax_ips / torch_ips if jax_ips and torch_ips else None
        rows.append(row)
    return rows


def format_summary(rows: list[dict[str, Any]]) -> str:
    def f(v, scale=1.0, digits=1):
        return "-" if v is None else f"{v * scale:.{digits}f}"

    def gib(v):
        return "-" if v is None else f"{v / 2**30:.3g}"

    lines = [
        "| model | batch | JAX img/s | MFU % | peak GiB | PyTorch img/s | MFU % | peak GiB "
        "| JAX / PyTorch | remat img/s | MFU % | peak GiB |",
        "|" + " --- |" * 12,
    ]
    for r in rows:
        cells = [r["model"], str(r["per_device_batch"])]
        for side in ("jax", "torch"):
            cells += [f(r[f"{side}_images_per_s"]), f(r[f"{side}_mfu"], 100)]
            cells.append(gib(r[f"{side}_peak_memory_bytes"]))
        cells.append(f(r["jax_over_torch"], digits=2))
        if any(m.vit for m in MODELS if m.name == r["model"]):
            cells += [f(r["jax_remat_images_per_s"]), f(r["jax_remat_mfu"], 100)]
            cells.append(gib(r["jax_remat_peak_memory_bytes"]))
        else:
            cells += ["n/a"] * 3
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write(path: str, report: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, path)


def main(args) -> dict[str, Any]:
    # SIGTERM (the shell's `timeout`) unwinds like Ctrl-C: the running case is killed and
    # recorded as interrupted, and the JSON written.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    deadline = started + args.budget_s
    mode = "smoke" if args.smoke else "gpu"
    jax_limit, torch_limit = CASE_LIMITS_S[mode]
    if args.torch_compile:
        torch_limit = TORCH_COMPILE_LIMIT_S
    if args.case_limit_s:
        jax_limit = torch_limit = args.case_limit_s
    env = environment()
    missing_jax = [n for n in JAX_MODULES if env["modules"][n] is None]
    cases = plan(args.cases)
    os.makedirs(os.path.join(args.out, "device_check_logs"), exist_ok=True)
    path = os.path.join(args.out, "device_check.json")
    report = dict(
        check="ssl_jax device check (experiments/benchmarks/device_check.py)",
        command=[os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]],
        smoke=args.smoke,
        started_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        budget_s=args.budget_s,
        case_limits_s=dict(jax=jax_limit, torch=torch_limit),
        steps=dict(jax=_steps(args, "jax"), torch=_steps(args, "torch")),  # (warmup, timed)
        torch_compile=args.torch_compile,
        environment=env,
        peak_flops_per_s=None,
        peak_flops_source=None,
        cases=[],
    )
    model_flops, peak = {}, {}
    print(f"device check: {len(cases)} cases, budget {args.budget_s:.0f} s -> {path}", flush=True)
    for i, case in enumerate(cases, 1):
        m = case.model
        record = dict(
            case=case.name,
            model=m.name,
            side=case.side,
            remat=case.remat,
            config=f"configs/{m.config}.py:{m.smoke_preset if args.smoke else m.preset}",
            overrides=dict(m.overrides),
            # the smoke presets' own batch; the child's figures say what ran
            per_device_batch=args.per_device_batch or (None if args.smoke else m.per_device_batch),
            batch_source=m.batch_source,
        )
        left = deadline - time.monotonic()
        limit = min(jax_limit if case.side == "jax" else torch_limit, left)
        tag = f"[{i}/{len(cases)}] {case.name}"
        if case.side == "jax" and missing_jax:
            record.update(status="skipped", error=f"not installed: {', '.join(missing_jax)}")
        elif case.side == "torch" and env["modules"]["torch"] is None:
            record.update(status="skipped", error="torch is not installed")
        elif limit < MIN_START_S:
            record.update(status="skipped", error=f"budget: {left:.0f} s left")
        else:
            print(f"{tag}: start (limit {limit:.0f} s, {left:.0f} s left)", flush=True)
            log = os.path.join(args.out, "device_check_logs", case.name.replace("/", "__") + ".log")
            try:
                record.update(run_case(case, args, limit, log))
            except (SystemExit, KeyboardInterrupt):
                record.update(status="interrupted", error="the run was stopped")
                report["cases"].append(record)
                _write(path, dict(report, wall_s=time.monotonic() - started, complete=False))
                raise
            figures(record, case, model_flops, peak)
        report["cases"].append(record)
        report.update(
            peak_flops_per_s=peak.get("flops_per_s"), peak_flops_source=peak.get("source")
        )
        report["wall_s"] = time.monotonic() - started
        report["summary"] = summary(report["cases"])
        report["complete"] = all(r["status"] == "ok" for r in report["cases"])
        _write(path, report)
        print(f"{tag}: {_progress(record)}", flush=True)
    print(format_summary(report["summary"]))
    print(f"wall {report['wall_s']:.0f} s; wrote {path}", flush=True)
    return report


def _progress(r: dict[str, Any]) -> str:
    if r["status"] != "ok":
        return f"{r['status']}: {r.get('error', '')}"
    parts = [f"ok in {r['wall_s']:.1f} s", f"{r['images_per_s']:.4g} images/s"]
    if r.get("mfu") is not None:
        parts.append(f"MFU {100 * r['mfu']:.1f} %")
    if r.get("peak_memory_bytes"):
        parts.append(f"peak {r['peak_memory_bytes'] / 2**30:.3g} GiB")
    if r.get("compile_s") is not None:
        parts.append(f"compile {r['compile_s']:.1f} s")
    return ", ".join(parts)


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="workdirs/device_check", help="device_check.json and logs")
    p.add_argument("--smoke", action="store_true", help="CPU CI mode: smoke presets, 2 steps")
    p.add_argument("--budget_s", type=float, default=None, help="deadline (450; smoke 600)")
    p.add_argument(
        "--cases",
        default="",
        help="comma-separated fnmatch patterns of case names, e.g. 'mae_vit_b16/*,*/torch' "
        f"(default: all of {', '.join(c.name for c in plan())})",
    )
    p.add_argument("--torch_compile", action="store_true", help="torch.compile the networks")
    p.add_argument("--steps", type=int, default=None, help="timed steps per case")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per case")
    # For dry runs of the GPU cases elsewhere (e.g. on a CPU, with a small batch):
    p.add_argument("--per_device_batch", type=int, default=None, help="dry runs only")
    p.add_argument("--case_limit_s", type=float, default=None, help="every case's limit")
    p.add_argument("--allow_cpu", action="store_true", help="GPU cases on a CPU: dry runs")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child_json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = 600.0 if args.smoke else 450.0
    if not plan(args.cases):
        p.error(f"--cases={args.cases!r} matches none of {', '.join(c.name for c in plan())}")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.child:
        _child(arguments)
    else:
        main(arguments)
