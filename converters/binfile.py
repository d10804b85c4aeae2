"""InsightFace verification packs (``lfw.bin``, ``cfp_fp.bin``, ...): safe reading and decoding.

A pack is a pickle of ``(bins, issame)``: ``2P`` encoded images in pair order (Python-2 ``str`` read as
``bytes``, ``bytes``, or numpy uint8 arrays as InsightFace's ``build_eval_pack.py`` writes them) and
``P`` booleans. It is read with a restricted unpickler that resolves only what numpy arrays need, so a
crafted pack is refused before anything in it runs, and each image is decoded with OpenCV (the decoder
MXNet uses; pixel-identical on the shared sample pack) to RGB, one batch at a time, through
``converters.images``, which refuses an image declaring more pixels than its limit before decoding it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from converters.errors import UserError
from converters.images import decode_image as decode_bgr_image
from converters.safe_pickle import load_user_pickle

IMAGE_SIZE = 112


@dataclass
class BinPack:
    """A verification pack: encoded images in pair order and one ``issame`` flag per pair."""

    path: Path
    bins: list  # 2P encoded images, each bytes or a uint8 array
    issame: np.ndarray  # [P] bool

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def pairs(self) -> int:
        return len(self.issame)

    def __len__(self) -> int:
        return len(self.bins)

    def decode(self, index: int) -> np.ndarray:
        """Image ``index`` as ``[112, 112, 3]`` uint8 RGB."""
        return decode_image(self.bins[index], self.path, index)

    def iter_batches(self, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, images)`` with images ``[B, 112, 112, 3]`` uint8 RGB; only one batch is decoded at a time."""
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            batch = np.empty((stop - start, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
            for j, i in enumerate(range(start, stop)):
                batch[j] = self.decode(i)
            yield start, batch


def _is_flag(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1))


def read_bin(path: str | Path) -> BinPack:
    """Read a ``.bin`` pack safely (nothing in the file runs); errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(path, "no such file" if not path.exists() else "not a file")
    obj = load_user_pickle(path, "verification pack")
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise UserError(path, "not a verification pack: expected a pickled (bins, issame) pair")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)):
        raise UserError(path, f"not a verification pack: bins is a {type(bins).__name__}, expected a list of images")
    if isinstance(issame, np.ndarray):
        if issame.dtype != np.bool_ or issame.ndim != 1:
            raise UserError(path, f"issame is a {issame.dtype} array of shape {list(issame.shape)}, expected booleans")
        issame = issame.tolist()
    if not isinstance(issame, (list, tuple)):
        raise UserError(path, f"not a verification pack: issame is a {type(issame).__name__}, expected booleans")
    if not issame:
        raise UserError(path, "the pack holds no pairs")
    if len(bins) != 2 * len(issame):
        raise UserError(path, f"{len(bins)} images for {len(issame)} pairs (expected {2 * len(issame)})")
    bad = next((i for i, v in enumerate(issame) if not _is_flag(v)), None)
    if bad is not None:
        raise UserError(path, f"issame[{bad}] is a {type(issame[bad]).__name__}, not a boolean")
    for i, blob in enumerate(bins):
        if not isinstance(blob, (bytes, bytearray, str)) and not (
                isinstance(blob, np.ndarray) and blob.dtype == np.uint8):
            kind = f"{blob.dtype} array" if isinstance(blob, np.ndarray) else type(blob).__name__
            raise UserError(path, f"image {i}: a {kind}, expected encoded image bytes")
    return BinPack(path, list(bins), np.asarray([bool(v) for v in issame], dtype=bool))


def _buffer(blob: Any) -> np.ndarray | None:
    if isinstance(blob, np.ndarray):
        return np.ascontiguousarray(blob.reshape(-1)) if blob.dtype == np.uint8 else None
    if isinstance(blob, (bytes, bytearray)):
        return np.frombuffer(blob, dtype=np.uint8)
    if isinstance(blob, str):  # a Python-2 str decoded as latin-1 keeps its bytes
        try:
            return np.frombuffer(blob.encode("latin1"), dtype=np.uint8)
        except UnicodeEncodeError:
            return None
    return None


def decode_image(blob: Any, path: str | Path, index: int) -> np.ndarray:
    """Decode one encoded image to ``[112, 112, 3]`` uint8 RGB, resizing as InsightFace does if needed.

    InsightFace resizes an image whose width is not 112 to a short side of 112 with bicubic
    interpolation; for the square images a pack holds that is a bicubic resize to 112x112. A
    non-square image would not fit InsightFace's ``[3, 112, 112]`` tensor, so it is an error here.
    """
    buf = _buffer(blob)
    if buf is None:
        raise UserError(path, f"image {index}: not encoded image bytes ({type(blob).__name__})")
    # refused before decoding when the header declares too many pixels or no known format
    bgr = decode_bgr_image(buf, path, f"image {index}")
    height, width = bgr.shape[:2]
    if height != width:
        raise UserError(path, f"image {index}: {width}x{height} is not square (InsightFace packs hold "
                        f"{IMAGE_SIZE}x{IMAGE_SIZE} aligned faces)")
    if width != IMAGE_SIZE:
        bgr = cv2.resize(bgr, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_CUBIC)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

