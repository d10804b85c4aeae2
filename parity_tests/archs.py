"""Which registered architectures the parity suite builds, derived from the registry."""

from __future__ import annotations

import os

from architectures import family_of, names, parameter_count, same_weights

# Above this many weights an architecture's model-building parity runs under `make parity-large` (r2060,
# vit_l, vit_h), not in `make test`. Names whose weights are interchangeable share these tests (they differ
# only in training settings, which test_vit.py covers per name).
LARGE_PARAMETERS = 200_000_000


def distinct_archs(large: bool) -> list[str]:
    """The registered names with distinct weights, in registry order, small or large."""
    return [n for n in names() if same_weights(n)[0] == n and (parameter_count(n) > LARGE_PARAMETERS) == large]


ARCHS = distinct_archs(large=False)
LARGE_ARCHS = distinct_archs(large=True)

# `make parity-large` (ARCFACE_PARITY_LARGE=1) also runs what `make test` keeps to the smallest sizes
LARGE_ENABLED = os.environ.get("ARCFACE_PARITY_LARGE") == "1"


def smallest_of_each_family(archs: list[str]) -> tuple[str, ...]:
    """The smallest of ``archs`` in each registry family, in registry order."""
    smallest: dict[str, str] = {}
    for name in archs:
        family = family_of(name)
        if family not in smallest or parameter_count(name) < parameter_count(smallest[family]):
            smallest[family] = name
    return tuple(n for n in archs if n in smallest.values())


# `make test` runs the model-building parity tests (per-layer forward in eval and train mode, ONNX round
# trips) on the smallest size of every family (r18, mbf, vit_t): the other sizes run the same code with more
# blocks or wider layers and are checked by `make parity-large`. r50, the size most checkpoints have, is
# also checked layer by layer in `make test` by test_independent_r50.py and test_onnx2paddle_cli.py.
SUITE_ARCHS = smallest_of_each_family(ARCHS)


def skip_outside_suite(arch: str) -> None:
    """Skip ``arch`` in `make test` unless it is the smallest of its family (run by `make parity-large`)."""
    import pytest

    if arch not in SUITE_ARCHS and not LARGE_ENABLED:
        pytest.skip(f"{arch}: `make test` checks the smallest size of each family "
                    f"({', '.join(SUITE_ARCHS)}); `make parity-large` runs the others")
