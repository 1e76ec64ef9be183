"""Preemption notices: SIGTERM (and Ctrl-C, SIGINT) become "checkpoint at the next step
boundary and stop".

Cloud TPU VMs, Slurm (``--signal``) and Kubernetes announce an eviction with SIGTERM a
little before they kill the job. Every host must checkpoint the same step, so:

* in a multi-process job, JAX's preemption service (started by
  ``jax.distributed.initialize``) catches SIGTERM on any host, agrees on the first step
  every host can still reach, and ``multihost_utils.reached_preemption_sync_point`` turns
  true there on all hosts at once;
* in a single process, a Python handler of SIGTERM and SIGINT sets a flag that the loop
  reads after the step in flight.

The same notice also stops an evaluation between two of its batches (the kNN monitor, the
final report, the linear probe between epochs): `PreemptionWatcher.poll`, which the
evaluator calls there, raises `EvalInterrupted`. So the time from the notice to a saved
checkpoint is at most the steps in flight (or one evaluation batch) plus one save.

The loop then saves, waits for the write, and raises `Preempted`; the command line exits
with `EXIT_PREEMPTED` after SIGTERM and 130 (the shell's code for Ctrl-C) after SIGINT,
and rerunning the same command resumes from that checkpoint. A second Ctrl-C stops at
once (KeyboardInterrupt): a checkpoint torn by it is never read, the previous complete one
is. In a multi-process job SIGINT keeps Python's default: JAX's preemption service agrees
on a step for SIGTERM only.
"""

from __future__ import annotations

import signal
import threading

import jax

# EX_TEMPFAIL from sysexits.h: "temporary failure, the user is invited to retry".
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
_HANDLED = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """The run saved a checkpoint at ``step`` after a preemption notice and stopped;
    ``exit_status`` is the command line's (75 after SIGTERM, 130 after SIGINT)."""

    def __init__(self, step: int, directory: str, signum: int = signal.SIGTERM):
        name = signal.Signals(signum).name
        super().__init__(
            f"preempted ({name}): saved the checkpoint at step {step} in {directory}; "
            "rerun the same command to resume from it."
        )
        self.step = step
        self.exit_status = EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_PREEMPTED


class EvalInterrupted(Exception):
    """A preemption notice arrived during an evaluation; raised between two batches."""


class PreemptionWatcher:
    """``reached()``: whether the loop should checkpoint now and stop.

    Call it at the same points on every process (after each step, between evaluation
    batches): in a multi-process job each call is one point of JAX's preemption sync
    protocol, numbered by a counter that every process advances alike. A context manager:
    the previous SIGTERM handler is restored on exit, so a notebook or test that trains
    twice is unaffected.
    """

    def __init__(self) -> None:
        self._multi_process = jax.process_count() > 1
        self._signalled = threading.Event()
        self._previous: dict[int, object] = {}
        self.signum: int = signal.SIGTERM  # the notice received (SIGTERM in multi-process)
        self._calls = 0  # the sync point's number: consecutive, the same on every process

    def __enter__(self) -> PreemptionWatcher:
        # Python handlers can only be installed from the main thread; elsewhere (a
        # notebook's worker thread) the run simply gets no preemption handling.
        if not self._multi_process and threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_signal) for s in _HANDLED}
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _on_signal(self, signum, frame) -> None:
        if self._signalled.is_set():
            if signum == signal.SIGINT:  # Ctrl-C twice: the user will not wait
                raise KeyboardInterrupt
            return
        self.signum = signum
        self._signalled.set()

    def reached(self) -> bool:
        if self._multi_process:
            from jax.experimental import multihost_utils

            self._calls += 1
            try:
                return multihost_utils.reached_preemption_sync_point(self._calls)
            except RuntimeError:  # the preemption service is disabled by jax config
                return False
        return self._signalled.is_set()

    def poll(self) -> None:
        """For an evaluation's loop: raises `EvalInterrupted` once a notice has come."""
        if self.reached():
            raise EvalInterrupted
