"""The device metrics of recent train steps: fetched in batches, bounded in flight, and
checked for divergence.

Fetching every step's metrics at once at the log steps avoids a host sync per step;
`MetricBuffer.add` still waits for the update `MAX_STEPS_IN_FLIGHT` steps back, so a
preemption notice is acted on within those steps. `MetricBuffer.flush` finds the first
diverged step exactly (`divergence`) and raises `DivergenceError`.
"""

from __future__ import annotations

import jax
import numpy as np

from ssl_jax import parallel


class DivergenceError(FloatingPointError):
    """A diverged update: a non-finite loss, gradient or parameter norm, a gradient that
    vanished, or parameters blowing up while finite; the message names the step, the metric,
    the last good checkpoint and what to change."""


# Updates the host may dispatch ahead of the device. Unbounded, a slow step let the loop
# queue steps up to the next log step, and a preemption notice waited for all of them
# before its checkpoint; this bounds the wait to these steps plus the save.
MAX_STEPS_IN_FLIGHT = 2


# A blow-up that stays finite: the parameters' norm this many times its value when this
# process started (init or resume). Weight decay keeps a healthy run's within a few
# times; an lr orders of magnitude too large multiplies it by thousands within steps.
PARAM_NORM_GROWTH_LIMIT = 100.0


def divergence(values: dict[str, float], start_param_norm: float) -> tuple[str, str] | None:
    """``(what is wrong with one step's metrics, what to change)``, or None."""
    for name in ("loss", "grad_norm", "param_norm"):
        if not np.isfinite(values[name]):
            return f"{name} is {values[name]}", "Lower optim.lr or check the input data."
    if values["grad_norm"] == 0.0:
        return (
            "grad_norm is 0: the loss no longer depends on the parameters, as when every "
            "unit saturated or died after too large an update",
            "Lower optim.lr.",
        )
    if start_param_norm and values["param_norm"] > PARAM_NORM_GROWTH_LIMIT * start_param_norm:
        return (
            f"param_norm is {values['param_norm']:.4g}, more than {PARAM_NORM_GROWTH_LIMIT:g}x "
            f"its {start_param_norm:.4g} at the start: the parameters are blowing up",
            "Lower optim.lr (or raise optim.weight_decay).",
        )
    return None


class MetricBuffer:
    """Keeps device metrics of recent steps; fetching them all at once avoids a host sync
    per step, and the first diverged step (`divergence`) is still found exactly. ``add``
    waits until the step ``MAX_STEPS_IN_FLIGHT`` before the new one has run on the device."""

    def __init__(self, start_param_norm: float = 0.0):
        self._pending: list[tuple[int, dict]] = []
        self._start_param_norm = start_param_norm  # 0: no growth check

    def add(self, step: int, metrics: dict) -> None:
        self._pending.append((step, metrics))
        if len(self._pending) > MAX_STEPS_IN_FLIGHT:
            jax.block_until_ready(self._pending[-MAX_STEPS_IN_FLIGHT - 1][1]["loss"])

    def flush(self, last_good_step: int | None) -> dict[str, float]:
        """Checks every pending step and returns the latest step's metrics as floats."""
        latest = {}
        for step, metrics in self._pending:
            values = {k: parallel.host_scalar(v) for k, v in metrics.items()}
            problem = divergence(values, self._start_param_norm)
            if problem:
                where = (
                    f"the last good checkpoint is step {last_good_step}"
                    if last_good_step is not None
                    else "no checkpoint was written yet"
                )
                what, advice = problem
                raise DivergenceError(
                    f"{what} in the update at step {step}; stopping ({where}). {advice}"
                )
            latest = values
        self._pending.clear()
        return latest
