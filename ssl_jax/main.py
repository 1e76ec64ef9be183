"""The `ssl-jax` command line.

    ssl-jax pretrain --config=configs/moco_v2.py:digits --workdir=/tmp/moco_digits
    ssl-jax pretrain --config=moco_v2:digits --workdir=...  # a shipped config, any directory
    ssl-jax eval --workdir=/tmp/moco_digits            # kNN + linear probe of the latest checkpoint
    ssl-jax reconstruct --workdir=/tmp/mae_digits      # MAE: reconstruction.png of test images
    ssl-jax export --workdir=/tmp/moco_digits          # the encoder as one Flax msgpack file
    ssl-jax export --workdir=W --format=torchvision --out=r50.safetensors  # for PyTorch
    ssl-jax import --from=moco_v2_800ep_pretrain.pth.tar --format=moco
        --config=moco_v2:imagenet --workdir=W  # a released checkpoint -> a workdir
    ssl-jax list                                       # methods, backbones, data sets, presets
    ssl-jax config --config=moco_v2:imagenet --devices=64  # what a config implies, no compile
    ssl-jax COMMAND --help                             # a command's purpose, flags, examples
    ssl-jax pretrain ... --config.optim.lr=0.1         # any config key can be overridden
    ssl-jax pretrain ... --distributed                 # multi-host: jax.distributed.initialize()

Exit status: 0 done, 2 bad input, 3 diverged, 74 a checkpoint could not be written (the
last good one is intact), 75 preempted (SIGTERM: a checkpoint was saved at the next step
boundary; the same command resumes from it), 130 Ctrl-C (as SIGTERM; a second Ctrl-C
stops at once).

The same command runs on a laptop CPU, a GPU box, or every host of a Cloud TPU VM pod.
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging
from ml_collections import config_flags

from ssl_jax import cli_help

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "A shipped config and preset by name (simclr:digits; `ssl-jax list` names them all) or "
    "a config file of yours with its preset (my_config.py:big).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, report.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() first; it finds the cluster itself on Cloud TPU VM "
    "pods and under Slurm, elsewhere pass the three flags below.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "--distributed: host:port of process 0 (e.g. 10.0.0.2:1234)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "--distributed: processes in all.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "--distributed: this process's index.")

_DEVICES = flags.DEFINE_integer(
    "devices", None, "config: the device count to plan for (default: this machine's)."
)
_NUM_IMAGES = flags.DEFINE_integer("num_images", 8, "reconstruct: rows of the grid.")
_SPLIT = flags.DEFINE_string(
    "split", None, "reconstruct: the images' split (default: input.eval_test_split)."
)

_OUT = flags.DEFINE_string(
    "out", None, "export: the file to write (default: <workdir>/backbone.msgpack)."
)
_FORMAT = flags.DEFINE_string(
    "format",
    None,
    "import: the release's layout (moco, moco_v3, simsiam, dino, mae, torchvision, timm, "
    "simclr, byol); "
    "export: torchvision or timm for a PyTorch state dict (default: Flax msgpack).",
)
_FROM = flags.DEFINE_string(
    "from",
    None,
    "import: the released checkpoint (.pth, .safetensors; simclr: a SavedModel or TF "
    "checkpoint; byol: .pkl).",
)

COMMANDS = tuple(cli_help.COMMANDS)
_EXIT_BAD_INPUT, _EXIT_DIVERGED, _EXIT_CANNOT_WRITE = 2, 3, 74  # 74: EX_IOERR


def _config_from_workdir(workdir: str):
    import ml_collections

    from ssl_jax.checkpoint import CONFIG_FILE, saved_config

    config = saved_config(workdir)
    if config is None:
        raise FileNotFoundError(
            f"{workdir} has no {CONFIG_FILE}; pass --config or a run's --workdir."
        )
    return ml_collections.ConfigDict(config)


def _quiet_orbax() -> None:
    """orbax's logged errors stay off the console.

    Every orbax failure that matters reaches ssl_jax as an exception, which this command
    reports in one line (a full disk: `CheckpointWriteError`, exit 74); orbax logs each one
    with tracebacks as well, from every writer thread (dozens for one failed save). A full
    disk also leaves tensorstore callbacks on asyncio loops orbax has closed, and their
    "RuntimeError: Event loop is closed" reaches ``sys.unraisablehook``; asyncio, which only
    orbax uses here, logs "exception was never retrieved" for its unfinished writes.
    """

    def keep(record: std_logging.LogRecord) -> bool:
        if "orbax" not in record.pathname:
            return True
        return record.levelno < std_logging.ERROR

    std_logging.getLogger("absl").addFilter(keep)
    # At exit, asyncio reports the same failure once more per unfinished orbax write.
    std_logging.getLogger("asyncio").addFilter(
        lambda record: "exception was never retrieved" not in record.getMessage()
    )
    previous = sys.unraisablehook

    def unraisablehook(unraisable):
        value = unraisable.exc_value
        if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
            previous(unraisable)

    sys.unraisablehook = unraisablehook


def _main(argv: list[str]) -> None:
    # orbax and TF log every save at INFO; the progress display is the run's voice.
    logging.set_verbosity(logging.WARNING)
    _quiet_orbax()
    commands = argv[1:]
    if len(commands) != 1 or commands[0] not in COMMANDS:
        _fail(
            f"expected one command out of {', '.join(COMMANDS)}; got {commands or 'none'} "
            "(e.g. ssl-jax pretrain --config=configs/moco_v2.py:digits --workdir=DIR).",
            _EXIT_BAD_INPUT,
        )
    if commands[0] == "list":
        from ssl_jax import catalog

        try:
            print(catalog.catalog_text(), flush=True)
        except BrokenPipeError:  # `ssl-jax list | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    if commands[0] == "config":
        _dry_run()
        return
    if not _WORKDIR.value:
        _fail(f"{commands[0]} needs --workdir=DIR (the run's directory).", _EXIT_BAD_INPUT)
    if commands[0] in ("pretrain", "import") and _CONFIG.value is None:
        _fail(f"{commands[0]} needs --config, e.g. --config=simclr:digits.", _EXIT_BAD_INPUT)
    if commands[0] == "import" and not (_FROM.value and _FORMAT.value):
        _fail("import needs --from=FILE and --format=NAME (e.g. --format=dino).", _EXIT_BAD_INPUT)
    from ssl_jax import parallel, paths

    problem = paths.workdir_problem(_WORKDIR.value)
    if problem:
        _fail(problem, _EXIT_BAD_INPUT)

    try:
        parallel.initialize_distributed(
            _DISTRIBUTED.value,
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    except ValueError as e:
        _fail(str(e), _EXIT_BAD_INPUT)
    import jax

    from ssl_jax import console

    # The run's first line comes before TensorFlow's import, seconds of silence otherwise.
    talk = commands[0] == "pretrain" and jax.process_index() == 0
    with console.phase("Importing TensorFlow for the input pipeline", enabled=talk):
        from ssl_jax import train
    from ssl_jax.checkpoint import CheckpointWriteError
    from ssl_jax.preemption import Preempted

    command, workdir = commands[0], _WORKDIR.value
    config = _CONFIG.value
    try:
        if command == "pretrain":
            train.pretrain(config, workdir)
        elif command == "eval":
            config = config or _config_from_workdir(workdir)
            train.evaluate_workdir(config, workdir)
        elif command == "export":
            from ssl_jax import export

            if _FORMAT.value and _FORMAT.value != "msgpack":
                print(f"Wrote {export.export_torch(workdir, _FORMAT.value, _OUT.value)}")
            else:
                print(f"Wrote {export.export_backbone(workdir, _OUT.value)}")
        elif command == "import":
            from ssl_jax.weights import importer

            record = importer.import_checkpoint(_FROM.value, _FORMAT.value, config, workdir)
            print(importer.summary(record, workdir))
        else:
            from ssl_jax.evaluate import reconstruct

            config = config or _config_from_workdir(workdir)
            reconstruct.reconstruct_workdir(
                config, workdir, num_images=_NUM_IMAGES.value, split=_SPLIT.value
            )
    except Preempted as e:
        _fail(str(e), e.exit_status)
    except KeyboardInterrupt:  # Ctrl-C outside training (evaluation, export, multi-process)
        _fail(
            f"{command} interrupted (SIGINT); rerunning pretrain resumes from the last "
            "complete checkpoint.",
            130,
        )
    except CheckpointWriteError as e:
        _fail(str(e), _EXIT_CANNOT_WRITE)
    except train.DivergenceError as e:
        _fail(f"training diverged: {e}", _EXIT_DIVERGED)
    except (ValueError, FileNotFoundError, KeyError) as e:
        _fail(str(e), _EXIT_BAD_INPUT)


def _dry_run() -> None:
    """``ssl-jax config``: the resolved config and its implications, nothing compiled."""
    if _CONFIG.value is None:
        _fail("config needs --config, e.g. --config=simclr:digits.", _EXIT_BAD_INPUT)
    import jax

    from ssl_jax import dry_run

    devices = _DEVICES.value or jax.device_count()
    if devices < 1:
        _fail(f"--devices={devices}: a device count must be at least 1.", _EXIT_BAD_INPUT)
    try:
        print(dry_run.describe(_CONFIG.value, devices), flush=True)
    except (ValueError, FileNotFoundError, KeyError) as e:
        _fail(str(e), _EXIT_BAD_INPUT)


def _fail(message: str, status: int) -> None:
    """One line on stderr, then the exit status that says what kind of failure it was."""
    print(f"ssl-jax: {message}", file=sys.stderr)
    sys.exit(status)


def parse_flags(argv: list[str]) -> list[str]:
    """absl ``flags_parser`` for ``ssl-jax``: a bad ``--config`` is one line and exit status 2.

    absl's own parser exits 1 with "FATAL Flags parsing error" for a value of the wrong type,
    prints the config file's traceback for an unknown preset, and lets ml_collections' error
    for a misspelt key escape as a Python traceback. Every other bad input of ``ssl-jax``
    exits 2 with ``ssl-jax: <message>`` (ssl_jax/main.py), so config flags do the same.
    """
    from absl import flags

    try:
        remaining = flags.FLAGS(argv)
        config = flags.FLAGS["config"].value
        if config is not None:
            config.keys()  # a --config file that failed to load raises only when touched
        return remaining
    except flags.Error as e:
        message = _without_traceback(str(e))
    except OSError as e:  # ml_collections could not open or import the --config file
        flag = next((a for a in argv if a.startswith("--config=")), "--config")
        path = flag.partition("=")[2].split(":")[0]
        detail = str(e).strip().splitlines()[-1].rsplit("failure to load: ", 1)[-1]
        reason = "no such file" if not os.path.exists(path) else detail
        if not os.path.exists(path) and "/" not in path and not path.endswith(".py"):
            from ssl_jax.config_files import shipped_names

            reason += f" and no shipped config of that name ({', '.join(shipped_names())})"
        message = f"flag {flag}: cannot load config file {path!r}: {reason}"
    except (AttributeError, KeyError) as e:
        # ml_collections looks each --config.<path> override up in the locked config.
        overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
        if not overrides:
            raise
        message = _unknown_key_message(e, overrides)
    _fail(message, _EXIT_BAD_INPUT)


def _without_traceback(message: str) -> str:
    """``flag --config=x.py:p: Error whilst parsing config file: Traceback ... ValueError: m``
    -> ``flag --config=x.py:p: m``: the user needs the last line, not our stack."""
    if "Traceback (most recent call last)" not in message:
        return message.strip()
    head = message.split(":", 2)
    flag = f"{head[0]}:{head[1]}" if len(head) == 3 else "flag"
    last = [line for line in message.strip().splitlines() if line.strip()][-1]
    return f"{flag}: {re.sub(r'^[A-Za-z_.]*(Error|Exception): ', '', last.strip())}"


def _unknown_key_message(error: BaseException, overrides: list[str]) -> str:
    """Names the override whose key the config lacks, with ml_collections' suggestion."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]  # AttributeError(KeyError("'lrr'\nDid you mean ..."))
    detail = str(error.args[0]) if error.args else str(error)
    first, _, hint = detail.partition("\n")
    key = first.strip("'\"")
    named = [o for o in overrides if key in o[len("--config.") :].split(".")]
    if not named:  # e.g. a path through a leaf: --config.optim.lr.x
        return f"bad --config override ({', '.join(overrides)}): {detail}"
    culprit = named[0]
    path = culprit[len("--config.") :]
    hint = f"; {hint[0].lower()}{hint[1:]}" if hint else ""
    return f"unknown config key {path!r} in {culprit}: the config has no {key!r}{hint}"


def _with_config_paths(argv: list[str]) -> list[str]:
    """``--config=moco_v2:digits`` (a shipped config by name) -> the file's path, in both
    of absl's spellings (``--config=V`` and ``--config V``)."""
    from ssl_jax.config_files import resolve_config_flag

    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + resolve_config_flag(arg[len("--config=") :])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = resolve_config_flag(out[i + 1])
    return out


def run() -> None:
    """Console-script entry point."""
    if cli_help.wants_help(sys.argv):
        print(cli_help.help_text(sys.argv, __doc__, flags.FLAGS), end="")
        sys.exit(0)
    sys.argv = _with_config_paths(sys.argv)
    app.run(_main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
