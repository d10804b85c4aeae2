"""Fixtures of the cross-framework parity suite: demo checkpoints per architecture, cached per session."""

from __future__ import annotations

import functools

import pytest

from parity_tests.archs import ARCHS, SUITE_PARAMETERS, skip_unless_large


@functools.lru_cache(maxsize=1)  # one architecture's arrays at a time (r200 is ~0.5 GB)
def demo_arrays(arch: str):
    from converters.demo import demo_state_dict

    return demo_state_dict(arch, seed=1)


@pytest.fixture(scope="module", params=ARCHS)
def arch(request) -> str:
    return request.param


def build_pair(arch: str, dtype: str = "float32"):
    """(torch arrays, PaddleWeights, torch model, Paddle model) of the calibrated demo ``arch``."""
    from converters.mapping import torch_to_paddle
    from converters.models import paddle_model, torch_model

    arrays = demo_arrays(arch)
    weights = torch_to_paddle(arrays, arch, 512, f"<demo {arch}>")
    return arrays, weights, torch_model(arch, arrays, dtype=dtype), paddle_model(arch, weights, dtype=dtype)


@pytest.fixture(scope="module")
def converted(arch):
    """Models shared by the eval-mode tests of one architecture (they do not change state); the sizes above
    ``SUITE_PARAMETERS`` only under `make parity-large`."""
    skip_unless_large(arch, SUITE_PARAMETERS)
    return build_pair(arch)


@pytest.fixture
def fresh_pair():
    """A factory of new model pairs, for tests that change state (train mode, optimiser steps)."""
    return build_pair
