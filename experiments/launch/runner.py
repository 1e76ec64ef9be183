"""Runs shell commands for the launch scripts, or with --dry-run only prints them.

A dry run prints every command shlex-quoted, one per line, so it can be pasted into a shell;
lines starting with `#` say when or how often a command would run.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence


class LaunchError(RuntimeError):
    """A launch step failed; the message says which and what to do."""


class Runner:
    """Executes (or, when `dry_run`, prints) commands; `out` is where the printing goes."""

    def __init__(self, dry_run: bool, out=None):
        self.dry_run = dry_run
        self.out = out if out is not None else sys.stdout

    def note(self, text: str) -> None:
        """A comment line: in a dry run it explains the plan, in a real run it shows progress."""
        print(f"# {text}", file=self.out, flush=True)

    def show(self, argv: Sequence[str]) -> None:
        print(shlex.join(argv), file=self.out, flush=True)

    def require(self, *tools: str) -> None:
        """Fails before anything runs if a tool a real run needs is not on PATH."""
        if self.dry_run:
            return
        missing = [tool for tool in tools if shutil.which(tool) is None]
        if missing:
            raise LaunchError(
                f"{', '.join(missing)} not found on PATH; install it (or run with --dry-run "
                "to print the commands without running them)."
            )

    def run(self, argv: Sequence[str], what: str) -> None:
        """Runs `argv` to completion; a non-zero status raises naming `what` failed."""
        self.show(argv)
        if self.dry_run:
            return
        status = subprocess.run(list(argv), check=False).returncode
        if status != 0:
            raise LaunchError(f"{what} failed (exit status {status}): {shlex.join(argv)}")

    def capture(self, argv: Sequence[str]) -> subprocess.CompletedProcess:
        """Runs a query and returns its output; never in a dry run (the caller plans for that)."""
        if self.dry_run:
            raise LaunchError("capture() called in a dry run")
        return subprocess.run(list(argv), check=False, capture_output=True, text=True)

    def stream(self, argv: Sequence[str], on_line: Callable[[str], None]) -> int:
        """Runs `argv`, echoing its merged stdout/stderr line by line to `on_line`."""
        self.show(argv)
        if self.dry_run:
            return 0
        with subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        ) as proc:
            for line in proc.stdout:
                print(line, end="", file=self.out, flush=True)
                on_line(line)
        return proc.returncode


def main(
    parse_args: Callable[[list[str]], argparse.Namespace],
    launch: Callable[[argparse.Namespace, Runner], None],
    argv: list[str] | None = None,
) -> int:
    """A launch script's entry point: parse, run (or print with --dry-run), report a
    failed step as one line with exit status 1."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        launch(args, Runner(dry_run=args.dry_run))
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
