"""InsightFace's IJB-B / IJB-C 1:1 verification protocol (arcface_torch's ``eval_ijbc.py``), vectorised.

The protocol, with the dtypes that make its numbers what they are:

1. Raw features: per image the float32 embedding of the aligned face and of its horizontal mirror.
2. Flip (``F1``): ``x = orig + mirror`` in float32; ``F0``: ``x = orig``.
3. Norm score (``N1``): ``x`` keeps its norm; ``N0``: ``x = x / sqrt(sum(x ** 2, -1))`` in float32.
4. Detector score (``D1``): ``x = x * faceness`` (float32 detector confidence of the image); ``D0``: unchanged.
5. Templates, in ascending template id: the images of the template in ascending image index; per media
   (ascending media id) the float32 ``np.mean`` of its images (one image: the image itself); the float32
   ``np.sum`` of the media features, cast to float64; finally ``sklearn.preprocessing.normalize`` (L2 per
   row, in float64).
6. Pair score: ``np.sum(f1 * f2, -1)`` in float64 of the two normalised template features.
7. ROC: ``sklearn.metrics.roc_curve(labels, scores)``, both curves reversed (``np.flipud``); TAR@FAR is the
   TAR at the point whose FPR is nearest to FAR, ties to the first point of the reversed curve (the one
   with the largest TAR among equal FPRs).

Bit-identical, not only close: numpy sums the rows of a ``[rows, D]`` float32 array along axis 0
(``np.mean`` / ``np.sum(axis=0)`` of the media and template steps) *sequentially*, starting from 0, one row
after another in order, while it sums along the last axis (norm, pair score) pairwise within each row.
Here both aggregation levels accumulate sequentially, vectorised across all medias (templates) at once:
step ``k`` adds the ``k``-th image of every media that has more than ``k`` images, so the additions of
every single media happen in exactly the order the per-template loop performs them, and the mean divides
the float32 sum by the integer count the way ``np.mean`` does (in float64, rounded to float32). The
last-axis sums are computed row by row, so they do not depend on how rows are chunked. For a feature
dimension of 1 numpy sums axis 0 pairwise instead, which is why ``D >= 2`` is required.

Memory and speed: nothing holds a permuted copy of all image features; image rows are processed in chunks
(rows read from a file-backed ``np.memmap`` are dropped from the process's memory once used), templates
are aggregated in chunks of about ``chunk`` images, and pairs are scored in cache-sized chunks of float64
gathers, visited in tiles of template blocks; all on a few threads (numpy releases the GIL). The results
do not depend on the chunk sizes, the visiting order or the number of threads.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)

_VARIANT_RE = re.compile(r"^N([01])D([01])F([01])$")


@dataclass(frozen=True)
class Variant:
    """One of the 8 protocol variants: ``N`` keep the norm, ``D`` weight by the detector score, ``F`` add
    the mirror image's embedding. InsightFace's default is N1D1F1."""

    norm_score: bool
    detector_score: bool
    flip: bool

    @property
    def name(self) -> str:
        return f"N{int(self.norm_score)}D{int(self.detector_score)}F{int(self.flip)}"

    def __str__(self) -> str:
        return self.name


VARIANTS = tuple(f"N{n}D{d}F{f}" for n, d, f in itertools.product((0, 1), repeat=3))


def parse_variant(text: str) -> Variant:
    """``"N1D1F1"`` (case-insensitive) -> ``Variant(norm_score=True, detector_score=True, flip=True)``."""
    match = _VARIANT_RE.match(str(text).strip().upper())
    if match is None:
        raise ValueError(
            f"variant {text!r} is not one of {', '.join(VARIANTS)} "
            "(N1/N0: keep/remove the feature norm, D1/D0: with/without detector score, F1/F0: with/without flip)"
        )
    n, d, f = (c == "1" for c in match.groups())
    return Variant(norm_score=n, detector_score=d, flip=f)


# --------------------------------------------------------------------------- helpers
def _threads(threads: Optional[int]) -> int:
    if threads is None:
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            threads = os.cpu_count() or 1
        threads = min(threads, 4)
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return int(threads)


def _run(tasks: Sequence[Callable[[], None]], threads: int) -> None:
    """Run independent tasks on ``threads`` threads (in order on one); re-raise the first error."""
    if threads == 1 or len(tasks) <= 1:
        for task in tasks:
            task()
        return
    with ThreadPoolExecutor(max_workers=min(threads, len(tasks))) as pool:
        for future in [pool.submit(task) for task in tasks]:
            future.result()


def _ids(values, name: str, n: Optional[int] = None) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if n is not None and len(array) != n:
        raise ValueError(f"{name} has {len(array)} entries, expected {n}")
    if array.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")
    return array


# --------------------------------------------------------------------------- steps 1-4
def _page_releaser(raw) -> Optional[Callable[[int, int], None]]:
    """For a C-contiguous, file-backed ``np.memmap`` (not copy-on-write): a function that drops rows
    ``[start, stop)`` from this process's resident memory once they are read (the file stays in the page
    cache; reading them again maps them back). None when that is not possible."""
    handle = getattr(raw, "_mmap", None)
    if (handle is None or getattr(raw, "mode", None) not in ("r", "r+", "w+") or not raw.flags.c_contiguous
            or not hasattr(mmap, "MADV_DONTNEED") or not hasattr(handle, "madvise")):
        return None
    try:
        offset = raw.ctypes.data - np.frombuffer(handle, dtype=np.uint8).ctypes.data
    except (TypeError, ValueError, BufferError):
        return None
    row_bytes, page = raw.strides[0], mmap.PAGESIZE

    def release(start: int, stop: int) -> None:
        low = -(-(offset + start * row_bytes) // page) * page  # whole pages inside the rows only
        high = (offset + stop * row_bytes) // page * page
        if high > low:
            with contextlib.suppress(OSError, ValueError):
                handle.madvise(mmap.MADV_DONTNEED, low, high - low)

    return release


def image_features(raw, faceness, variant: Variant, chunk: int = 65536, *, threads: Optional[int] = None
                   ) -> np.ndarray:
    """Per-image features (protocol steps 2-4) as float32 ``[N, D]``.

    ``raw`` is ``[N, 2, D]`` (embedding of the face, of its mirror) or ``[N, D]`` (already the float32 sum
    of both: only with ``variant.flip``); any float dtype, a ``np.memmap`` included, converted to float32
    like InsightFace's feature array. ``faceness`` is the float32 detector score ``[N]`` (may be None
    without ``variant.detector_score``). Rows are processed in chunks, so that the memory used is the
    output plus about ``chunk`` rows of temporaries.
    """
    if not isinstance(variant, Variant):
        raise ValueError(f"variant must be a Variant (see parse_variant), got {variant!r}")
    if raw.ndim == 3:
        if raw.shape[1] != 2:
            raise ValueError(f"raw features [N, 2, D] expected, got shape {raw.shape}")
        summed = False
    elif raw.ndim == 2:
        if not variant.flip:
            raise ValueError(f"raw features of shape {raw.shape} are already flip-summed: variant "
                             f"{variant.name} (F0) needs the [N, 2, D] embeddings of faces and mirrors")
        summed = True
    else:
        raise ValueError(f"raw features must be [N, 2, D] or [N, D], got shape {raw.shape}")
    if raw.dtype.kind != "f":
        raise ValueError(f"raw features must be floating point, got dtype {raw.dtype}")
    n, dim = raw.shape[0], raw.shape[-1]
    if n == 0 or dim == 0:
        raise ValueError(f"raw features are empty (shape {raw.shape})")
    if variant.detector_score:
        if faceness is None:
            raise ValueError(f"variant {variant.name} (D1) needs the detector scores")
        faceness = np.asarray(faceness, dtype=np.float32)
        if faceness.shape != (n,):
            raise ValueError(f"detector scores have shape {faceness.shape}, expected ({n},)")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")

    workers = _threads(threads)
    release = _page_releaser(raw)
    out = np.empty((n, dim), dtype=np.float32)
    block = max(1, -(-int(chunk) // workers))  # about `chunk` rows in flight over all threads
    starts = iter(range(0, n, block))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                start = next(starts, None)
            if start is None:
                return
            stop = min(start + block, n)
            x = out[start:stop]
            if summed:
                x[...] = raw[start:stop]
            elif variant.flip:
                np.add(raw[start:stop, 0], raw[start:stop, 1], out=x, dtype=np.float32)
            else:
                x[...] = raw[start:stop, 0]
            if not variant.norm_score:
                norm = np.sqrt(np.sum(np.square(x), -1, keepdims=True))
                np.divide(x, norm, out=x)
            if variant.detector_score:
                np.multiply(x, faceness[start:stop, None], out=x)
            if release is not None:
                release(start, stop)

    _run([worker] * workers, workers)
    return out


# --------------------------------------------------------------------------- step 5
def _sequential_sums(source: np.ndarray, starts: np.ndarray, lengths: np.ndarray, gather_index=None
                     ) -> np.ndarray:
    """float32 ``[S, D]``: for each segment s, ``0 + row[starts[s]] + row[starts[s] + 1] + ...`` (its
    ``lengths[s]`` rows, added one after another in order), vectorised across segments. Rows are
    ``source[gather_index[p]]`` (or ``source[p]``) for sorted positions p."""
    count = len(starts)
    out = np.empty((count, source.shape[1]), dtype=np.float32)
    if count == 0:
        return out
    by_length = np.argsort(-lengths, kind="stable")  # longest first: the active segments are a prefix
    starts_sorted = starts[by_length]
    lengths_desc = -lengths[by_length]
    acc = np.zeros_like(out)
    for k in range(int(lengths[by_length[0]])):
        active = int(np.searchsorted(lengths_desc, -k, side="left"))  # segments with length > k
        positions = starts_sorted[:active] + k
        rows = positions if gather_index is None else gather_index[positions]
        np.add(acc[:active], np.take(source, rows, axis=0), out=acc[:active], dtype=np.float32)
    out[by_length] = acc
    return out


def aggregate_templates(feats, templates, medias, *, chunk: int = 65536, threads: Optional[int] = None
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """Template features (protocol step 5): ``(template_feats float64 [T, D] L2-normalised,
    unique_templates int64 [T] ascending)``.

    ``feats`` float32 ``[N, D]`` (``image_features``; may be a memmap), ``templates`` and ``medias`` the
    integer template and media id of every image. Templates are processed in chunks of about ``chunk``
    images, each a vectorised computation over all its medias and templates.
    """
    from sklearn.preprocessing import normalize

    feats = np.asarray(feats)
    if feats.ndim != 2:
        raise ValueError(f"image features must be [N, D], got shape {feats.shape}")
    n, dim = feats.shape
    if n == 0:
        raise ValueError("no image features")
    if dim < 2:
        raise ValueError(f"feature dimension must be at least 2, got {dim}")
    if feats.dtype != np.float32:
        raise ValueError(f"image features must be float32 (as image_features returns), got {feats.dtype}")
    templates = _ids(templates, "template ids", n)
    medias = _ids(medias, "media ids", n)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")

    order = np.lexsort((medias, templates))  # stable: ascending image index within a (template, media)
    t_sorted = templates[order]
    m_sorted = medias[order]
    new_template = np.empty(n, dtype=bool)
    new_template[0] = True
    np.not_equal(t_sorted[1:], t_sorted[:-1], out=new_template[1:])
    new_media = new_template.copy()
    new_media[1:] |= m_sorted[1:] != m_sorted[:-1]
    del m_sorted
    t_start = np.flatnonzero(new_template)  # first sorted position of each template
    m_start = np.flatnonzero(new_media)  # first sorted position of each (template, media)
    del new_template, new_media
    unique_templates = t_sorted[t_start].astype(np.int64)
    del t_sorted
    m_length = np.diff(np.append(m_start, n))
    t_first_media = np.searchsorted(m_start, t_start)
    t_media_count = np.diff(np.append(t_first_media, len(m_start)))
    n_templates, n_medias = len(t_start), len(m_start)

    template_feats = np.zeros((n_templates, dim), dtype=np.float64)
    # chunks of whole templates, each starting within a block of `chunk` images
    block_of = t_start // int(chunk)
    bounds = np.append(np.flatnonzero(np.r_[True, block_of[1:] != block_of[:-1]]), n_templates)

    def task(t0: int, t1: int) -> Callable[[], None]:
        def run() -> None:
            m0 = int(t_first_media[t0])
            m1 = int(t_first_media[t1]) if t1 < n_templates else n_medias
            lengths = m_length[m0:m1]
            sums = _sequential_sums(feats, m_start[m0:m1], lengths, gather_index=order)
            # np.mean: float32 sum / integer count, computed in float64 and rounded to float32
            np.true_divide(sums, lengths[:, None].astype(np.intp), out=sums, casting="unsafe")
            template_feats[t0:t1] = _sequential_sums(sums, t_first_media[t0:t1] - m0, t_media_count[t0:t1])
        return run

    tasks = [task(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    _run(tasks, _threads(threads))
    return normalize(template_feats, copy=False), unique_templates


# --------------------------------------------------------------------------- step 6
def _template_index(unique_templates: np.ndarray, ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(row of each id in the sorted ``unique_templates`` as intp, bool known)."""
    lo, hi = int(unique_templates[0]), int(unique_templates[-1])
    span = hi - lo + 1
    if lo > -(1 << 62) and hi < (1 << 62) and span <= 8 * len(unique_templates) + (1 << 20):  # lookup table
        table = np.full(span, -1, dtype=np.intp)
        table[unique_templates.astype(np.int64) - lo] = np.arange(len(unique_templates))
        inside = (ids >= lo) & (ids <= hi)
        rows = np.full(len(ids), -1, dtype=np.intp)
        rows[inside] = table[ids[inside].astype(np.int64) - lo]
        known = rows >= 0
    else:
        rows = np.searchsorted(unique_templates, ids)
        np.minimum(rows, len(unique_templates) - 1, out=rows)
        known = unique_templates[rows] == ids
    return rows, known


