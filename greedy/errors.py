"""The one exception type for bad user input (config, data, checkpoints), and how the CLI reports it."""

import sys
from collections.abc import Callable
from typing import NoReturn


class UsageError(Exception):
    """Bad input from the user; the CLI prints the message on one line and exits with code 2."""


def run_cli(main: Callable[[], int]) -> NoReturn:
    """Run a command's main(); a UsageError becomes one line on stderr and exit code 2."""
    try:
        code = main()
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        code = 2
    sys.exit(code)
