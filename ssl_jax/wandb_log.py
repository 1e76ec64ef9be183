"""Weights & Biases as an optional second log (``--config.log.wandb=<project>``).

metrics.jsonl stays the source of truth and TensorBoard stays on; W&B gets the same rows
(from process 0 only, as the other logs). ``wandb`` is an extra (``pip install
'ssl_jax[wandb]'``), imported only when a run asks for it.

- One W&B run per workdir: its id is written to ``<workdir>/wandb_run_id`` at the first
  start and reused on resume (``resume="allow"``), so a preempted job continues its run.
- Every row carries ``train_step``, W&B's x-axis for all metrics here (``define_metric``):
  W&B's own step only increases, so the steps a resumed run redoes after its checkpoint
  appear twice, as in TensorBoard (metrics.jsonl is truncated; W&B cannot be).
- The final evaluation's ``final_*`` values also go to the run's summary.
- ``log.wandb_mode``: ``online``, ``offline`` (files under ``<workdir>/wandb``, ``wandb
  sync`` later; what the tests use) or ``""`` for W&B's own default (``WANDB_MODE``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
from collections.abc import Mapping

from ssl_jax import paths

RUN_ID_FILE = "wandb_run_id"
STEP_KEY = "train_step"
MODES = ("", "online", "offline", "disabled")


def check(log_cfg) -> None:
    """Fails in one line, before anything is written, on a mode W&B lacks or a missing
    ``wandb`` package (``planning.plan`` calls it)."""
    if not log_cfg.wandb:
        return
    if log_cfg.wandb_mode not in MODES:
        raise ValueError(
            f"log.wandb_mode={log_cfg.wandb_mode!r}; valid: {', '.join(map(repr, MODES))}"
        )
    if importlib.util.find_spec("wandb") is None:
        raise ValueError(
            f"log.wandb={log_cfg.wandb!r} needs the wandb package: pip install "
            "'ssl_jax[wandb]' (or log.wandb='' to log without it)"
        )


class WandbLog:
    """One workdir's W&B run (``check`` has passed)."""

    def __init__(self, log_cfg, workdir: str, config) -> None:
        import wandb

        local = not paths.is_remote(workdir)  # W&B's files are local; gs:// gets ./wandb
        self.run = wandb.init(
            project=log_cfg.wandb,
            entity=log_cfg.wandb_entity or None,
            mode=log_cfg.wandb_mode or None,
            id=run_id(workdir),
            resume="allow",
            name=os.path.basename(str(paths.absolute(workdir)).rstrip("/")),
            dir=str(workdir) if local else None,
            config=json.loads(config.to_json_best_effort()),  # the run's config.json
        )
        self.run.define_metric(STEP_KEY)
        self.run.define_metric("*", step_metric=STEP_KEY)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log({STEP_KEY: step, **values})
        final = {k: v for k, v in values.items() if k.startswith("final_")}
        if final:
            self.run.summary.update(final)

    def close(self) -> None:
        self.run.finish()


def run_id(workdir: str) -> str:
    """The workdir's W&B run id, made at the first start (``wandb_run_id``)."""
    path = paths.join(workdir, RUN_ID_FILE)
    if paths.exists(path):
        return paths.read_text(path).strip()
    new = secrets.token_hex(4)
    paths.write_text(path, new + "\n")
    return new
