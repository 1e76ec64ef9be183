"""Launch scripts (experiments/launch/): the printed commands, the restart decisions, and the
restart loops run for real against stand-ins for gcloud, srun and scontrol (no cloud, no
cluster; each test takes well under a second)."""

import json
import os
import shlex
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "experiments", "launch")
sys.path.insert(0, LAUNCH)

import pretrain_command  # noqa: E402
import slurm  # noqa: E402
import tpu_vm  # noqa: E402
from pretrain_command import Action  # noqa: E402

TPU_ARGS = [
    "--project=my-project",
    "--zone=us-central2-b",
    "--accelerator-type=v4-32",
    "--name=simclr-v4",
    "--config=configs/simclr.py:imagenet",
    "--workdir=gs://my-bucket/runs/simclr",
    "--data-dir=gs://my-bucket/tensorflow_datasets",
]
SLURM_ARGS = [
    "--nodes=2",
    "--gpus-per-node=8",
    "--config=configs/simclr.py:imagenet",
    "--workdir=/shared/runs/simclr",
    "--data-dir=/shared/tensorflow_datasets",
]
TRAIN = (
    "ssl-jax pretrain --distributed --config=configs/simclr.py:imagenet "
    "--workdir=gs://my-bucket/runs/simclr "
    "--config.input.data_dir=gs://my-bucket/tensorflow_datasets"
)


