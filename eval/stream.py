"""Streaming a verification pack through a backend: decode one batch, embed it and its mirror image, repeat."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from converters.errors import UserError
from converters.images import normalize

from .memory import release_free_memory

if TYPE_CHECKING:
    from converters.binfile import BinPack

    from .backends import Embedder

DEFAULT_BATCH_SIZE = 32


@dataclass
class PackEmbeddings:
    """Raw embeddings of a pack: ``[2P, D]`` float32 of the images and of their mirror images."""

    original: np.ndarray
    flipped: np.ndarray | None
    model_seconds: float  # time inside the backend
    decode_seconds: float  # JPEG decoding and normalisation


def embed_pack(pack: BinPack, embedder: Embedder, batch_size: int = DEFAULT_BATCH_SIZE, flip: bool = True,
               progress: bool = True) -> PackEmbeddings:
    """Embed every image of ``pack`` (and its mirror image) decoding one batch at a time.

    Memory stays bounded by one batch of float images; results do not depend on ``batch_size`` beyond
    float round-off, since the models run in eval mode (BatchNorm uses running statistics).
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise UserError(None, f"--batch-size must be at least 1, not {batch_size}")
    original: np.ndarray | None = None
    flipped: np.ndarray | None = None
    model_s = decode_s = 0.0
    bar = tqdm(total=len(pack), desc=f"{pack.name} [{embedder.name}]", unit="img", disable=not progress,
               leave=False, dynamic_ncols=True)
    with bar:
        t0 = time.perf_counter()
        for start, images in pack.iter_batches(batch_size):
            x = normalize(images)
            x_flip = np.ascontiguousarray(x[..., ::-1]) if flip else None
            t1 = time.perf_counter()
            out = embedder(x)
            out_flip = embedder(x_flip) if flip else None
            t2 = time.perf_counter()
            if out.ndim != 2 or len(out) != len(x):
                raise UserError(None, f"the {embedder.name} model returned shape {list(out.shape)} for a batch "
                                f"of {len(x)} images (expected [{len(x)}, D])")
            if original is None:
                original = np.zeros((len(pack), out.shape[1]), dtype=np.float32)
                flipped = np.zeros_like(original) if flip else None
            original[start:start + len(out)] = out
            if flip:
                flipped[start:start + len(out)] = out_flip
            decode_s += t1 - t0
            model_s += t2 - t1
            bar.update(len(images))
            release_free_memory()
            t0 = time.perf_counter()
    return PackEmbeddings(original, flipped, model_s, decode_s)
