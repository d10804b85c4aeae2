"""Shared pytest fixtures: the read-only sample data in ../shared/data and framework set-up."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
SHARED_DATA = Path(os.environ.get("ARCFACE_SHARED_DATA", ROOT.parent / "shared" / "data"))

warnings.filterwarnings("ignore", message=".*ccache.*")


def shared_path(name: str) -> Path:
    """A file under ../shared/data: skipped with a reason when absent, a failure when CI is set."""
    path = SHARED_DATA / name
    if not path.exists():
        message = f"shared sample data not found: {path}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set, so this is an error)")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def small_lfw() -> Path:
    """../shared/data/small_lfw.bin: 20 real 112x112 faces in 10 same-identity pairs."""
    return shared_path("small_lfw.bin")


@pytest.fixture(scope="session")
def small_dataset() -> Path:
    """../shared/data/small_dataset: 10 face JPEGs and label.txt (classes 0-9)."""
    return shared_path("small_dataset")


@pytest.fixture(scope="session")
def small_dataset_rec() -> Path:
    """../shared/data/small_dataset_rec: the same 10 images as an MXNet-written InsightFace RecordIO pack."""
    return shared_path("small_dataset_rec")


@pytest.fixture(scope="session", autouse=True)
def _threads():
    """Both frameworks on every core (``import paddle`` alone would leave Paddle on one thread)."""
    from converters.runtime import set_threads

    set_threads(None)
