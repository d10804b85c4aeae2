"""Hypothesis profiles for the fuzz targets, and a count of the examples each target ran.

``make test`` runs every target on the ``fuzz-quick`` profile (a fixed, derandomised set of examples,
a few seconds per target). ``make fuzz`` sets ``FUZZ_SECONDS`` and every target then runs on the
``fuzz-long`` profile, over and over with fresh random examples, until that many seconds have passed.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from tests.fuzz._harness import COUNTS, FINDINGS, fuzz_seconds

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture]

settings.register_profile("fuzz-quick", max_examples=150, deadline=2000, derandomize=True,
                          suppress_health_check=_SLOW_OK, print_blob=True, database=None)
settings.register_profile("fuzz-long", max_examples=2000, deadline=5000, derandomize=False,
                          suppress_health_check=_SLOW_OK, print_blob=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder for the files a target writes (one per test module)."""
    return tmp_path_factory.mktemp("fuzz")


def pytest_terminal_summary(terminalreporter):
    if not COUNTS:
        return
    mode = f"{fuzz_seconds():g} s per target" if fuzz_seconds() else "quick profile"
    terminalreporter.write_sep("-", f"fuzz examples run ({mode})")
    for name, (count, seconds) in sorted(COUNTS.items()):
        terminalreporter.write_line(f"{name:55s} {count:9d} examples in {seconds:7.1f} s")
    for line in FINDINGS:
        terminalreporter.write_line(f"finding: {line}")
