"""The one exception type for problems a user can cause, and how command-line tools report it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable


class UserError(Exception):
    """A problem with a user's file, argument or configuration: reported as one line, exit code 2."""

    exit_code = 2

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a CLI ``main``; a ``UserError`` becomes ``error: <file>: <problem>`` on stderr and exit 2."""
    try:
        code = main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def exit_code(main: Callable[[list[str]], int | None], argv: list) -> int:
    """Run a CLI ``main(argv)`` as the shell would (through ``run_cli``) and return its exit code instead of
    exiting: for tests and notebooks. Arguments are passed through ``str``."""
    try:
        run_cli(lambda: main([str(a) for a in argv]))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return 0
