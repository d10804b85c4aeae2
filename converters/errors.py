"""The one exception type for problems a user can cause, and how command-line tools report it."""

from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator


class UserError(Exception):
    """A problem with a user's file, argument or configuration: reported as one line, exit code 2."""

    exit_code = 2

    def __init__(self, path: str | Path | None, problem: str | None = None):
        if problem is None:  # UserError(message): how libraries re-raise an exception type (Paddle's loader)
            path, problem = None, str(path)
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)

    def __reduce__(self):  # picklable (multiprocessing) with both parts
        return type(self), (self.path, self.problem)


# Python warnings that libraries print at import or on every call, never about the user's work
NOISY_WARNINGS = (".*ccache.*", ".*OMP_NUM_THREADS.*", "When training, we now always track",
                  ".*TypedStorage is deprecated.*", ".*pkg_resources is deprecated.*")


@contextlib.contextmanager
def reading(path: str | Path | None, what: str) -> Iterator[None]:
    """Turn running out of memory or stack while reading a user's ``path`` into a one-line ``UserError``.

    For parsers whose memory or recursion grows with what the file declares (a deeply nested literal,
    a header declaring huge sizes): the error names the file and says what was being read."""
    try:
        yield
    except MemoryError:
        raise UserError(path, f"{what}: too large or too deeply nested to read (out of memory)") from None
    except RecursionError:
        raise UserError(path, f"{what}: nested too deeply to read") from None


def describe_value(value: Any) -> str:
    """A short description of a value found in a user's file, for an error line: its type and a bounded
    rendering (containers by their size, huge integers by their bit length)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        text = f"of {value.bit_length()} bits"
    elif isinstance(value, (dict, list, tuple)):
        text = f"with {len(value)} entries"
    else:
        text = repr(value)
        text = text if len(text) <= 60 else text[:50] + "..."
    return f"{type(value).__name__} {text}"


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a CLI ``main`` behind the one error boundary of every tool.

    - ``UserError`` (also raised for a failure inside a data-loader worker): ``error: <file>: <problem>``
      on stderr, exit 2;
    - ``MemoryError`` (a user's declared sizes too large for this machine): one line, exit 2;
    - ``KeyboardInterrupt``: ``error: interrupted``, exit 130;
    - anything else is a bug: Python's traceback, exit 1.

    Python warnings raised during the run are held back and printed only when the run succeeds (or
    fails with a bug), so they never surround the one error line; known library noise is dropped.
    """
    for pattern in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    held: list[warnings.WarningMessage] = []
    error: str | None = None
    status: int = 0
    try:
        with warnings.catch_warnings(record=True) as held:
            try:
                status = main() or 0
            except SystemExit as exc:  # argparse --help / errors: keep their code, show the warnings
                status = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
    except UserError as err:
        error, status = str(err), err.exit_code
    except MemoryError as err:
        detail = str(err).split("[Hint")[0].replace("(ResourceExhausted)", "").strip().rstrip(".")
        detail = f" ({detail[:200]})" if detail else ""
        error, status = f"out of memory{detail}: the sizes the input or configuration asks for exceed what " \
            "this machine can hold", 2
    except KeyboardInterrupt:
        error, status = "interrupted", 130
    except BaseException:
        _replay(held)
        raise
    if error is not None:
        print(f"error: {_one_line(error)}", file=sys.stderr, flush=True)
    else:
        _replay(held)
    sys.exit(status)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _replay(held: list[warnings.WarningMessage]) -> None:
    for w in held:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)


def exit_code(main: Callable[[list[str]], int | None], argv: list) -> int:
    """Run a CLI ``main(argv)`` as the shell would (through ``run_cli``) and return its exit code instead of
    exiting: for tests and notebooks. Arguments are passed through ``str``."""
    try:
        run_cli(lambda: main([str(a) for a in argv]))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return 0