def run_script(name, *args, env=None):
    return subprocess.run(
        [sys.executable, os.path.join(LAUNCH, name), *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def dry_run_lines(name, *args):
    result = run_script(name, "--dry-run", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def gcloud_lines(lines, *words):
    """Printed gcloud commands whose argv starts with `gcloud <words...>`."""
    found = []
    for line in lines:
        if line.startswith("gcloud "):
            argv = shlex.split(line)
            if argv[1 : 1 + len(words)] == list(words):
                found.append(argv)
    return found


def flag(argv, name):
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")]
    assert len(values) == 1, (name, argv)
    return values[0]


# ---------------------------------------------------------------- decisions


@pytest.mark.parametrize(
    "status, action", [(0, Action.DONE), (75, Action.RERUN), (1, Action.FAIL), (2, Action.FAIL)]
)
def test_action_after_exit_status(status, action):
    assert pretrain_command.action_after_exit(status) is action


@pytest.mark.parametrize(
    "status, state, action",
    [
        (75, "READY", Action.RERUN),
        (0, "READY", Action.DONE),
        (3, "READY", Action.FAIL),
        (75, "PREEMPTED", Action.RECREATE),
        (None, "PREEMPTED", Action.RECREATE),
        (1, "TERMINATED", Action.RECREATE),
        (None, tpu_vm.NOT_FOUND, Action.RECREATE),
        (75, "SUSPENDED", Action.RECREATE),  # a spot queued resource after preemption
        (None, "READY", Action.RERUN),  # lost contact, slice still there
    ],
)
def test_next_action_after_describe_state(status, state, action):
    assert tpu_vm.next_action(status, state) is action


def test_worker_statuses_combine_into_one():
    combine = tpu_vm.combine_worker_statuses
    assert combine({"w0": 0, "w1": 0}, 2) == 0
    assert combine({"w0": 75, "w1": 0}, 2) == 75
    assert combine({"w0": 75, "w1": 3}, 2) == 3  # a real error wins over preemption
    assert combine({"w0": 0}, 2) is None  # a worker never reported
    assert tpu_vm.parse_status_line("SSL_JAX_EXIT_STATUS t1v-n-0-w-3 75\n") == ("t1v-n-0-w-3", 75)
    assert tpu_vm.parse_status_line("step 100 loss 3.2") is None


# ---------------------------------------------------------------- TPU VM: printed commands


def test_tpu_create_command_has_type_zone_runtime_and_spot():
    lines = dry_run_lines("tpu_vm.py", *TPU_ARGS, "--spot")
    (create,) = gcloud_lines(lines, "compute", "tpus", "tpu-vm", "create")
    assert create[5] == "simclr-v4"
    assert flag(create, "--accelerator-type") == "v4-32"
    assert flag(create, "--zone") == "us-central2-b"
    assert flag(create, "--project") == "my-project"
    assert flag(create, "--version") == "tpu-ubuntu2204-base"
    assert "--spot" in create


def test_tpu_queued_resource_create_command():
    lines = dry_run_lines("tpu_vm.py", *TPU_ARGS, "--queued", "--spot", "--runtime-version=x-1")
    assert not gcloud_lines(lines, "compute", "tpus", "tpu-vm", "create")
    (create,) = gcloud_lines(lines, "compute", "tpus", "queued-resources", "create")
    assert flag(create, "--node-id") == "simclr-v4"
    assert flag(create, "--accelerator-type") == "v4-32"
    assert flag(create, "--runtime-version") == "x-1"
    assert "--spot" in create
    assert gcloud_lines(lines, "compute", "tpus", "queued-resources", "describe")


def test_tpu_install_and_train_run_on_all_workers_with_the_same_command():
    lines = dry_run_lines("tpu_vm.py", *TPU_ARGS, "--", "--config.schedule.epochs=100")
    (scp,) = gcloud_lines(lines, "compute", "tpus", "tpu-vm", "scp")
    assert "--worker=all" in scp
    install, train = gcloud_lines(lines, "compute", "tpus", "tpu-vm", "ssh")
    for ssh in (install, train):
        assert "--worker=all" in ssh  # one --command, so every worker runs the same text
    assert "requirements.txt -e ." in flag(install, "--command")
    assert '"jax[tpu]"' in flag(install, "--command")
    command = flag(train, "--command")
    assert TRAIN + " --config.schedule.epochs=100;" in command
    assert command.count("ssl-jax pretrain") == 1


def test_tpu_dry_run_copies_results_and_deletes_only_when_asked():
    lines = dry_run_lines("tpu_vm.py", *TPU_ARGS, "--results-dir=out")
    assert gcloud_lines(lines, "storage", "cp") == [
        ["gcloud", "storage", "cp", "-r", "gs://my-bucket/runs/simclr", "out"]
    ]
    # The one delete printed is the recreate-after-preemption step, not a final clean-up.
    assert len(gcloud_lines(lines, "compute", "tpus", "tpu-vm", "delete")) == 1
    lines = dry_run_lines("tpu_vm.py", *TPU_ARGS, "--delete-when-done")
    assert gcloud_lines(lines, "compute", "tpus", "tpu-vm", "delete")[-1] == shlex.split(lines[-1])


def test_tpu_clone_mode_checks_out_the_ref_on_the_workers():
    lines = dry_run_lines(
        "tpu_vm.py", *TPU_ARGS, "--repo-url=https://x/ssl_jax.git", "--git-ref=v1"
    )
    assert not gcloud_lines(lines, "compute", "tpus", "tpu-vm", "scp")
    install = flag(gcloud_lines(lines, "compute", "tpus", "tpu-vm", "ssh")[0], "--command")
    assert "git clone --quiet https://x/ssl_jax.git ~/ssl_jax" in install
    assert "checkout --quiet v1" in install


@pytest.mark.parametrize(
    "bad, message",
    [
        ("--workdir=/local/run", "--workdir='/local/run': must be a gs://"),
        ("--data-dir=/data", "--data-dir='/data': must be a gs://"),
        ("--accelerator-type=v4_32", "--accelerator-type='v4_32'"),
        ("--accelerator-type=v9-8", "no default runtime for 'v9'"),
        ("--name=Bad_Name", "--name='Bad_Name'"),
        ("--max-restarts=-1", "--max-restarts=-1"),
        ("--config=/abs/simclr.py", "--config='/abs/simclr.py'"),
    ],
)
def test_tpu_bad_input_is_named(bad, message):
    result = run_script("tpu_vm.py", *TPU_ARGS, bad, "--dry-run")
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_tpu_overrides_must_be_config_keys():
    result = run_script("tpu_vm.py", *TPU_ARGS, "--dry-run", "--", "--lr=3")
    assert result.returncode == 2 and "override '--lr=3'" in result.stderr


# ---------------------------------------------------------------- TPU VM: the restart loop


FAKE_GCLOUD = """\
#!{python}
# Stands in for gcloud: keeps the slice state in a file, logs every call, and answers the
# training ssh from a script of per-worker exit statuses.
import json, os, sys
root = os.environ["FAKE_GCLOUD_DIR"]
argv = sys.argv[1:]
with open(os.path.join(root, "calls.jsonl"), "a") as f:
    f.write(json.dumps(argv) + "\\n")
state_file = os.path.join(root, "state")
verb = argv[3] if argv[:2] == ["compute", "tpus"] else argv[1]
if verb == "describe":
    if not os.path.exists(state_file):
        sys.exit(print("ERROR: NOT_FOUND: node does not exist", file=sys.stderr) or 1)
    print(json.dumps({{"state": open(state_file).read(), "networkEndpoints": [{{}}] * 4}}))
elif verb == "create":
    open(state_file, "w").write("READY")
elif verb == "delete":
    os.remove(state_file)
elif verb == "ssh" and "ssl-jax pretrain" in argv[-1]:
    with open(os.path.join(root, "script.json")) as f:
        script = json.load(f)
    attempt = script.pop(0)
    with open(os.path.join(root, "script.json"), "w") as f:
        json.dump(script, f)
    for worker, status in enumerate(attempt["statuses"]):
        print(f"SSL_JAX_EXIT_STATUS host-{{worker}} {{status}}")
    if "then" in attempt:
        open(state_file, "w").write(attempt["then"])
"""


def run_with_fake_gcloud(tmp_path, attempts, *extra):
    """Runs tpu_vm.py for real with gcloud replaced; returns (result, gcloud calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD.format(python=sys.executable))
    gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "script.json").write_text(json.dumps(attempts))
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_GCLOUD_DIR=str(tmp_path))
    args = [*TPU_ARGS, "--repo-url=https://x/ssl_jax.git", f"--results-dir={tmp_path / 'out'}"]
    result = run_script("tpu_vm.py", *args, *extra, env=env)
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    return result, calls


def verbs(calls):
    """('create' | 'describe' | 'install' | 'train' | 'delete' | 'cp', ...) in call order."""
    out = []
    for argv in calls:
        verb = argv[3] if argv[:2] == ["compute", "tpus"] else argv[1]
        if verb == "ssh":
            verb = "train" if "ssl-jax pretrain" in argv[-1] else "install"
        out.append(verb)
    return out


def train_commands(calls):
    return [argv for argv in calls if "ssl-jax pretrain" in argv[-1]]


def test_tpu_exit_75_reruns_the_same_command_on_the_same_slice(tmp_path):
    result, calls = run_with_fake_gcloud(
        tmp_path, [{"statuses": [75, 75, 75, 75]}, {"statuses": [0, 0, 0, 0]}]
    )
    assert result.returncode == 0, result.stderr
    assert verbs(calls) == [
        "describe", "create", "describe", "install", "train", "describe", "describe", "train", "cp"
    ]  # fmt: skip
    first, second = train_commands(calls)
    assert first == second
    assert (tmp_path / "out").is_dir()


def test_tpu_preempted_slice_is_recreated_and_reinstalled(tmp_path):
    # Two workers vanish without a status and the slice turns PREEMPTED.
    result, calls = run_with_fake_gcloud(
        tmp_path, [{"statuses": [75, 75], "then": "PREEMPTED"}, {"statuses": [0, 0, 0, 0]}]
    )
    assert result.returncode == 0, result.stderr
    after_first_train = verbs(calls)[verbs(calls).index("train") + 1 :]
    assert after_first_train == [
        "describe", "describe", "delete", "create", "describe", "install", "train", "cp"
    ]  # fmt: skip


def test_tpu_real_error_stops_without_rerun(tmp_path):
    result, calls = run_with_fake_gcloud(tmp_path, [{"statuses": [0, 3, 0, 0]}])
    assert result.returncode == 1
    assert "exit status 3" in result.stderr
    assert verbs(calls).count("train") == 1 and "cp" not in verbs(calls)


def test_tpu_gives_up_after_max_restarts(tmp_path):
    result, calls = run_with_fake_gcloud(
        tmp_path, [{"statuses": [75] * 4}, {"statuses": [75] * 4}], "--max-restarts=1"
    )
    assert result.returncode == 1 and "--max-restarts=1" in result.stderr
    assert verbs(calls).count("train") == 2


def test_tpu_real_run_without_gcloud_says_so(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))
    result = run_script("tpu_vm.py", *TPU_ARGS, "--repo-url=https://x/r.git", env=env)
    assert result.returncode == 1
    assert "gcloud not found on PATH" in result.stderr


# ---------------------------------------------------------------- Slurm


def slurm_script(*extra):
    args = slurm.parse_args([*SLURM_ARGS, *extra])
    return slurm.batch_script(args)


def test_slurm_script_one_process_per_gpu_signal_and_requeue():
    script = slurm_script("--grace-seconds=120", "--partition=gpu")
    lines = script.splitlines()
    for directive in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-task=1",
        "#SBATCH --signal=TERM@120",
        "#SBATCH --requeue",
        "#SBATCH --partition=gpu",
    ):
        assert directive in lines
    (srun,) = [line for line in lines if line.startswith("srun ")]
    assert srun.endswith(
        "ssl-jax pretrain --distributed --config=configs/simclr.py:imagenet "
        "--workdir=/shared/runs/simclr --config.input.data_dir=/shared/tensorflow_datasets"
    )
    assert 'if [ "${status}" -eq 75 ]; then' in lines
    assert '    scontrol requeue "${SLURM_JOB_ID}"' in lines


def test_slurm_gres_mode():
    lines = slurm_script("--gres").splitlines()
    assert "#SBATCH --gres=gpu:8" in lines and "#SBATCH --gpus-per-task=1" not in lines


def test_slurm_dry_run_prints_the_script_and_sbatch(tmp_path):
    lines = dry_run_lines("slurm.py", *SLURM_ARGS, f"--log-dir={tmp_path}")
    script_path = os.path.join(str(tmp_path), "ssl_jax.sbatch")
    assert lines[-1] == f"sbatch --parsable {script_path}"
    assert "#SBATCH --ntasks-per-node=8" in lines
    assert not os.path.exists(script_path)  # a dry run writes nothing


def run_batch_script(tmp_path, srun_status, restart_count):
    """Runs the generated batch script with srun and scontrol replaced; returns the calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, status in (("srun", srun_status), ("scontrol", 0)):
        path = bin_dir / tool
        path.write_text(f'#!/bin/sh\necho "{tool} $*" >> {tmp_path}/calls\nexit {status}\n')
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    script = tmp_path / "job.sbatch"
    script.write_text(slurm_script(f"--repo-dir={tmp_path}", "--max-restarts=3"))
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        SLURM_JOB_ID="42",
        SLURM_RESTART_COUNT=str(restart_count),
    )
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    calls = (tmp_path / "calls").read_text().splitlines()
    return result, calls


def test_slurm_batch_script_requeues_itself_after_exit_75(tmp_path):
    result, calls = run_batch_script(tmp_path, srun_status=75, restart_count=0)
    assert result.returncode == 75
    assert calls[0].startswith("srun --kill-on-bad-exit=0 ssl-jax pretrain --distributed")
    assert calls[1:] == ["scontrol requeue 42"]


@pytest.mark.parametrize("srun_status, restart_count", [(0, 0), (3, 0), (75, 3)])
def test_slurm_batch_script_does_not_requeue_otherwise(tmp_path, srun_status, restart_count):
    result, calls = run_batch_script(tmp_path, srun_status, restart_count)
    assert result.returncode == srun_status
    assert [c.split()[0] for c in calls] == ["srun"]


@pytest.mark.parametrize(
    "bad, message",
    [
        ("--nodes=0", "--nodes=0: must be >= 1"),
        ("--gpus-per-node=0", "--gpus-per-node=0"),
        ("--time=1 day", "--time='1 day'"),
        ("--grace-seconds=0", "--grace-seconds=0"),
    ],
)
def test_slurm_bad_input_is_named(bad, message):
    result = run_script("slurm.py", *SLURM_ARGS, bad, "--dry-run")
    assert result.returncode == 2
    assert message in result.stderr


def test_slurm_real_submit_without_sbatch_says_so(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))
    result = run_script("slurm.py", *SLURM_ARGS, f"--log-dir={tmp_path / 'logs'}", env=env)
    assert result.returncode == 1
    assert "sbatch not found on PATH" in result.stderr


def test_scripts_document_a_usage_example():
    for module in (tpu_vm, slurm):
        assert "--dry-run" in module.__doc__ and "python experiments/launch/" in module.__doc__
