"""Handing freed heap pages back to the operating system between batches and after loading weights."""

from __future__ import annotations

import contextlib
import ctypes
import functools


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    A forward pass frees hundreds of MB of activations that glibc would otherwise keep in its arenas;
    trimming after each batch lowered the steady RSS of r50 + Paddle Inference by about 160 MB.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, looked up once (None where there is no glibc)."""
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL("libc.so.6").malloc_trim
    return None
