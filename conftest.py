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


# Under pytest-xdist (`make test` runs two workers) the cores are shared out between the workers: each
# worker's share becomes the default thread count of every command run in it or started from it (the
# converters' main(), train.py subprocesses, ...), which would otherwise each take every core.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
if _WORKERS > 1:
    os.environ["ARCFACE_THREADS"] = str(max(1, (os.cpu_count() or 1) // _WORKERS))


@pytest.fixture(scope="session", autouse=True)
def _threads():
    """Both frameworks on this worker's share of the cores, ``ARCFACE_THREADS`` (``import paddle`` alone would
    leave Paddle on one thread)."""
    from converters.runtime import set_threads

    set_threads()


class RunsCommand:
    """Unpickling this runs ``touch marker`` through ``os.system``: the hostile file every loader must refuse."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def hostile(tmp_path):
    """``(payload, marker)``: put ``payload`` in a pickle; ``marker`` exists only if loading ran it.

    The fixture first proves the payload works: plain ``pickle.loads`` of it does create its marker."""
    import pickle

    control = tmp_path / "control-ran"
    pickle.loads(pickle.dumps(RunsCommand(control)))  # noqa: S301 (the positive control)
    assert control.exists(), "the hostile payload does not run even under plain pickle"
    marker = tmp_path / "PWNED"
    return RunsCommand(marker), marker
