"""Which registered architectures the parity suite builds, derived from the registry."""

from __future__ import annotations

import os

from architectures import names, parameter_count, same_weights

# Above this many weights an architecture's model-building parity runs under `make parity-large` (r2060,
# vit_l, vit_h), not in `make test`. Names whose weights are interchangeable share these tests (they differ
# only in training settings, which test_vit.py covers per name).
LARGE_PARAMETERS = 200_000_000


def distinct_archs(large: bool) -> list[str]:
    """The registered names with distinct weights, in registry order, small or large."""
    return [n for n in names() if same_weights(n)[0] == n and (parameter_count(n) > LARGE_PARAMETERS) == large]


ARCHS = distinct_archs(large=False)
LARGE_ARCHS = distinct_archs(large=True)

# `make parity-large` (ARCFACE_PARITY_LARGE=1) also runs what `make test` keeps to the smaller sizes
LARGE_ENABLED = os.environ.get("ARCFACE_PARITY_LARGE") == "1"
# `make test` runs the per-layer forward parity (eval and train mode) of every family on its sizes up to
# this many weights (r18, r34, r50, mbf, mbf_large, vit_t); r100, r200, vit_s and vit_b run the same code
# with more blocks or wider layers and are checked by `make parity-large`.
SUITE_PARAMETERS = 50_000_000


def skip_unless_large(arch: str, limit: int) -> None:
    """Skip ``arch`` in `make test` when it has more than ``limit`` weights (run by `make parity-large`)."""
    import pytest

    if parameter_count(arch) > limit and not LARGE_ENABLED:
        pytest.skip(f"{arch}: above {limit // 1_000_000} M weights, run by `make parity-large`")
