"""What a run says while it works: one line per phase with its duration, and a progress
bar for feature extraction on a terminal.

Only process 0 talks (``enabled``). On a terminal a phase is one line, completed with its
duration when it ends (``Compiling the train step... 12.3 s``); in a log file it is a
start line and an end line, so a phase that hangs is visible as the last line.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator


def count(n: int, noun: str) -> str:
    """``1 device``, ``8 devices``, ``2 processes``."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}{'es' if noun.endswith('s') else 's'}"


@contextlib.contextmanager
def phase(text: str, *, enabled: bool = True) -> Iterator[None]:
    """Announces ``text`` now and its duration when the block ends (or fails)."""
    tty = sys.stdout.isatty()
    start = time.monotonic()
    if enabled:
        print(f"{text}...", end="" if tty else "\n", flush=True)
    try:
        yield
    finally:
        if enabled:
            took = f"{time.monotonic() - start:.1f} s"
            print(f" {took}" if tty else f"{text}: {took}", flush=True)


def progress_bar(items: Iterable, *, total: int, desc: str, enabled: bool = True) -> Iterable:
    """``items`` with a tqdm bar on a terminal (process 0); unchanged otherwise, where the
    phase lines say how long the whole took."""
    if not (enabled and sys.stdout.isatty()):
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit="batch", leave=False, file=sys.stdout)
