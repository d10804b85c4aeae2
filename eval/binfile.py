"""InsightFace verification packs (``lfw.bin``, ``cfp_fp.bin``, ...): safe reading and decoding.

A pack is a pickle of ``(bins, issame)``: ``2P`` encoded images in pair order (Python-2 ``str``, ``bytes``
or numpy uint8 arrays) and ``P`` booleans. It is read with the project's restricted unpickler, so a
crafted pack cannot run code, and decoded with OpenCV (the decoder MXNet uses) to RGB.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from converters.errors import UserError
from converters.safe_pickle import RefusedPickle, safe_load

IMAGE_SIZE = 112


@dataclass
class BinPack:
    path: Path
    bins: list  # encoded images, each bytes or a uint8 array
    issame: np.ndarray  # [P] bool

    @property
    def pairs(self) -> int:
        return len(self.issame)

    def __len__(self) -> int:
        return len(self.bins)

    def decode(self, index: int) -> np.ndarray:
        """Image ``index`` as ``[112, 112, 3]`` uint8 RGB."""
        return decode_image(self.bins[index], self.path, index)

    def iter_rgb(self, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        for i in range(start, len(self) if stop is None else stop):
            yield self.decode(i)


def read_bin(path: str | Path) -> BinPack:
    """Read a ``.bin`` pack safely; errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(path, "no such file")
    try:
        obj = safe_load(path)
    except RefusedPickle as err:
        raise UserError(path, f"refused: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            MemoryError) as err:
        raise UserError(path, f"not a readable verification pack ({type(err).__name__}: {str(err)[:160]})") from None
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise UserError(path, "expected a pickled (bins, issame) pair")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)) or not isinstance(issame, (list, tuple, np.ndarray)):
        raise UserError(path, "expected (list of images, list of booleans)")
    if len(bins) != 2 * len(issame):
        raise UserError(path, f"{len(bins)} images for {len(issame)} pairs (expected {2 * len(issame)})")
    if not all(isinstance(v, (bool, np.bool_)) or v in (0, 1) for v in issame):
        raise UserError(path, "issame holds values that are not booleans")
    return BinPack(path, list(bins), np.asarray(issame, dtype=bool))


def decode_image(blob, path: str | Path, index: int) -> np.ndarray:
    """Decode one encoded image to ``[112, 112, 3]`` uint8 RGB, resizing as InsightFace does if needed."""
    if isinstance(blob, np.ndarray):
        buf = np.ascontiguousarray(blob.reshape(-1)).view(np.uint8) if blob.dtype == np.uint8 else None
    elif isinstance(blob, (bytes, bytearray)):
        buf = np.frombuffer(blob, dtype=np.uint8)
    elif isinstance(blob, str):  # a Python-2 str read without encoding='bytes'
        buf = np.frombuffer(blob.encode("latin1"), dtype=np.uint8)
    else:
        buf = None
    if buf is None:
        raise UserError(path, f"image {index}: not encoded image bytes ({type(blob).__name__})")
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if bgr is None:
        raise UserError(path, f"image {index}: cannot be decoded (corrupt or not an image)")
    if bgr.shape[1] != IMAGE_SIZE or bgr.shape[0] != IMAGE_SIZE:
        bgr = cv2.resize(bgr, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_CUBIC)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def normalize(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[..., H, W, 3]`` -> float32 ``[..., 3, H, W]`` in [-1, 1]: ``(v/255 - 0.5)/0.5``."""
    x = rgb.astype(np.float32) / 255.0
    x = (x - 0.5) / 0.5
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))
