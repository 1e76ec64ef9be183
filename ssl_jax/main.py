"""The `ssl-jax` command line.

    ssl-jax pretrain --config=configs/moco_v2.py:digits --workdir=/tmp/moco_digits
    ssl-jax eval --workdir=/tmp/moco_digits            # kNN + linear probe of the latest checkpoint
    ssl-jax reconstruct --workdir=/tmp/mae_digits      # MAE: reconstruction.png of test images
    ssl-jax pretrain ... --config.optim.lr=0.1         # any config key can be overridden
    ssl-jax pretrain ... --distributed                 # multi-host: jax.distributed.initialize()

The same command runs on a laptop CPU, a GPU box, or every host of a Cloud TPU VM pod.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and preset, e.g. configs/simclr.py:digits.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, report.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first (TPU pods, Slurm)."
)

_NUM_IMAGES = flags.DEFINE_integer("num_images", 8, "reconstruct: rows of the grid.")
_SPLIT = flags.DEFINE_string(
    "split", None, "reconstruct: the images' split (default: input.eval_test_split)."
)

COMMANDS = ("pretrain", "eval", "reconstruct")
_EXIT_BAD_INPUT, _EXIT_DIVERGED = 2, 3


def _config_from_workdir(workdir: str):
    import ml_collections

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist; pass --config or a run's --workdir.")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def _main(argv: list[str]) -> None:
    # orbax and TF log every save at INFO; the progress display is the run's voice.
    logging.set_verbosity(logging.WARNING)
    commands = argv[1:]
    if len(commands) != 1 or commands[0] not in COMMANDS:
        raise app.UsageError(
            f"expected one command out of {', '.join(COMMANDS)}; got {commands or 'none'}."
        )
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required.")
    from ssl_jax import parallel

    parallel.initialize_distributed(_DISTRIBUTED.value)
    from ssl_jax import train

    command, workdir = commands[0], _WORKDIR.value
    config = _CONFIG.value
    try:
        if command == "pretrain":
            if config is None:
                raise app.UsageError("pretrain needs --config, e.g. configs/simclr.py:digits.")
            train.pretrain(config, workdir)
        elif command == "eval":
            config = config or _config_from_workdir(workdir)
            train.evaluate_workdir(config, workdir)
        else:
            config = config or _config_from_workdir(workdir)
            train.reconstruct_workdir(
                config, workdir, num_images=_NUM_IMAGES.value, split=_SPLIT.value
            )
    except train.DivergenceError as e:
        print(f"ssl-jax: training diverged: {e}", file=sys.stderr)
        sys.exit(_EXIT_DIVERGED)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"ssl-jax: {e}", file=sys.stderr)
        sys.exit(_EXIT_BAD_INPUT)


def run() -> None:
    """Console-script entry point."""
    app.run(_main)


if __name__ == "__main__":
    run()
