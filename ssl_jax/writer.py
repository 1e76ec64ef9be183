"""Metrics output: live console progress, JSONL log, TensorBoard scalars, report, PNG plots.

Only process 0 of a multi-host job writes (``enabled=jax.process_index() == 0``); on the
other processes every method is a no-op, so callers never branch on the process index.

Files under ``workdir``:

* ``metrics.jsonl`` -- one JSON object per ``write`` call, ``{"step": ..., name: value}``;
  the source of truth for plots and for comparing runs. ``truncate_after`` makes a
  resumed run's log identical to an uninterrupted one. The final evaluation's values
  (``final_*``) appear once: writing them drops earlier ones, so a rerun of a finished or
  killed run's final evaluation leaves one set, as report.json does.
* ``tb/`` -- TensorBoard event files (``tf.summary``). Event files are append-only, so after
  a resume TensorBoard may show the re-run steps twice; ``metrics.jsonl`` does not.
* ``report.txt`` -- the text tables passed to ``report``.
* ``plots/*.png`` -- written by ``plots``: ``summary.png`` and one per series (plots.py).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ssl_jax import console, paths, plots
from ssl_jax.plots import FINAL_PREFIX  # the final evaluation's metrics (final_report)

METRICS_FILE = "metrics.jsonl"
REPORT_FILE = "report.txt"


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All rows of ``<workdir>/metrics.jsonl`` in file order ([] if there is none yet)."""
    path = paths.join(workdir, METRICS_FILE)
    if not paths.exists(path):
        return []
    lines = [line for line in paths.read_text(path).splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            # A job killed mid-write leaves a partial last line; anything earlier is corrupt.
            if i != len(lines) - 1:
                raise
    return rows


def _to_float(value: Any) -> float:
    # numpy / jax scalars and 0-d arrays all support float(); JSON needs plain floats.
    return float(value)


def _format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def format_table(title: str, rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> str:
    """An aligned plain-text table: title, header, rule, rows; columns separated by ' | '."""
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    ncols = max(len(r) for r in cells)
    cells = [r + ("",) * (ncols - len(r)) for r in cells]
    widths = [max(len(r[j]) for r in cells) for j in range(ncols)]
    fmt = lambda r: " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([title, fmt(cells[0]), rule] + [fmt(r) for r in cells[1:]]) + "\n"


class MetricWriter:
    """Writes metrics of one run; a no-op unless ``enabled`` (process 0)."""

    def __init__(
        self,
        workdir: str,
        *,
        enabled: bool = True,
        total_steps: int,
        steps_per_epoch: int,
        images_per_step: int,
        also_to: Sequence[Any] = (),
    ) -> None:
        """``also_to``: further logs (``wandb_log.WandbLog``) with ``log(step, values)``
        and ``close()``, written after metrics.jsonl and TensorBoard."""
        self.workdir = workdir
        self._also_to = list(also_to) if enabled else []
        self.enabled = enabled
        self.total_steps = total_steps
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.images_per_step = images_per_step
        self._tty = sys.stdout.isatty()
        self._line_open = False  # a "\r" progress line is on screen without its newline
        self._last: tuple[int, float] | None = None  # (step, wall time) of the last progress
        self._reports: list[str] = []
        self._tb = None
        if enabled:
            paths.makedirs(workdir)
            self._tb = self._make_tb_writer(paths.join(workdir, "tb"))

    @staticmethod
    def _make_tb_writer(logdir: str) -> Any:
        import tensorflow as tf  # deferred: TF costs seconds to import, and only process 0 needs it

        try:
            # TF is only a summary writer here; it must never claim accelerator memory.
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:
            pass  # devices already initialised by another TF user (e.g. the data pipeline)
        return tf.summary.create_file_writer(logdir)

    @property
    def metrics_path(self) -> str:
        return paths.join(self.workdir, METRICS_FILE)

    # -- logs ---------------------------------------------------------------------------

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Appends ``{"step": step, **metrics}`` to metrics.jsonl and to TensorBoard."""
        if not self.enabled:
            return
        values = {k: _to_float(v) for k, v in metrics.items()}
        if any(k.startswith(FINAL_PREFIX) for k in values):
            self._drop_final_rows()
        paths.append_text(self.metrics_path, json.dumps({"step": int(step), **values}) + "\n")
        if self._tb is None:  # closed
            return
        import tensorflow as tf

        with self._tb.as_default():
            for name, value in values.items():
                tf.summary.scalar(name, value, step=int(step))
        self._tb.flush()
        for log in self._also_to:
            log.log(int(step), values)

    def truncate_after(self, step: int) -> None:
        """Drops JSONL rows with a step beyond ``step`` (the restored checkpoint's step)."""
        if not self.enabled or not paths.exists(self.metrics_path):
            return
        kept = [row for row in read_metrics(self.workdir) if row["step"] <= step]
        # Atomic: a crash leaves the old or the new log.
        paths.write_text(self.metrics_path, "".join(json.dumps(row) + "\n" for row in kept))

    def _drop_final_rows(self) -> None:
        """Removes the ``final_*`` values already logged (a previous final evaluation)."""
        if not paths.exists(self.metrics_path):
            return
        rows = read_metrics(self.workdir)
        kept = []
        for row in rows:
            rest = {k: v for k, v in row.items() if not k.startswith(FINAL_PREFIX)}
            if len(rest) > 1 or len(rest) == len(row):  # more than the step, or untouched
                kept.append(rest)
        if kept != rows:
            paths.write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    # -- console ------------------------------------------------------------------------

    def progress(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Prints step/total, epoch, loss, lr, images/s and ETA (one rewritten line on a TTY)."""
        if not self.enabled:
            return
        now = time.monotonic()
        rate = None  # steps per second since the previous call
        if self._last is not None and step > self._last[0] and now > self._last[1]:
            rate = (step - self._last[0]) / (now - self._last[1])
        self._last = (step, now)
        parts = [
            f"step {step}/{self.total_steps}",
            f"epoch {step / self.steps_per_epoch:.2f}",
        ]
        for name in ("loss", "lr"):
            if name in metrics:
                parts.append(f"{name} {_to_float(metrics[name]):.4g}")
        if rate is not None:
            parts.append(f"{rate * self.images_per_step:.1f} img/s")
            parts.append(f"ETA {_format_duration(max(self.total_steps - step, 0) / rate)}")
        else:
            parts += ["- img/s", "ETA -"]
        line = " | ".join(parts)
        if self._tty:
            # Pad so a shorter line fully covers the previous one.
            sys.stdout.write("\r" + line.ljust(100))
            self._line_open = True
        else:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def _end_line(self) -> None:
        if self._line_open:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self._line_open = False

    @contextlib.contextmanager
    def phase(self, text: str, *, off_the_clock: bool = True):
        """A phase line (``console.phase``) below the progress line. ``off_the_clock``: its
        time is left out of the next progress line's images/s and ETA (an evaluation or a
        restore is not training speed)."""
        self._end_line()
        start = time.monotonic()
        try:
            with console.phase(text, enabled=self.enabled):
                yield
        finally:
            if off_the_clock and self._last is not None:
                self._last = (self._last[0], self._last[1] + time.monotonic() - start)

    def info(self, text: str) -> None:
        """Prints a message (e.g. an eval result) without clobbering the progress line."""
        if self.enabled:
            self._end_line()
            print(text, flush=True)

    # -- final outputs ------------------------------------------------------------------

    def report(self, title: str, rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> str:
        """Prints an aligned table and saves every table of this run to report.txt."""
        table = format_table(title, rows, header)
        if self.enabled:
            self._end_line()
            print(table, flush=True)
            # Rewritten from all tables of this writer: a rerun of the final evaluation
            # replaces the old report instead of appending duplicates to it.
            self._reports.append(table)
            paths.write_text(paths.join(self.workdir, REPORT_FILE), "\n".join(self._reports))
        return table

    def plots(self, embedding_dim: int | None = None) -> list[str]:
        """``plots/summary.png`` first, then one PNG per logged series (``plots.py``);
        ``embedding_dim`` draws collapse_std's healthy level, 1/sqrt(d)."""
        if not self.enabled:
            return []
        rows = read_metrics(self.workdir)
        out_dir = paths.join(self.workdir, "plots")
        paths.makedirs(out_dir)
        summary = plots.plot_summary(rows, out_dir, embedding_dim)
        written = [summary] if summary else []
        for name in plots.plotted_names(rows):
            if plots.series(rows, name) or plots.series(rows, plots.FINAL_PREFIX + name):
                written.append(plots.plot_series(rows, name, out_dir, embedding_dim))
        return written

    def close(self) -> None:
        if not self.enabled:
            return
        self._end_line()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
        for log in self._also_to:
            log.close()
        self._also_to = []

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
