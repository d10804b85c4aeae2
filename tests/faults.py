"""Fault injection helpers for tests: a real full disk (a tiny tmpfs) or a real read-only folder (a read-only
bind mount) when this process may mount (root on Linux), and errno injection otherwise."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path
from typing import Iterator


def _mount(*args: str) -> bool:
    if os.geteuid() != 0:
        return False
    try:
        return subprocess.run(["mount", *args], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=20)


@contextlib.contextmanager
def tmpfs(path: Path, size_kib: int) -> Iterator[bool]:
    """A ``size_kib`` KiB tmpfs at ``path`` (created); yields whether it is really mounted."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = _mount("-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path))
    try:
        yield mounted
    finally:
        if mounted:
            _umount(path)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[bool]:
    """``path`` (an existing folder) bind-mounted read-only on itself; yields whether that worked."""
    mounted = _mount("--bind", "-o", "ro", str(path), str(path))
    if mounted and os.access(path, os.W_OK):  # an old mount(8) may ignore ro on the first bind
        mounted = _mount("-o", "remount,bind,ro", str(path))
    try:
        yield mounted
    finally:
        if mounted:
            _umount(path)


def raiser(code: int, filename: str | None = None):
    """A function raising ``OSError(code)`` as a failed write does (``filename`` None, like ``write``)."""

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), *([filename] if filename else []))

    return fail


ENOSPC = errno.ENOSPC
