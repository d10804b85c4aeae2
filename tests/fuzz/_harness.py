"""What every fuzz target shares: the profile, the time budget, the hang guard and the property.

The property of a target: the code under test returns a valid object or raises the project's user
error (``converters.errors.UserError`` or the module's documented error type). Any other exception, an
example running past the per-example deadline (hypothesis) or past the ``signal.alarm`` hang guard
(which interrupts pure-Python loops), or a crash of the interpreter is a failure.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

from hypothesis import settings
from hypothesis import strategies as st

from converters.errors import UserError

COUNTS: dict[str, list] = {}  # target name -> [examples run, seconds]
FINDINGS: list[str] = []
HANG_SECONDS = 10  # no single example of any target may take this long


def fuzz_seconds() -> float:
    """``FUZZ_SECONDS`` (``make fuzz``): how long each target runs; 0 for the quick profile."""
    text = os.environ.get("FUZZ_SECONDS", "").strip()
    return float(text) if text else 0.0


def profile() -> settings:
    return settings.get_profile("fuzz-long" if fuzz_seconds() else "fuzz-quick")


class Hang(BaseException):
    """An example ran longer than the hang guard allows (not an ``Exception``, so no ``except Exception``
    in the code under test can turn it into a user error)."""


@contextlib.contextmanager
def hang_guard(seconds: int = HANG_SECONDS):
    """Interrupt the block with ``Hang`` after ``seconds`` (main thread only; a no-op elsewhere)."""
    def fire(signum, frame):
        raise Hang(f"an example ran longer than {seconds} s (a hang?)")

    try:
        previous = signal.signal(signal.SIGALRM, fire)
    except ValueError:  # not the main thread
        yield
        return
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def target(test: Callable) -> Callable:
    """Wrap a ``@given`` test: once with the profile's examples, or (``make fuzz``) again and again with
    fresh random examples until ``FUZZ_SECONDS`` have passed. Each example runs under the hang guard and
    is counted per target."""
    name = test.__name__
    inner = test.hypothesis.inner_test  # hypothesis' documented hook for wrapping each example

    @functools.wraps(inner)
    def example(*args, **kwargs):
        COUNTS.setdefault(name, [0, 0.0])[0] += 1
        try:
            with hang_guard():
                return inner(*args, **kwargs)
        except Hang:  # hypothesis does not shrink or print a BaseException's example: keep it here
            saved = Path(".hypothesis") / "hangs" / f"{name}-{len(FINDINGS)}.repr"
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(repr((args, kwargs)))
            FINDINGS.append(f"{name}: hang, example saved in {saved}")
            raise

    test.hypothesis.inner_test = example

    @functools.wraps(test)
    def run(*args, **kwargs):
        start = time.monotonic()
        stop = start + fuzz_seconds()
        try:
            while True:
                test(*args, **kwargs)
                if time.monotonic() >= stop:
                    break
        finally:
            COUNTS.setdefault(name, [0, 0.0])[1] += time.monotonic() - start

    return run


# ---------------------------------------------------------------------------------------------------
# strategies

INTERESTING = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
               0xFFFFFFFF, 2 ** 63 - 1, 2 ** 64 - 1]


@st.composite
def mutated(draw, seeds: list[bytes], max_ops: int = 6) -> bytes:
    """One of ``seeds`` with up to ``max_ops`` mutations: byte flips, interesting integers written at an
    offset, insertions, deletions, duplicated ranges and truncation."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, max_ops))):
        n = len(data)
        pos = draw(st.integers(0, max(n - 1, 0)))
        op = draw(st.sampled_from(["flip", "set", "int", "insert", "delete", "dup", "truncate"]))
        if op == "flip" and n:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and n:
            data[pos] = draw(st.integers(0, 255))
        elif op == "int" and n:
            width = draw(st.sampled_from([1, 2, 4, 8]))
            value = draw(st.sampled_from(INTERESTING)) % (1 << (8 * width))
            data[pos:pos + width] = value.to_bytes(width, draw(st.sampled_from(["little", "big"])))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and n:
            del data[pos:pos + draw(st.integers(1, 64))]
        elif op == "dup" and n:
            chunk = data[pos:pos + draw(st.integers(1, 256))]
            where = draw(st.integers(0, n))
            data[where:where] = chunk
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


def seeded_or_random(seeds: list[bytes], max_random: int = 512):
    """Mostly mutations of the seeds, sometimes random bytes (with a valid prefix of a seed)."""
    prefixed = st.tuples(st.sampled_from(seeds), st.integers(0, 64), st.binary(max_size=max_random)).map(
        lambda t: t[0][:t[1]] + t[2])
    return st.one_of(mutated(seeds), mutated(seeds), prefixed, st.binary(max_size=max_random))


def read_or_user_error(path: Path, data: bytes, read: Callable[[Path], Any], names_file: bool = True) -> Any:
    """The property every file reader shares: write ``data`` to ``path`` and ``read`` it. Returns what it
    read, or None when it raised the project's one-line ``UserError`` (naming ``path`` if ``names_file``);
    any other exception propagates and fails the target."""
    path.write_bytes(data)
    try:
        return read(path)
    except UserError as err:
        assert "\n" not in str(err), str(err)
        assert not names_file or str(path) in str(err), str(err)
        return None
