"""IJB image features: decode and align in worker processes, embed each face with its mirror, keep only features.

The loose crops are read, decoded (``converters.images``: header checked before decoding) and aligned onto
the ArcFace template (``eval.align``) by a pool of worker processes, a bounded number of chunks ahead of the
model, so decoding runs beside the forward passes. The main process embeds each aligned face and its
horizontal mirror in one batch and turns the two raw outputs into the image's feature at once
(``ijb_protocol.image_features``: flip sum, norm and detector-score handling of the chosen variant). Only
the ``[N, D]`` float32 image features stay in memory, plus the chunks in flight. Given several embedders
(a reduced-precision model and its fp32 reference), every image is still decoded and aligned once and each
batch embedded by all of them; there is then one ``[N, D]`` array per embedder.

``FeatureCache`` (``--cache DIR``) makes a long run resumable: the raw ``[N, 2, D]`` outputs (face, mirror)
are appended to ``DIR/features.partial.npy`` and the count of images done is committed after each
``fsync``; a killed run restarts at the last committed image. When every image is done the file becomes
``DIR/features.npy``, which ``eval/ijb.py --features`` reads directly (same row order as
``<t>_face_tid_mid.txt``). With several embedders each has its own cache; a run resumes at the fewest
images any of them holds.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from converters.errors import UserError

from .align import CROP_SIZE, align_face

if TYPE_CHECKING:
    from .backends import Embedder
    from .ijb_layout import IjbLayout
    from .ijb_protocol import Variant

CACHE_FORMAT = 1
COMMIT_SECONDS = 20.0  # how often the cache commits the images done (a killed run loses at most this much)


# ------------------------------------------------------------------------------------- worker processes
def align_chunk(task: tuple[int, list[str], np.ndarray]) -> tuple[int, np.ndarray, float]:
    """Decode and align one chunk of images (runs in a worker): ``(start, [n, 112, 112, 3] RGB uint8,
    seconds spent)``. A file that cannot be read or decoded is a ``UserError`` naming it."""
    from converters.images import decode_image

    start, paths, landmarks = task
    t0 = time.perf_counter()
    out = np.empty((len(paths), CROP_SIZE, CROP_SIZE, 3), np.uint8)
    for i, path in enumerate(paths):
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise UserError(path, f"cannot read the image: {err.strerror or err}") from None
        bgr = decode_image(data, path, "")
        out[i] = align_face(bgr, landmarks[i])
    return start, out, time.perf_counter() - t0


def align_tasks(layout: IjbLayout, first: int = 0, chunk: int = 64
                ) -> Iterator[tuple[int, list[str], np.ndarray]]:
    """The images of ``layout`` from ``first`` on as ``align_chunk`` tasks of ``chunk`` images."""
    for start in range(first, len(layout.names), chunk):
        stop = min(len(layout.names), start + chunk)
        yield start, [str(layout.paths.loose_crop / name) for name in layout.names[start:stop]], \
            layout.landmarks[start:stop]


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core: OpenCV's own threads would only contend


class AlignPool:
    """``workers`` processes (0: in this process) that decode and align chunks, at most ``ahead`` chunks in
    flight so that memory stays bounded whatever the model's speed."""

    def __init__(self, workers: int, ahead: int | None = None):
        self.workers = workers
        self.ahead = ahead or 2 * max(1, workers)
        self.pool: Any = None

    def __enter__(self) -> AlignPool:
        if self.workers > 0:
            import multiprocessing

            # spawn: the parent has Paddle (and its threads) loaded, which a forked child must not inherit
            self.pool = multiprocessing.get_context("spawn").Pool(self.workers, initializer=_worker_init)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()

    def run(self, tasks: Iterator[tuple[int, list[str], np.ndarray]]) -> Iterator[tuple[int, np.ndarray, float]]:
        if self.pool is None:
            yield from map(align_chunk, tasks)
            return
        pending: collections.deque = collections.deque()
        for task in tasks:
            pending.append(self.pool.apply_async(align_chunk, (task,)))
            if len(pending) >= self.ahead:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# ------------------------------------------------------------------------------------------- the cache