_TILE_BYTES = 2 << 20  # template rows per cache tile of pair_scores: 2 MiB of float64 features


def pair_scores(template_feats, unique_templates, p1, p2, *, chunk: int = 256,
                threads: Optional[int] = None) -> np.ndarray:
    """Pair scores (protocol step 6): float64 ``[P]``, ``np.sum(feat[t1] * feat[t2], -1)`` for every pair.

    ``template_feats`` / ``unique_templates`` as ``aggregate_templates`` returns them; ``p1``, ``p2`` the
    template ids of the pairs. Raises ValueError naming the first pair whose template is unknown.
    Computed in chunks of ``chunk`` pairs (two float64 ``[chunk, D]`` buffers per thread, small enough for
    the CPU cache), the pairs grouped by blocks of templates for cache locality.
    """
    template_feats = np.ascontiguousarray(template_feats, dtype=np.float64)
    if template_feats.ndim != 2 or template_feats.shape[0] == 0:
        raise ValueError(f"template features must be a non-empty [T, D] array, got shape {template_feats.shape}")
    unique_templates = _ids(unique_templates, "unique template ids", template_feats.shape[0])
    if np.any(unique_templates[1:] <= unique_templates[:-1]):
        raise ValueError("unique template ids must be strictly ascending (as aggregate_templates returns them)")
    p1 = _ids(p1, "pair template ids (first)")
    p2 = _ids(p2, "pair template ids (second)", len(p1))
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    count, dim = len(p1), template_feats.shape[1]
    workers = _threads(threads)

    index_dtype = np.int32 if len(unique_templates) < 2**31 else np.intp
    rows1 = np.empty(count, dtype=index_dtype)
    rows2 = np.empty(count, dtype=index_dtype)
    first_bad = []
    map_block = 1 << 20

    def map_task(start: int) -> Callable[[], None]:
        def run() -> None:
            stop = min(start + map_block, count)
            for ids, rows in ((p1, rows1), (p2, rows2)):
                found, known = _template_index(unique_templates, ids[start:stop])
                rows[start:stop] = found
                if not known.all():
                    first_bad.append(start + int(np.argmin(known)))
        return run

    _run([map_task(s) for s in range(0, count, map_block)], workers)
    if first_bad:
        k = min(first_bad)
        which = [int(t) for t in (p1[k], p2[k]) if not np.isin(t, unique_templates)]
        raise ValueError(f"pair {k} (0-based): template {which[0]} is not among the templates (it has no images)")

    # Visit the pairs tile by tile (both templates in blocks of rows small enough to stay in the CPU
    # cache) instead of in file order: the gathers are then mostly cache hits. Each score is computed on
    # its own, so the order does not change any value.
    block = max(1, _TILE_BYTES // (dim * 8))
    blocks = -(-len(unique_templates) // block)
    order = None
    if blocks > 1 and count > int(chunk):
        key_dtype = np.uint16 if blocks * blocks <= 1 << 16 else np.int64  # uint16: numpy radix-sorts it
        key = (rows1 // block).astype(key_dtype)
        key *= key_dtype(blocks)
        key += (rows2 // block).astype(key_dtype)
        order = np.argsort(key, kind="stable")
        del key
        rows1, rows2 = rows1[order], rows2[order]

    scores = np.empty(count, dtype=np.float64)
    starts = iter(range(0, count, int(chunk)))
    lock = threading.Lock()

    def worker() -> None:
        size = min(int(chunk), count)
        a_buf = np.empty((size, dim), dtype=np.float64)
        b_buf = np.empty((size, dim), dtype=np.float64)
        s_buf = np.empty(size, dtype=np.float64)
        while True:
            with lock:
                start = next(starts, None)
            if start is None:
                return
            stop = min(start + int(chunk), count)
            a, b = a_buf[: stop - start], b_buf[: stop - start]
            np.take(template_feats, rows1[start:stop], axis=0, out=a, mode="clip")  # rows checked above
            np.take(template_feats, rows2[start:stop], axis=0, out=b, mode="clip")
            np.multiply(a, b, out=a)
            if order is None:
                np.sum(a, -1, out=scores[start:stop])
            else:
                np.sum(a, -1, out=s_buf[: stop - start])
                scores[order[start:stop]] = s_buf[: stop - start]

    _run([worker] * workers, workers)
    return scores


# --------------------------------------------------------------------------- step 7
def roc(labels, scores) -> Tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` of ``sklearn.metrics.roc_curve(labels, scores)`` (``drop_intermediate=True``), both
    reversed (``np.flipud``) as InsightFace evaluates and plots them: FPR descending. Labels: 1 genuine,
    0 impostor.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if labels.ndim != 1 or scores.ndim != 1 or len(labels) != len(scores):
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be 1-D of the same length")
    if len(labels) == 0:
        raise ValueError("no pairs")
    if scores.dtype.kind not in "fiu":
        raise ValueError(f"scores must be real numbers, got dtype {scores.dtype}")
    genuine = labels == 1
    valid = genuine | (labels == 0)
    if not valid.all():
        k = int(np.argmin(valid))
        raise ValueError(f"pair {k} (0-based): label {labels[k].item()!r} is neither 1 (genuine) nor 0 (impostor)")
    del valid
    count = len(labels)
    n_genuine = int(np.count_nonzero(genuine))
    if n_genuine == 0:
        raise ValueError(f"no genuine pairs (label 1) among {count}: TAR is undefined")
    if n_genuine == count:
        raise ValueError(f"no impostor pairs (label 0) among {count}: FAR is undefined")
    finite = np.isfinite(scores)
    if not finite.all():
        k = int(np.argmin(finite))
        raise ValueError(f"pair {k} (0-based): score {scores[k]} is not finite")
    del finite

    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    return np.flipud(fpr), np.flipud(tpr)


def tar_at_far(labels, scores, fars: Iterable[float] = FARS) -> Dict[float, float]:
    """``{far: TAR}``: the TAR at the ROC point whose FPR is nearest to ``far``; ties go to the first
    point of the reversed curve (the largest TAR among equal FPRs)."""
    fpr, tpr = roc(labels, scores)
    result = {}
    for far in fars:
        index = int(np.argmin(np.abs(fpr - far)))  # argmin: the first of equal distances
        result[far] = float(tpr[index])
    return result


def format_table(rows: Mapping[str, Mapping[float, float]], target: str) -> str:
    """InsightFace's TAR@FAR table: header ``Methods | 1e-06 | ... | 0.1``, one row ``<method>-<TARGET>``
    per entry with TAR x 100 at 2 decimals. The columns are the FARs of the first row."""
    from tabulate import tabulate

    if not rows:
        raise ValueError("no rows to format")
    fars = list(next(iter(rows.values())).keys())
    lines = []
    for method, values in rows.items():
        if list(values.keys()) != fars:
            raise ValueError(f"row {method!r} has FARs {list(values)}, expected {fars}")
        lines.append([f"{method}-{target}"] + ["%.2f" % (values[far] * 100) for far in fars])
    return tabulate(lines, headers=["Methods"] + [str(far) for far in fars], tablefmt="pretty",
                    disable_numparse=True)
