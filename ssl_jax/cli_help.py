"""What `ssl-jax --help` and `ssl-jax COMMAND --help` print.

absl's own ``--help`` shows only "USAGE: ssl-jax [flags]" for a console script (it reads
the docstring of ``__main__``, which is pip's generated wrapper), so ``ssl-jax`` answers
``--help`` / ``-h`` itself: the overview is ``ssl_jax/main.py``'s docstring, each command
lists the flags it reads with their absl help text (one source for both) and an example.
``--helpfull`` stays absl's: every flag of every library.
"""

from __future__ import annotations

import dataclasses
import textwrap

HELP_FLAGS = ("--help", "-h", "--helpshort", "-?")


@dataclasses.dataclass(frozen=True)
class Command:
    summary: str  # its line in the overview
    purpose: str
    flags: tuple[str, ...]  # absl flag names, required ones first
    required: tuple[str, ...]
    examples: tuple[str, ...]
    overrides: bool = True  # reads --config.KEY=VALUE


_DISTRIBUTED = ("distributed", "coordinator_address", "num_processes", "process_id")

COMMANDS: dict[str, Command] = {
    "pretrain": Command(
        "pretrain a method (resumes from the workdir), then evaluate it",
        "Self-supervised pretraining of one method; resumes from the workdir's latest "
        "checkpoint, then evaluates (kNN and linear probe against a random-init encoder) "
        "and writes report.json and plots/.",
        ("config", "workdir", *_DISTRIBUTED),
        ("config", "workdir"),
        (
            "ssl-jax pretrain --config=moco_v2:digits --workdir=/tmp/moco_digits",
            "ssl-jax pretrain --config=simclr:cifar10 --workdir=W --config.optim.lr=0.5",
        ),
    ),
    "config": Command(
        "print the resolved config and what it implies; compiles nothing",
        "Prints the resolved config and what it implies (steps per epoch, total steps, "
        "peak lr after scaling, per-device batch, the memory of the state, queues and "
        "banks) without compiling anything.",
        ("config", "devices"),
        ("config",),
        (
            "ssl-jax config --config=moco_v2:imagenet",
            "ssl-jax config --config=dino:imagenet --devices=64 "
            "--config.input.global_batch_size=1024",
        ),
    ),
    "eval": Command(
        "kNN and linear probe of a run's latest checkpoint",
        "kNN and linear probe of a run's latest checkpoint (a running run is left "
        "undisturbed); writes eval_step<N>.json.",
        ("workdir", "config"),
        ("workdir",),
        ("ssl-jax eval --workdir=/tmp/moco_digits",),
    ),
    "reconstruct": Command(
        "MAE: a figure of masked test images and their reconstructions",
        "MAE: reconstruction.png of test images (original, masked, reconstruction).",
        ("workdir", "num_images", "split", "config"),
        ("workdir",),
        ("ssl-jax reconstruct --workdir=/tmp/mae_digits --num_images=4",),
    ),
    "export": Command(
        "write the encoder: Flax msgpack or a PyTorch state dict",
        "Writes a run's evaluated encoder: Flax msgpack, or a PyTorch state dict "
        "(torchvision ResNets, timm ViTs) as .safetensors.",
        ("workdir", "format", "out"),
        ("workdir",),
        (
            "ssl-jax export --workdir=/tmp/moco_digits",
            "ssl-jax export --workdir=W --format=torchvision --out=r50.safetensors",
        ),
        overrides=False,
    ),
    "import": Command(
        "read an official released checkpoint into a workdir",
        "Reads a released checkpoint (the official MoCo, SimSiam, DINO, MAE, SimCLR, "
        "BYOL files, or torchvision / timm weights) into a new workdir that eval, export "
        "and pretrain read like a run of their own.",
        ("from", "format", "config", "workdir"),
        ("from", "format", "config", "workdir"),
        (
            "ssl-jax import --from=moco_v2_800ep_pretrain.pth.tar --format=moco "
            "--config=moco_v2:imagenet --workdir=W",
        ),
    ),
    "list": Command(
        "methods, backbones, data sets, config presets",
        "Methods, backbones, data sets and every shipped config preset.",
        (),
        (),
        ("ssl-jax list",),
        overrides=False,
    ),
}


def wants_help(argv: list[str]) -> bool:
    return any(a in HELP_FLAGS for a in argv[1:])


def help_text(argv: list[str], overview: str, flag_values) -> str:
    """The overview for ``ssl-jax --help``, a command's page for ``ssl-jax CMD --help``."""
    words = [a for a in argv[1:] if not a.startswith("-")]
    if not words or words[0] not in COMMANDS:
        listed = "\n".join(f"  {n:<12}{c.summary}" for n, c in COMMANDS.items())
        return f"{overview.strip()}\n\nCommands (ssl-jax COMMAND --help for its flags):\n{listed}\n"
    name, command = words[0], COMMANDS[words[0]]
    lines = [*textwrap.wrap(f"ssl-jax {name}: {command.purpose}", 90), ""]
    lines.append("Flags:" if command.flags else "No flags.")
    for flag in command.flags:
        need = " (required)" if flag in command.required else ""
        lines.append(f"  --{flag}{need}")
        lines += textwrap.wrap(
            flag_values[flag].help, 88, initial_indent=" " * 6, subsequent_indent=" " * 6
        )
    if command.overrides:
        lines += [
            "  --config.KEY=VALUE",
            "      Overrides one key of the config, e.g. --config.optim.lr=0.1 "
            "(ssl-jax config prints every key).",
        ]
    lines += ["", "Examples:", *(f"  {e}" for e in command.examples)]
    return "\n".join(lines) + "\n"
