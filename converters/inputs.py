"""Inputs for parity checks: seeded numpy images or real faces from a verification pack.

Inputs always come from numpy, never from either framework's random generator.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np


def seeded_images(n: int = 4, seed: int = 0, size: int = 112) -> np.ndarray:
    """``[n, 3, size, size]`` float32 uniform in [-1, 1] (the range of normalised images)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, size=(n, 3, size, size)).astype(np.float32)


def faces_from_bin(path: str | Path, n: int | None = None) -> np.ndarray:
    """The first ``n`` images of a ``.bin`` pack, normalised: ``[n, 3, 112, 112]`` float32 RGB."""
    from converters.binfile import IMAGE_SIZE, read_bin
    from converters.images import normalize

    pack = read_bin(path)
    count = len(pack) if n is None else min(n, len(pack))
    if count == 0:
        return np.empty((0, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    return normalize(np.stack([pack.decode(i) for i in range(count)]))


def parity_input(spec: str, n: int = 4, seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """``spec`` is ``random`` or a path to a ``.bin`` pack; returns the batch and a description of it."""
    if spec == "random":
        x = seeded_images(n, seed)
        info: dict[str, Any] = {"kind": "seeded uniform [-1, 1]", "seed": seed}
    else:
        x = faces_from_bin(spec, n)
        info = {"kind": "faces from a verification pack", "path": str(spec)}
    info.update(shape=list(x.shape), sha256=hashlib.sha256(x.tobytes()).hexdigest())
    return x, info
