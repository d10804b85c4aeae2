"""Command-line argument parsing shared by every tool: one-line argparse errors and range-checked numbers.

``ArgumentParser`` reports a bad argument as one line, ``error: --threads: must be a positive integer,
got -1``, and exit code 2 (argparse's own ``error`` prints the usage first: two or more lines). The
``type=`` helpers refuse out-of-range numbers before any work starts.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import re
from typing import Callable, Iterator, NoReturn

INT32_MAX = 2**31 - 1  # Paddle's int32 labels and most size arguments
SEED_MAX = 2**32 - 1  # numpy's legacy seeding accepts [0, 2**32)
MAX_THREADS = 1024

_ARGUMENT = re.compile(r"^argument ([^:]+): (.*)$", re.S)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line ``error: <option>: <problem>`` and exit 2.

    Sub-parsers made with ``add_subparsers`` are of this class too (argparse uses the parent's class).
    Inside ``program_name(name)`` a parser is named ``name`` (sub-parsers ``name <sub>``) whatever its
    script calls it."""

    def __init__(self, prog: str | None = None, *args, **kwargs):
        if _program is not None and not (prog or "").startswith(_program):
            prog = _program
        super().__init__(prog, *args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {one_line_message(message)}\n")


_program: str | None = None


@contextlib.contextmanager
def program_name(name: str) -> Iterator[None]:
    """Within the block, a tool's parser is named ``name`` (``arcface-bridge torch2paddle``) instead of the
    script name it passes (``torch2paddle.py``), in its usage and ``--help``: for the dispatcher."""
    global _program
    previous, _program = _program, name
    try:
        yield
    finally:
        _program = previous


def one_line_message(message: str) -> str:
    """argparse's message as ``<option>: <problem>`` on one line."""
    message = " ".join(str(message).split())
    match = _ARGUMENT.match(message)
    if match:
        names, problem = match.groups()
        return f"{names.split('/')[0]}: {problem}"
    for prefix, problem in (("the following arguments are required: ", "required but not given"),
                            ("unrecognized arguments: ", "unrecognized argument")):
        if message.startswith(prefix):
            return f"{message[len(prefix):]}: {problem}"
    return message


def _describe(minimum: int) -> str:
    if minimum == 1:
        return "a positive integer"
    if minimum == 0:
        return "a non-negative integer"
    return f"an integer >= {minimum}"


def int_range(minimum: int, maximum: int = INT32_MAX, name: str | None = None) -> Callable[[str], int]:
    """An argparse ``type=`` accepting integers in ``[minimum, maximum]``."""
    describe = _describe(minimum)

    def parse(text: str) -> int:
        try:
            value = int(str(text).strip(), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {describe}, got {str(text)[:40]!r}") from None
        shown = str(value) if len(str(value)) <= 40 else f"{str(value)[:20]}... ({len(str(value))} digits)"
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {describe}, got {shown}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {shown}")
        return value

    parse.__name__ = name or f"int_range_{minimum}_{maximum}"
    return parse


def float_range(minimum: float, maximum: float, name: str | None = None, open_min: bool = False
                ) -> Callable[[str], float]:
    """An argparse ``type=`` accepting finite floats in ``[minimum, maximum]`` (``(minimum, ...`` if ``open_min``)."""
    describe = f"a number in {'(' if open_min else '['}{minimum:g}, {maximum:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {describe}, got {str(text)[:40]!r}") from None
        low_ok = value > minimum if open_min else value >= minimum
        if not (math.isfinite(value) and low_ok and value <= maximum):
            raise argparse.ArgumentTypeError(f"must be {describe}, got {text}")
        return value

    parse.__name__ = name or "float_range"
    return parse


positive_int = int_range(1, name="positive_int")
non_negative_int = int_range(0, name="non_negative_int")
thread_count = int_range(1, MAX_THREADS, name="thread_count")
random_seed = int_range(0, SEED_MAX, name="random_seed")
fraction = float_range(0.0, 1.0, name="fraction")

