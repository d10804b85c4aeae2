"""Process set-up shared by the command-line tools: quiet framework imports and explicit thread counts."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from typing import Iterator

# the default thread count of every command, when set: e.g. to share a machine between several processes
THREADS_VARIABLE = "ARCFACE_THREADS"


def default_threads() -> int:
    """The CPU threads a command uses when ``--threads`` is not given: ``ARCFACE_THREADS`` when set, else
    every core. (``OMP_NUM_THREADS`` cannot serve: ``import paddle`` sets it to 1 when it is unset.)"""
    value = os.environ.get(THREADS_VARIABLE, "").strip()
    if not value:
        return os.cpu_count() or 1
    if not value.isdigit() or int(value) < 1:
        from .errors import UserError

        raise UserError(None, f"{THREADS_VARIABLE}={value!r}: expected a positive whole number of threads")
    return int(value)


def set_threads(threads: int | None = None, paddle: bool = True, torch: bool = True) -> int:
    """Use ``threads`` CPU threads (default: ``default_threads()``) in the frameworks asked for; returns the
    count.

    ``import paddle`` sets ``OMP_NUM_THREADS=1`` when it is unset, which leaves Paddle single-threaded
    (about 1.7x slower on two cores), so the count is set through both frameworks' APIs after import.
    """
    n = int(threads or default_threads())
    if torch:  # importing torch costs ~2 s and ~200 MB: callers that do not need it say so
        import torch as torch_module

        torch_module.set_num_threads(n)
    if paddle:  # importing Paddle costs ~2 s and ~300 MB: callers that do not need it say so
        quiet_paddle_import()
        import paddle as paddle_module

        paddle_module.base.core.set_num_threads(n)
    return n


def quiet_paddle_import() -> None:
    """Silence the library warnings that are not about the user's work (``errors.NOISY_WARNINGS``: ccache,
    OMP, BatchNorm's "we now always track global mean and variance" on every train-mode call, ...), and, when
    Paddle is not imported yet, its C++ log below errors (``GLOG_minloglevel=2``; a user's own setting wins):
    saving a model for Paddle Inference logs "Paddle static graph(PIR) not support input out tensor" on every
    export."""
    from .errors import NOISY_WARNINGS

    if "paddle" not in sys.modules:
        os.environ.setdefault("GLOG_minloglevel", "2")

    for pattern in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def library_versions() -> dict[str, str]:
    import platform

    import numpy

    versions = {"python": platform.python_version(), "numpy": numpy.__version__}
    for name in ("torch", "paddle", "cv2", "onnxruntime"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "?")
        except ImportError:
            continue
    return versions


def peak_rss_mb() -> float:
    """Peak resident memory of this process image in MiB.

    Linux's ``VmHWM`` belongs to the current program: ``ru_maxrss`` would also count the pages the process
    held before ``exec`` (a child forked from a large parent starts that large), which inflates the
    numbers benchmarks read from freshly started commands.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StdoutHandler(logging.StreamHandler):
    """A log handler that writes to whatever ``sys.stdout`` is when each record is emitted.

    The tools print progress on stdout and keep stderr for the one-line error; resolving the stream
    late lets redirections (and test capture) apply to handlers made earlier."""

    def __init__(self, fmt: str = "%(message)s"):
        super().__init__()
        self.setFormatter(logging.Formatter(fmt))

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


@contextlib.contextmanager
def onednn_flag_off() -> Iterator[None]:
    """``paddle.jit.to_static`` / ``jit.save`` with ``FLAGS_use_mkldnn`` on segfaults: off while tracing
    (a predictor switches oneDNN on in its own config)."""
    import paddle

    flag = "FLAGS_use_mkldnn"
    try:
        on = bool(paddle.get_flags([flag])[flag])
    except (ValueError, KeyError):
        on = False
    if on:
        paddle.set_flags({flag: False})
    try:
        yield
    finally:
        if on:
            paddle.set_flags({flag: True})
