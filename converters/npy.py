"""Reading ``.npy`` arrays from users (precomputed embeddings, pair labels) without trusting the header.

``np.load(allow_pickle=False)`` refuses pickled object arrays, but it allocates whatever shape the header
declares before reading a byte: a 100-byte file declaring ``10**12 x 512`` floats ends in MemoryError (or
the kernel's OOM killer). Here the header is parsed first, the dtype must be a plain number or bool type,
and the declared size must equal the bytes that follow the header exactly; only then is the data read.
"""

from __future__ import annotations

import math
import os
import tokenize
from pathlib import Path

import numpy as np

from .errors import UserError
from .safe_pickle import PLAIN_DTYPES

MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
MAX_HEADER = 10_000  # numpy's own limit for a header it parses without being told otherwise


def read_npy(path: str | Path, what: str = "array", mmap: bool = False) -> np.ndarray:
    """The array in a ``.npy`` file; every problem is a one-line ``UserError`` naming the file.

    With ``mmap`` the checked file is mapped read-only (``np.memmap``) instead of read: for arrays larger
    than one wants in memory at once, such as a whole test set's features read chunk by chunk."""
    path = Path(path)
    if not path.exists():
        raise UserError(path, "no such file")
    if path.is_dir():
        raise UserError(path, f"is a directory, expected a .npy file of {what}")
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(len(MAGIC))
            if head.startswith(ZIP_MAGIC):
                raise UserError(path, f"is an .npz archive; expected a single .npy array of {what} "
                                "(save it with np.save, or extract the array from the archive)")
            if head != MAGIC:
                raise UserError(path, f"not a .npy file (expected {what} saved with np.save)")
            fh.seek(0)
            try:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh, max_header_size=MAX_HEADER)
                elif version in ((2, 0), (3, 0)):
                    reader = np.lib.format.read_array_header_2_0
                    shape, fortran, dtype = reader(fh, max_header_size=MAX_HEADER)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
            except (ValueError, SyntaxError, TypeError, OverflowError, tokenize.TokenError) as err:
                raise UserError(path, f"not a readable .npy file ({str(err).splitlines()[0][:160]})") from None
            if (dtype.names is not None or dtype.subdtype is not None or dtype.hasobject
                    or dtype.str[1:] not in PLAIN_DTYPES):
                raise UserError(path, f"holds {dtype} values; expected plain numbers or booleans for {what}")
            count = math.prod(shape)
            declared = count * dtype.itemsize
            present = size - fh.tell()
            if declared != present:
                raise UserError(path, f"its header declares shape {list(shape)} of {dtype} ({declared} bytes) but "
                                f"the file holds {present} bytes of data (truncated or forged)")
            if mmap and count:
                return np.memmap(path, dtype=dtype, mode="r", offset=fh.tell(), shape=tuple(shape),
                                 order="F" if fortran else "C")
            data = np.fromfile(fh, dtype=dtype, count=count)
    except OSError as err:
        raise UserError(path, f"cannot read: {err.strerror or err}") from None
    if data.size != count:
        raise UserError(path, "truncated while reading")
    return data.reshape(shape, order="F" if fortran else "C")
