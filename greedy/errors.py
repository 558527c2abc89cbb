"""The exceptions a command reports on one line, and how the CLI reports them.

- UsageError: bad input from the user (config, data, checkpoints, paths): exit code 2, before any work where
  possible.
- TrainingDiverged: the loss became NaN or infinite: exit code 3, the last good state kept for a resume.
- PipelineLost: a process of a pipelined run died or stopped answering: exit code 4, the saved state kept.
- WriteFailed: a write failed with an OS error (disk full, file too large, read-only, no permission, I/O error):
  exit code 5, no partial file left (greedy.files), the last complete epoch's state kept for a resume.
- Interrupted: SIGINT (Ctrl-C) or SIGTERM (Slurm's time limit, preemption): exit code 128 + the signal's
  number (130, 143), the last complete epoch's state kept for a resume.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

USAGE_EXIT = 2
DIVERGED_EXIT = 3
PIPELINE_EXIT = 4
WRITE_EXIT = 5
INTERRUPT_EXITS = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal's number, as shells report it


class UsageError(ValueError):
    """Bad input from the user; the CLI prints the message on one line and exits with code 2. A ValueError, so
    that Python callers (greedy.train, the factories) can catch it as the bad value it is."""


class TrainingDiverged(Exception):
    """A non-finite loss stopped training; the CLI prints the message on one line and exits with code 3."""


class PipelineLost(Exception):
    """A peer process of a pipelined run is gone; the CLI prints one line and exits at once with code 4 (the
    process group cannot be shut down cleanly without the peer, so no exit handler runs)."""


_ADVICE = {errno.ENOSPC: "free space", errno.EDQUOT: "free space within your quota",
           errno.EFBIG: "raise the file-size limit (ulimit -f) or free space", errno.EROFS: "make the file system "
           "writable", errno.EACCES: "make it writable for you", errno.EPERM: "make it writable for you",
           errno.EIO: "check the disk"}


WRITE_ERRNOS = frozenset(_ADVICE)  # the OS errors that mean "this write failed", not "this input is wrong"


class WriteFailed(Exception):
    """A write of `path` failed with an OS error; the CLI prints one line and exits with code 5.

    `errno` is the OS error number (None when a library gave only a message), `reason` its text. `retry`, set by
    the command that knows how to continue (train.py: `python train.py --resume RUN`), ends the line."""

    def __init__(self, path, errno_: int | None, reason: str, retry: str | None = None):
        super().__init__(str(path))
        self.path, self.errno, self.reason, self.retry = path, errno_, reason, retry

    def __str__(self) -> str:
        advice = _ADVICE.get(self.errno, "fix the cause")
        return f"could not write {self.path}: {self.reason}; {advice} and {self.retry or 'run the command again'}"


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived (raised by the handler `catch_signals` installs). A BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way swallows it. `where` and `retry` are filled in
    by the command (train.py: the stage and epoch, the resume command)."""

    def __init__(self, signum: int, where: str = "", retry: str = ""):
        super().__init__(signum)
        self.signum, self.where, self.retry = signum, where, retry

    @property
    def exit_code(self) -> int:
        return INTERRUPT_EXITS.get(self.signum, 128 + self.signum)

    def __str__(self) -> str:
        text = f"interrupted{f' in {self.where}' if self.where else ''}"
        return f"{text}; {self.retry}" if self.retry else text


_received: list[int] = []  # the signals caught so far, in order (catch_signals)


def _raise_interrupted(signum, frame) -> None:
    _received.append(signum)
    raise Interrupted(signum)


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def warn(line: str) -> None:
    """Print "warning: LINE" on stderr, once per launch: from the main process only (RANK 0, or no launcher)."""
    if _is_main_process():
        print(f"warning: {line}", file=sys.stderr)


def catch_signals() -> None:
    """SIGINT and SIGTERM raise Interrupted in the main thread; SIGXFSZ (a file-size limit, `ulimit -f`) is
    ignored, so that the write past the limit fails with EFBIG and ends in WriteFailed instead of a core dump."""
    for sig in INTERRUPT_EXITS:
        signal.signal(sig, _raise_interrupted)
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


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
    except WriteFailed as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return WRITE_EXIT
    except KeyboardInterrupt:  # SIGINT before catch_signals, or from code that raises it itself
        err = Interrupted(signal.SIGINT)
        print(one_line(err), file=sys.stderr)
        return err.exit_code
    except Interrupted as err:
        if _is_main_process():  # one line per run; every process exits with the same code
            print(one_line(err), file=sys.stderr)
        return err.exit_code
    except Exception:
        if _received and not _is_main_process():  # a collective broken by a peer that stopped on the signal
            return Interrupted(_received[0]).exit_code
        raise


def run_cli(main: Callable[[Sequence[str] | None], int]) -> NoReturn:
    """The entry point of a script: exit with `exit_code(main)`; a lost pipeline peer exits at once (os._exit), as
    tearing down a process group whose peer is gone can block."""
    catch_signals()
    code = exit_code(main)
    if code == PIPELINE_EXIT:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
