"""The exceptions a command reports on one line, and how the CLI reports them.

- UsageError: bad input from the user (config, data, checkpoints, paths): exit code 2, before any work where
  possible.
- TrainingDiverged: the loss became NaN or infinite: exit code 3, the last good state kept for a resume.
- PipelineLost: a process of a pipelined run died or stopped answering: exit code 4, the saved state kept.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

USAGE_EXIT = 2
DIVERGED_EXIT = 3
PIPELINE_EXIT = 4


class UsageError(Exception):
    """Bad input from the user; the CLI prints the message on one line and exits with code 2."""


class TrainingDiverged(Exception):
    """A non-finite loss stopped training; the CLI prints the message on one line and exits with code 3."""


class PipelineLost(Exception):
    """A peer process of a pipelined run is gone; the CLI prints one line and exits at once with code 4 (the
    process group cannot be shut down cleanly without the peer, so no exit handler runs)."""


def one_line(err: BaseException) -> str:
    """The message of `err` on one line.

    An exception raised in a DataLoader worker comes back re-raised with the worker's traceback as its message
    ("Caught UsageError in DataLoader worker process 0. Original Traceback ..."): its last line holds the
    original message after the exception's qualified name.
    """
    text = str(err)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        prefix = f"{type(err).__module__}.{type(err).__name__}: "
        text = last[len(prefix):] if last.startswith(prefix) else last.split(": ", 1)[-1]
    return " ".join(text.split())


def exit_code(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a command's main(argv): a UsageError or TrainingDiverged becomes one line on stderr and its exit code."""
    try:
        return main(argv)
    except UsageError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return USAGE_EXIT
    except TrainingDiverged as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return DIVERGED_EXIT
    except PipelineLost as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return PIPELINE_EXIT


def run_cli(main: Callable[[Sequence[str] | None], int]) -> NoReturn:
    """The entry point of a script: exit with `exit_code(main)`; a lost pipeline peer exits at once (os._exit), as
    tearing down a process group whose peer is gone can block."""
    code = exit_code(main)
    if code == PIPELINE_EXIT:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
