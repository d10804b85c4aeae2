"""Restricted unpickling for files users hand us (``.pdparams``, ``.bin`` verification packs).

``pickle.load`` and ``paddle.load`` execute whatever a pickle asks for: a crafted file runs a shell
command on load. This unpickler resolves only an allow-list of globals needed for numpy arrays and plain
containers, and refuses everything else before anything runs.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

# (module, name) pairs a weights or image pickle legitimately needs
NUMPY_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol-5 arrays
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how protocol-2 pickles spell bytes objects
})


class RefusedPickle(pickle.UnpicklingError):
    """The pickle asked for something outside the allow-list."""


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, allowed: frozenset[tuple[str, str]] = NUMPY_GLOBALS, **kwargs):
        super().__init__(file, **kwargs)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._allowed:
            raise RefusedPickle(f"refused to load {module}.{name} (only numpy arrays and plain containers "
                                "are allowed; the file may be malicious)")
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickle("refused a persistent reference (not a plain weights or data pickle)")


def _reject_object_arrays(obj: Any) -> None:
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, np.ndarray) and item.dtype.hasobject:
            raise RefusedPickle("refused a numpy array of Python objects")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def safe_loads(data: bytes, encoding: str = "ASCII") -> Any:
    """Unpickle bytes with the allow-list; ``encoding='bytes'`` reads Python-2 pickles."""
    obj = RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
    _reject_object_arrays(obj)
    return obj


def safe_load(path: str | Path, allowed: frozenset[tuple[str, str]] = NUMPY_GLOBALS) -> Any:
    """Unpickle a file with the ``allowed`` globals, retrying Python-2 pickles with ``encoding='bytes'``.

    The file is streamed, not read into memory first, so arrays are the only copy of the data.
    """
    with open(path, "rb") as fh:
        try:
            obj = RestrictedUnpickler(fh, allowed).load()
        except UnicodeDecodeError:  # a Python-2 pickle (e.g. an old .bin pack, whose str objects are bytes)
            fh.seek(0)
            obj = RestrictedUnpickler(fh, allowed, encoding="bytes").load()
    _reject_object_arrays(obj)
    return obj


# what unpickling a damaged (truncated, garbled, non-pickle) file raises
READ_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
               MemoryError, RecursionError)


def load_user_pickle(path: str | Path, what: str, allowed: frozenset[tuple[str, str]] = NUMPY_GLOBALS) -> Any:
    """``safe_load`` for a user's file: a refused or unreadable pickle is a one-line ``UserError`` naming the
    file and ``what`` it should have been (e.g. ``".pdparams file"``)."""
    try:
        return safe_load(path, allowed)
    except RefusedPickle as err:
        raise UserError(path, f"refused: {err}") from None
    except READ_ERRORS as err:
        raise UserError(path, f"not a readable {what} ({type(err).__name__}: {str(err)[:160]})") from None
