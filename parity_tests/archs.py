"""Which registered architectures the parity suite builds, derived from the registry."""

from __future__ import annotations

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
