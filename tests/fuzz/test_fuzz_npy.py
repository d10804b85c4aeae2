"""Fuzz the ``.npy`` embeddings reader ``converters.npy.read_npy`` with mutated ``np.save`` files.

Property: a plain numeric or bool array whose size matches the file, or a one-line ``UserError``.
"""

from __future__ import annotations

import io

import numpy as np
from hypothesis import example, given

from converters.npy import read_npy
from tests.fuzz._harness import profile, read_or_user_error, seeded_or_random, target


def _npy(array, version=None) -> bytes:
    buf = io.BytesIO()
    if version is None:
        np.save(buf, array)
    else:
        np.lib.format.write_array(buf, array, version=version)
    return buf.getvalue()


SEEDS = [_npy(np.arange(12, dtype=np.float32).reshape(3, 4)), _npy(np.zeros((2, 512), np.float16)),
         _npy(np.array([True, False])), _npy(np.arange(6, dtype=">i8"), (2, 0)),
         _npy(np.asfortranarray(np.ones((3, 2))), (3, 0)), _npy(np.float64(1.5))]


@target
@profile()
@given(data=seeded_or_random(SEEDS, 256))
@example(data=b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 512), }"
         + b" " * 40 + b"\n")
@example(data=b"\x93NUMPY\x01\x00\x10\x00{'descr': '|O',}\n")
def test_fuzz_read_npy(workdir, data):
    array = read_or_user_error(workdir / "embeddings.npy", data, lambda path: read_npy(path, "embeddings"))
    if array is None:
        return
    assert isinstance(array, np.ndarray)
    assert array.dtype.names is None and not array.dtype.hasobject and array.dtype.kind in "biufc"
    assert array.nbytes <= len(data)
    array.tobytes()  # every byte readable
