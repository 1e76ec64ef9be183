"""A bad number in the config stops `train.build` (config_check.check, then the method's
validate) before anything is compiled or written: one line naming key, value and reason.
Every shipped preset passes, so no bound is stricter than the presets need."""

import os

import pytest
from helpers import ROOT, config_flags, load_config, run_ssl_jax

from ssl_jax import catalog, config_check, config_files, methods, parallel, train

# (config file, overrides, the message's start): at least one per key group.
BAD = [
    ("simclr", dict(optim__lr=-0.1), "optim.lr=-0.1 must be > 0: a negative lr ascends"),
    ("simclr", dict(optim__lr=0.0), "optim.lr=0.0 must be > 0: a negative lr ascends"),
    ("simclr", dict(optim__momentum=1.0), "optim.momentum=1.0 must be in [0, 1):"),
    ("simclr", dict(optim__weight_decay=-1e-4), "optim.weight_decay=-0.0001 must be >= 0:"),
    ("simclr", dict(optim__trust_coefficient=0.0), "optim.trust_coefficient=0.0 must be > 0"),
    ("simclr", dict(optim__b2=1.0), "optim.b2=1.0 must be in [0, 1):"),
    ("simclr", dict(optim__eps=0.0), "optim.eps=0.0 must be > 0: Adam divides"),
    ("simclr", dict(optim__clip_grad_per_param=-1.0), "optim.clip_grad_per_param=-1.0 must"),
    ("simclr", dict(optim__delay_epochs=-1.0), "optim.delay_epochs=-1.0 must be >= 0"),
    ("simclr", dict(schedule__epochs=0.0), "schedule.epochs=0.0 must be > 0"),
    (
        "simclr",
        dict(schedule__warmup_epochs=2.0),
        "schedule.warmup_epochs=2.0 must be in [0, schedule.epochs=1.0]",
    ),
    ("simclr", dict(schedule__total_steps=-5), "schedule.total_steps=-5 must be >= 0: 0 takes"),
    (
        "simclr",
        dict(schedule__decay="step", schedule__milestones=(0.5, 2.0)),
        "schedule.milestones=(0.5, 2.0) must increase within (0, schedule.epochs=1.0]",
    ),
    ("simclr", dict(schedule__final_lr=-1e-6), "schedule.final_lr=-1e-06 must be >= 0"),
    ("simclr", dict(input__image_size=0), "input.image_size=0 must be > 0"),
    ("simclr", dict(input__global_batch_size=0), "input.global_batch_size=0 must be > 0"),
    ("simclr", dict(input__mean=(0.5, 0.5)), "input.mean=(0.5, 0.5) must have 3 values"),
    ("simclr", dict(input__std=(0.2, 0.2, 0.0)), "input.std=(0.2, 0.2, 0.0) must be 3 values"),
    ("simclr", dict(input__shuffle_buffer=0), "input.shuffle_buffer=0 must be > 0"),
    ("simclr", dict(input__eval_crop_fraction=0.0), "input.eval_crop_fraction=0.0 must be in"),
    ("simclr", dict(log_every_steps=0), "log_every_steps=0 must be > 0"),
    ("simclr", dict(ckpt__every_steps=0), "ckpt.every_steps=0 must be > 0"),
    ("simclr", dict(ckpt__keep=0), "ckpt.keep=0 must be >= 1: keep=0 would delete every"),
    ("simclr", dict(evals__batch_size=0), "evals.batch_size=0 must be > 0"),
    ("simclr", dict(evals__knn_every_steps=-1), "evals.knn_every_steps=-1 must be >= 0"),
    ("simclr", dict(evals__knn_k=0), "evals.knn_k=0 must be > 0"),
    ("simclr", dict(evals__knn_temperature=0.0), "evals.knn_temperature=0.0 must be > 0"),
    ("simclr", dict(evals__linear_epochs=0), "evals.linear_epochs=0 must be > 0"),
    ("simclr", dict(evals__linear_lr=-0.1), "evals.linear_lr=-0.1 must be > 0"),
    ("simclr", dict(evals__online_linear_lr=0.0), "evals.online_linear_lr=0.0 must be > 0"),
    ("simclr", dict(model__head__out_dim=0), "model.head.out_dim=0 must be > 0"),
    ("simclr", dict(model__bn_epsilon=0.0), "model.bn_epsilon=0.0 must be > 0"),
    (
        "simclr",
        dict(input__eval_test_split="validation"),
        "input.eval_test_split='validation': unknown split 'validation'; valid: train, test",
    ),
    # The methods' own validate.
    ("moco_v2", dict(moco__temperature=0.0), "moco.temperature=0.0 must be > 0"),
    ("moco_v2", dict(moco__momentum=1.5), "moco.momentum=1.5 must be in [0, 1]"),
    ("simclr", dict(simclr__temperature=0.0), "simclr.temperature=0.0 must be > 0"),
    ("moco_v3", dict(moco_v3__temperature=-0.2), "moco_v3.temperature=-0.2 must be > 0"),
]


def _id(row) -> str:
    return "-".join(f"{k.replace('__', '.')}={v}" for k, v in row[1].items())


@pytest.mark.parametrize("name, overrides, message", BAD, ids=[_id(r) for r in BAD])
def test_bad_value_fails_build_with_one_line_naming_it(name, overrides, message):
    config = load_config(name, **overrides)
    with pytest.raises(ValueError) as raised:
        train.build(config, parallel.make_mesh())
    text = str(raised.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_check_alone_raises_and_skips_keys_a_config_lacks():
    with pytest.raises(ValueError, match=r"^ckpt\.keep=0 must be >= 1"):
        config_check.check(load_config("simclr", ckpt__keep=0))
    config = load_config("simclr")
    with config.unlocked():
        del config.optim.trust_coefficient  # an old run's config.json may lack a key
        config.optim.weight_decay_end = None  # a placeholder left unset
    config_check.check(config)


def test_no_eval_no_eval_split_check():
    config = load_config(
        "simclr", input__eval_test_split="validation", evals__at_end=False, evals__knn_every_steps=0
    )
    config_check.check(config)


def _presets():
    names = config_files.shipped_names(os.path.join(ROOT, "configs"))
    return [(n, p) for n in names for p in catalog.config_module(n).PRESETS]


@pytest.mark.parametrize("name, preset", _presets())
def test_every_shipped_preset_passes(monkeypatch, name, preset):
    # tfds data (cifar10, imagenet2012) is not prepared here; the bounds are the point.
    monkeypatch.setattr(config_check, "load_source", lambda *args: None)
    config = load_config(name, preset)
    config_check.check(config)
    methods.get_method(config.method).validate(config)


@pytest.mark.parametrize(
    "overrides, key",
    [
        (dict(optim__lr=-0.1), "optim.lr=-0.1"),
        (dict(ckpt__keep=0), "ckpt.keep=0"),
        (dict(moco__temperature=0.0), "moco.temperature=0.0"),
        (dict(input__eval_test_split="validation"), "input.eval_test_split='validation'"),
    ],
    ids=["negative_lr", "keep_0", "moco_temperature_0", "eval_split"],
)
def test_cli_exits_2_with_one_line_and_no_workdir(tmp_path, overrides, key):
    workdir = tmp_path / "run"
    out = run_ssl_jax(
        "pretrain",
        "--config=configs/moco_v2.py:smoke",
        f"--workdir={workdir}",
        *config_flags(**overrides),
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ssl-jax: {key}"), out.stderr
    assert not workdir.exists()