class FeatureCache:
    """Raw ``[N, 2, D]`` float32 outputs on disk, resumable; ``key`` says what produced them."""

    def __init__(self, folder: str | Path, key: dict[str, Any], images: int):
        from converters.outputs import OutputLock

        self.folder = Path(folder)
        self.key = {"format": CACHE_FORMAT, **key, "images": images}
        self.images = images
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(self.folder, "is a file; --cache takes a folder")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(self.folder, f"cannot create the cache folder: {err.strerror or err}") from None
        self.lock = OutputLock(self.folder, option="--cache").acquire()
        self.progress_path = self.folder / "progress.json"
        self.partial = self.folder / "features.partial.npy"
        self.complete = self.folder / "features.npy"
        self.done, self.dim = self._read_progress()
        self.fh: Any = None
        self.offset = 0
        self.done_written = self.done
        self.last_commit = time.monotonic()

    def _read_progress(self) -> tuple[int, int | None]:
        if not self.progress_path.exists():
            return 0, None
        try:
            progress = json.loads(self.progress_path.read_text())
            key, done, dim = progress["key"], int(progress["done"]), progress["dim"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(self.progress_path, f"not a feature cache this tool wrote ({type(err).__name__}); "
                            "delete the folder or give another --cache") from None
        if key != self.key:
            differ = sorted(k for k in set(key) | set(self.key) if key.get(k) != self.key.get(k))
            raise UserError(self.folder, f"holds the features of another run (different {', '.join(differ)}); "
                            "give another --cache folder or delete this one")
        data = self.complete if done == self.images else self.partial
        if not data.is_file() or not 0 <= done <= self.images:
            raise UserError(self.progress_path, f"says {done} images are done but {data.name} is missing; "
                            "delete the folder or give another --cache")
        return done, int(dim)

    def read_done(self, chunk: int = 16384) -> Iterator[tuple[int, np.ndarray]]:
        """The committed raw outputs, ``(start, [n, 2, D])`` chunk by chunk."""
        if not self.done:
            return
        from converters.npy import read_npy

        data = self.complete if self.done == self.images else self.partial
        raw = read_npy(data, "cached [N, 2, D] features", mmap=True)
        if raw.shape != (self.images, 2, self.dim) or raw.dtype != np.float32:
            raise UserError(data, f"holds {raw.dtype} {list(raw.shape)}, expected float32 "
                            f"{[self.images, 2, self.dim]}; delete the cache folder")
        for start in range(0, self.done, chunk):
            yield start, np.array(raw[start:min(self.done, start + chunk)])
        del raw

    def append(self, start: int, raw: np.ndarray) -> None:
        """Write rows ``start:start+len(raw)`` (``start`` must be the next row); commit every so often."""
        if self.fh is None:
            self._open(raw.shape[2])
        if start != self.done_written:
            raise RuntimeError(f"cache rows out of order: {start} after {self.done_written}")
        self.fh.seek(self.offset + start * 2 * self.dim * 4)
        self.fh.write(np.ascontiguousarray(raw, np.float32).tobytes())
        self.done_written = start + len(raw)
        if time.monotonic() - self.last_commit > COMMIT_SECONDS or self.done_written == self.images:
            self.commit()

    def _open(self, dim: int) -> None:
        from converters.npy import read_npy

        if self.dim is not None and dim != self.dim:
            raise UserError(self.folder, f"holds {self.dim}-d features but the model gives {dim}-d ones")
        self.dim = dim
        if not self.partial.exists():
            created = np.lib.format.open_memmap(self.partial, mode="w+", dtype=np.float32,
                                                shape=(self.images, 2, dim))
            del created
        mapped = read_npy(self.partial, "cached [N, 2, D] features", mmap=True)
        if mapped.shape != (self.images, 2, dim) or mapped.dtype != np.float32:
            raise UserError(self.partial, f"holds {mapped.dtype} {list(mapped.shape)}, expected float32 "
                            f"{[self.images, 2, dim]}; delete the cache folder")
        self.offset = mapped.offset
        del mapped
        self.fh = open(self.partial, "r+b")  # noqa: SIM115 (closed in commit() or close())

    def commit(self) -> None:
        """Make the rows written so far durable, then record them as done (atomically)."""
        from converters.outputs import atomic_output

        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.done = self.done_written
        if self.done == self.images:
            self.fh.close()
            self.fh = None
            os.replace(self.partial, self.complete)
        with atomic_output(self.progress_path) as tmp:
            tmp.write_text(json.dumps({"key": self.key, "done": self.done, "dim": self.dim}, indent=1))
        self.last_commit = time.monotonic()

    def close(self) -> None:
        if self.fh is not None:
            with contextlib.suppress(OSError, ValueError):
                if self.done_written > self.done:
                    self.commit()
            if self.fh is not None:
                self.fh.close()
                self.fh = None
        self.lock.release()


# -------------------------------------------------------------------------------------------- extraction
@dataclass
class ExtractStats:
    images: int = 0  # embedded in this run
    cached: int = 0  # read back from the cache
    align_seconds: float = 0.0  # summed over the workers
    model_seconds: float = 0.0  # all embedders together
    wall_seconds: float = 0.0
    workers: int = 0
    notes: list[str] = field(default_factory=list)
    embedder_seconds: list[float] = field(default_factory=list)  # each embedder's share of model_seconds

    @property
    def align_rate(self) -> float:
        """Images decoded and aligned per second, all workers together."""
        per_worker = self.images / self.align_seconds if self.align_seconds else float("nan")
        return per_worker * max(1, self.workers)

    @property
    def model_rate(self) -> float:
        """Faces embedded per second (each with its mirror; by all embedders in turn)."""
        return self.images / self.model_seconds if self.model_seconds else float("nan")


def _many(embedder: Embedder | Sequence[Embedder]) -> tuple[list[Embedder], bool]:
    """``(embedders, one)``: a single embedder, or a list or tuple of them."""
    if isinstance(embedder, (list, tuple)):
        if not embedder:
            raise ValueError("no embedder given")
        return list(embedder), False
    return [embedder], True


def embed_faces(embedder: Embedder | Sequence[Embedder], crops: np.ndarray, batch_size: int,
                seconds: list[float] | None = None) -> np.ndarray | list[np.ndarray]:
    """Raw outputs ``[n, 2, D]`` of aligned RGB faces ``[n, 112, 112, 3]`` and their mirrors, ``batch_size``
    faces (``2 * batch_size`` rows: each face next to its mirror) per forward pass.

    Given a list of embedders, each batch is normalised once and embedded by every one of them in turn; the
    result is then one ``[n, 2, D]`` array per embedder (and ``seconds[i]``, if given, grows by embedder
    ``i``'s time)."""
    from converters.images import normalize

    embedders, one = _many(embedder)
    out: list[list[np.ndarray]] = [[] for _ in embedders]
    for start in range(0, len(crops), batch_size):
        faces = crops[start:start + batch_size]
        both = normalize(np.stack([faces, faces[:, :, ::-1]], axis=1).reshape(-1, *faces.shape[1:]))
        for i, model in enumerate(embedders):
            t0 = time.perf_counter()
            emb = model(both)
            if seconds is not None:
                seconds[i] += time.perf_counter() - t0
            out[i].append(emb.reshape(len(faces), 2, -1))
    results = [np.concatenate(parts) if len(parts) > 1 else parts[0] for parts in out]
    return results[0] if one else results


def extract_features(layout: IjbLayout, embedder: Embedder | Sequence[Embedder], variant: Variant, batch_size: int,
                     workers: int, cache: FeatureCache | Sequence[FeatureCache | None] | None = None,
                     progress: bool = True, chunk: int | None = None,
                     on_raw: Callable[[int, list[np.ndarray]], None] | None = None
                     ) -> tuple[np.ndarray | list[np.ndarray], ExtractStats]:
    """The ``[N, D]`` float32 image features of ``layout`` under ``variant``, with timing statistics.

    ``embedder`` may be a list of embedders: every image is then decoded and aligned once and each batch
    embedded by all of them, and the result is one ``[N, D]`` array per embedder. ``cache`` is then a list
    too (one cache or None per embedder); a run resumes at the fewest images any of them holds, and rows a
    cache already holds are not written again. ``on_raw(start, [raw, ...])`` sees the raw ``[n, 2, D]``
    outputs of rows ``start:start+n`` of every embedder, read from the caches or embedded, each row once
    and in order."""
    from tqdm import tqdm

    from .ijb_protocol import image_features

    embedders, one = _many(embedder)
    caches = list(cache) if isinstance(cache, (list, tuple)) else [cache] * (len(embedders) if cache is None else 1)
    if len(caches) != len(embedders):
        raise ValueError(f"{len(caches)} caches for {len(embedders)} embedders")
    n = len(layout.names)
    chunk = chunk or 2 * batch_size  # faces per worker task
    stats = ExtractStats(workers=workers, embedder_seconds=[0.0] * len(embedders))
    t_start = time.perf_counter()
    feats: list[np.ndarray | None] = [None] * len(embedders)

    def store(start: int, raws: list[np.ndarray]) -> None:
        for i, raw in enumerate(raws):
            part = image_features(raw, layout.faceness[start:start + len(raw)], variant)
            if feats[i] is None:
                feats[i] = np.empty((n, part.shape[1]), np.float32)
            feats[i][start:start + len(raw)] = part
        if on_raw is not None:
            on_raw(start, raws)

    first = 0
    try:
        if all(c is not None for c in caches):
            first = min(c.done for c in caches)
            # every cache's read_done chunks alike, so the rows below `first` come in step from all of them
            for parts in zip(*(c.read_done() for c in caches)):
                start = parts[0][0]
                if start >= first:
                    break
                store(start, [raw[:first - start] for _, raw in parts])
            stats.cached = first
            if first:
                where = ", ".join(str(c.folder) for c in caches)
                stats.notes.append(f"{first} of {n} images read from the cache {where}")
        bar = tqdm(total=n, initial=first, unit="img", desc="IJB features", disable=not progress, leave=False,
                   dynamic_ncols=True)
        try:
            with AlignPool(workers) as pool:
                for start, crops, seconds in pool.run(align_tasks(layout, first, chunk)):
                    stats.align_seconds += seconds
                    t0 = time.perf_counter()
                    raws = embed_faces(embedders, crops, batch_size, stats.embedder_seconds)
                    stats.model_seconds += time.perf_counter() - t0
                    for c, raw in zip(caches, raws):
                        if c is not None and start + len(raw) > c.done_written:  # rows it lacks
                            skip = c.done_written - start
                            c.append(c.done_written, raw[skip:])
                    store(start, raws)
                    stats.images += len(crops)
                    bar.update(len(crops))
        finally:
            bar.close()
    finally:
        for c in caches:
            if c is not None:
                c.close()
    stats.wall_seconds = time.perf_counter() - t_start
    if feats[0] is None:  # no image at all: the layout reader refuses that, kept for safety
        raise UserError(layout.root, "no images to embed")
    return (feats[0] if one else feats), stats
