"""The command line's own usage errors (the bad-input matrix is tests/test_bad_input.py)."""

import os
import subprocess
import sys

import jax
import pytest
from absl import flags
from helpers import config_flags, run_ssl_jax, smoke_config

from ssl_jax import cli_help, dry_run, main, train


@pytest.mark.parametrize(
    "args, message",
    [
        (["train"], "expected one command out of pretrain, config, eval"),
        ([], "expected one command out of pretrain, config, eval"),
        (["eval"], "eval needs --workdir=DIR"),
        (["pretrain"], "pretrain needs --config"),
        (["config"], "config needs --config"),
        (
            ["pretrain", "--config=configs/no_such.py:smoke"],
            "flag --config=configs/no_such.py:smoke: cannot load config file "
            "'configs/no_such.py': no such file",
        ),
        (
            ["pretrain", "--config=moco_v9:smoke"],
            "cannot load config file 'moco_v9': no such file and no shipped config of that "
            "name (byol, cmc, dino,",
        ),
    ],
    ids=[
        "unknown_command",
        "no_command",
        "no_workdir",
        "no_config",
        "config_without_config",
        "missing_config_file",
        "unknown_config_name",
    ],
)
def test_usage_errors_are_one_line_with_status_2(tmp_path, args, message):
    workdir = [f"--workdir={tmp_path / 'w'}"] if args[:1] == ["pretrain"] else []
    out = run_ssl_jax(*args, *workdir)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and message in out.stderr, out.stderr
    assert not (tmp_path / "w").exists()


def test_eval_of_a_workdir_without_checkpoint_says_so(tmp_path):
    out = run_ssl_jax("eval", "--config=configs/simclr.py:smoke", f"--workdir={tmp_path}")
    assert out.returncode == 2
    assert "no checkpoint under" in out.stderr
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("kind", ["a_file", "a_300_character_name"])
def test_a_workdir_that_cannot_be_one_is_one_line_with_status_2(tmp_path, kind):
    if kind == "a_file":
        workdir = tmp_path / "run"
        workdir.write_text("not a directory")
        expected = "is a file, not a directory"
    else:
        workdir = tmp_path / ("r" * 300) / "run"
        expected = "has 300 characters, more than the file system's"
    out = run_ssl_jax("pretrain", "--config=configs/moco_v2.py:smoke", f"--workdir={workdir}")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and expected in out.stderr, out.stderr


def test_a_truncated_config_json_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"method": "moco", "mod')
    out = run_ssl_jax("eval", f"--workdir={tmp_path}")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0, out.stderr
    assert f"{tmp_path / 'config.json'} is not valid JSON" in out.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 10 MB file system: the smoke run's third checkpoint does not fit (3.8 MB each)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_is_one_line_with_status_74_and_keeps_the_last_checkpoint(small_disk):
    workdir = small_disk / "run"
    out = run_ssl_jax(
        "pretrain",
        "--config=configs/moco_v2.py:smoke",
        f"--workdir={workdir}",
        *config_flags(schedule__total_steps=8, evals__at_end=False, evals__knn_every_steps=0),
        timeout=240,
    )
    assert out.returncode == 74, out.stderr
    assert out.stderr.strip().count("\n") == 0, out.stderr  # orbax's thread tracebacks too
    assert "No space left on device" in out.stderr or "RESOURCE_EXHAUSTED" in out.stderr
    assert "the last good checkpoint is step 4, intact" in out.stderr
    assert sorted(d.name for d in (workdir / "checkpoints").iterdir() if d.name.isdigit()) == [
        "2",
        "4",
    ]


def test_a_shipped_config_is_found_by_name_from_any_directory(tmp_path):
    from ssl_jax import config_files

    path = config_files.resolve_config_flag("moco_v2:digits")
    assert path == os.path.join(config_files.CONFIGS_DIR, "moco_v2.py") + ":digits"
    assert os.path.isfile(path.rsplit(":", 1)[0])
    assert config_files.resolve_config_flag("moco_v2") == path.rsplit(":", 1)[0]
    mine = tmp_path / "mine.py"
    mine.write_text("")
    for own in (str(mine) + ":x", "configs/moco_v2.py:digits", "nosuch:smoke"):
        assert config_files.resolve_config_flag(own) == own  # paths and unknowns unchanged
    assert "moco_v3" in config_files.shipped_names()


def _help(*args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "argv", ["ssl-jax", *args])
            main.run()
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_help_gives_the_overview_and_each_command_its_flags_and_an_example(capsys):
    overview = _help("--help", capsys=capsys)
    assert overview.startswith(main.__doc__.strip()[:40])  # the module's docstring
    for name, command in cli_help.COMMANDS.items():
        assert f"  {name:<12}{command.summary}" in overview
        page = _help(name, "-h", capsys=capsys)
        assert page.startswith(f"ssl-jax {name}: ")
        for flag in command.flags:
            assert f"  --{flag}" in page and flags.FLAGS[flag].help.split()[0] in page
        for flag in command.required:
            assert f"--{flag} (required)" in page
        assert ("--config.KEY=VALUE" in page) == command.overrides
        assert all(example in page for example in command.examples)


def test_config_dry_run_states_the_runs_numbers_and_compiles_nothing():
    config = smoke_config("moco", input__global_batch_size=32, moco__queue_size=96)
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, _, **kw: compiles.append(event) if "backend_compile" in event else None
    )
    text = dry_run.describe(config, devices=4)
    assert not compiles
    setup = train.build(config, train.parallel.make_mesh(jax.devices()[:4]))
    implied = text.split("What this config implies")[1]
    assert "on 4 devices, 1 process:" in implied
    assert f"global batch 32 = 8 per device; {setup.steps_per_epoch} steps per epoch" in implied
    assert f"= {setup.total_steps} steps" in implied
    lr = config.optim.lr * 32 / 256
    assert f"lr: peak {lr:.6g} = optim.lr {config.optim.lr:g} scaled x 32/256 (linear)" in implied
    dim = config.model.head.out_dim
    assert f"extra['queue'] (the method's own state): 96 x {dim} float32" in implied
    assert str(config).splitlines()[0] in text  # the resolved config comes first


def test_config_command_prints_the_plan_for_a_device_count_this_machine_lacks():
    out = run_ssl_jax(
        "config",
        "--config=configs/simclr.py:smoke",
        "--devices=64",
        "--config.input.global_batch_size=64",
    )
    assert out.returncode == 0, out.stderr
    assert "on 64 devices, 1 process:" in out.stdout and "= 1 per device" in out.stdout
    assert "Nothing was compiled" in out.stdout
    bad = run_ssl_jax("config", "--config=configs/simclr.py:smoke", "--devices=3")
    assert bad.returncode == 2 and "not divisible by the 3 devices" in bad.stderr, bad.stderr


def test_list_imports_no_tensorflow():
    code = (
        "import sys; from ssl_jax import catalog; catalog.catalog_text(); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
