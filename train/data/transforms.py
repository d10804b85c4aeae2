"""InsightFace's training transform: OpenCV decode -> RGB -> random horizontal flip -> ``(v/255-0.5)/0.5``.

The flip decision comes from a numpy ``Generator`` owned by the transform. The loader re-seeds it in
every DataLoader worker with ``seed + worker_id + rank * num_workers`` (InsightFace's ``worker_init_fn``
value), so the flips are a function of the seed, the rank and the worker (see ``loader.get_dataloader``
for how often workers start).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from converters.errors import UserError
from converters.images import decode_image, normalize

IMAGE_SIZE = (112, 112)  # (height, width)


def decode_rgb(encoded: bytes, path: str | Path, what: str,
               size: tuple[int, int] | None = IMAGE_SIZE) -> np.ndarray:
    """Decode image bytes with OpenCV to ``[H, W, 3]`` uint8 RGB; ``size`` (h, w) is required if given.

    An image whose header declares more pixels than ``converters.images``' limit is refused before decoding.
    """
    bgr = decode_image(encoded, path, what)
    if size is not None and bgr.shape[:2] != tuple(size):
        raise UserError(path, f"{what}: image is {bgr.shape[1]}x{bgr.shape[0]} (w x h), training expects "
                        f"{size[1]}x{size[0]}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def worker_seed(seed: int, rank: int, num_workers: int, worker_id: int) -> int:
    """The seed of one DataLoader worker, as InsightFace's ``worker_init_fn`` computes it."""
    return seed + worker_id + rank * num_workers


class TrainTransform:
    """Encoded image bytes -> ``[3, H, W]`` float32 RGB in [-1, 1], flipped horizontally with ``flip_p``."""

    def __init__(self, flip_p: float = 0.5, seed: int = 0, image_size: tuple[int, int] | None = IMAGE_SIZE):
        self.flip_p = flip_p
        self.image_size = image_size
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        """Restart the flip decisions from ``seed`` (called in each DataLoader worker)."""
        self.rng = np.random.default_rng(seed)

    def __call__(self, encoded: bytes, path: str | Path, what: str) -> np.ndarray:
        rgb = decode_rgb(encoded, path, what, self.image_size)
        if self.rng.random() < self.flip_p:
            rgb = rgb[:, ::-1]
        return normalize(rgb)
