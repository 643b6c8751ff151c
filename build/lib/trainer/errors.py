"""One exception type for bad user input, turned into a one-line error and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn


class UsageError(Exception):
    """A problem the user can fix (bad flag, missing file, foreign checkpoint...)."""


def exit_usage(message: str, prog: str) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_cli(main: Callable[[list[str] | None], int | None], prog: str) -> None:
    """Run a CLI main; UsageError becomes one line on stderr and exit code 2."""
    try:
        code = main(None)
    except UsageError as e:
        exit_usage(str(e), prog)
    raise SystemExit(code or 0)
