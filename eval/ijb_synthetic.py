"""Synthetic IJB-B/C data in InsightFace's layout, built from real aligned faces, for tests and benchmarks.

    python eval/ijb_synthetic.py OUT --identities N [--target IJBC|IJBB] [--images-per-identity K] [--seed S]
        [--impostors-per-genuine R] [--order shuffled|grouped] [--faces PACK.bin|FOLDER ...]
    python eval/ijb_synthetic.py OUT --meta-only --images N --templates T --pairs P [--genuine G]
        [--features F.npy [--dim D]] [--target IJBC|IJBB] [--seed S] [--order shuffled|grouped]

``OUT`` receives what InsightFace's IJB evaluation reads (``<t>`` is ``ijbc`` or ``ijbb``):

* ``meta/<t>_face_tid_mid.txt``: ``<k>.jpg tid mid`` per image, the line order being the image order;
* ``meta/<t>_template_pair_label.txt``: ``tid1 tid2 label`` (1 genuine, 0 impostor);
* ``meta/<t>_name_5pts_score.txt``: ``<k>.jpg x1 y1 ... x5 y5 faceness``, the same images in the same order;
  landmarks (left eye, right eye, nose, left and right mouth corners) with 3 decimals, faceness with 6;
* ``loose_crop/<k>.jpg``: the images, JPEG quality 95 (not in ``--meta-only`` mode).

Images. Each synthetic identity takes one real identity of the face sources (a ``.bin`` verification
pack, whose same-identity pairs and byte-identical images join faces into identities; a folder with
``label.txt`` or one sub-folder per class; a single image), all 112x112 aligned faces. With more
synthetic identities than real ones, the real identities are used again, each reuse mirrored and with a
strong colour change (per-channel gains and a gamma) different for every reuse: such identities differ
only in name and colour, a face model still sees the same person in them. An image is one of the
identity's real faces, with a mild brightness/contrast change and noise, pasted into a "loose crop"
canvas of 150-250 pixels a side over a random smooth background, by a random similarity transform
(rotation within 20 degrees, scale 0.8-1.6, any translation that keeps the whole face crop inside the
canvas); its landmarks are ``ARCFACE_DST`` mapped through that same transform, so aligning an image with
its landmarks recovers the pasted face. The faceness is uniform in [0.6, 1.0].

Templates and medias. An identity's images form medias of 1 to 4 images (the frames of a video: one
photo, slightly moved from frame to frame; a single image is a photo); its medias form 2 to 4 templates,
and for about a third of the identities one frame of a video goes to another template, so that a media
id appears in two templates (the protocol groups medias within a template). Template and media ids are
distinct integers with gaps, starting above 0, in no relation to the order of identities. With
``--order shuffled`` (the default) the images are listed in random order, so that one template's lines
are not contiguous; ``grouped`` lists them by ascending template id, as InsightFace's files do.

Pairs. Every genuine pair (two templates of one identity) and ``R`` times as many impostor pairs
(templates of two identities; distinct pairs, fewer if there are not that many), never a template with
itself, in random order and random orientation.

``--meta-only`` writes the three meta files alone for protocol tests and benchmarks at any size (IJB-C's
469,375 images, 23,124 templates, 15,658,489 pairs in seconds and bounded memory): the same kinds of
structure, landmarks of plausible placements, the pairs drawn from templates grouped into identities of
about six templates. ``--features`` adds raw features ``[N, 2, D]`` float32 (``.npy``, rows in image
order; the second row a mirror view) that cluster by identity, written in chunks.

Everything is determined by ``--seed``. ``OUT`` must not exist or be an empty folder; it is written in a
temporary folder beside it and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

# Run as a file, sys.path[0] is this folder, whose modules would shadow others even when the project is
# installed (train/train.py would be imported as `train`); the project root goes there instead, which also
# lets a plain clone run without installing.
if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from converters.cli import ArgumentParser, int_range, random_seed  # noqa: E402
from converters.errors import UserError, run_cli  # noqa: E402
from eval.align import ARCFACE_DST, CROP_SIZE  # noqa: E402

TARGETS = ("IJBC", "IJBB")
ORDERS = ("shuffled", "grouped")
CANVAS = (150, 250)  # loose-crop side range, pixels (enlarged when a rotated, scaled face would not fit)
ROTATION = 20.0  # degrees either way
SCALE = (0.8, 1.6)
FACENESS = (0.6, 1.0)
LANDMARK_DECIMALS = 3
FACENESS_DECIMALS = 6
JPEG_QUALITY = 95
IMPOSTORS_PER_GENUINE = 10
IJBC_GENUINE_FRACTION = 19_557 / 15_658_489  # --genuine default in --meta-only mode
CHUNK = 1 << 18  # rows per formatted or generated block: memory stays bounded at any size
FEATURE_CHUNK_VALUES = 1 << 23  # float32 values per generated feature block (32 MB)
POOL = 1 << 16  # random feature directions drawn at most (identities, templates)


def meta_paths(root: str | Path, target: str) -> dict[str, Path]:
    """The three meta files of ``target`` under ``root``: keys ``face_tid_mid``, ``pairs``, ``landmarks``."""
    t = target.lower()
    meta = Path(root) / "meta"
    return {"face_tid_mid": meta / f"{t}_face_tid_mid.txt", "pairs": meta / f"{t}_template_pair_label.txt",
            "landmarks": meta / f"{t}_name_5pts_score.txt"}


# ---------------------------------------------------------------------------------- fast text formatting
def _digit_counts(values: np.ndarray) -> np.ndarray:
    """Decimal digits of each non-negative int64 value (1 for 0)."""
    counts = np.ones(values.shape, dtype=np.int64)
    power = 10
    for _ in range(18):
        more = values >= power
        if not more.any():
            break
        counts += more
        power *= 10
    return counts


def text_lines(pieces: Sequence, rows: int) -> bytes:
    """``rows`` text lines, ``\\n``-terminated, each the concatenation of ``pieces``, built with numpy.

    A piece is ``bytes`` (the same in every line), a non-negative integer array ``[rows]`` (decimal), a
    tuple ``(array, width)`` (decimal, zero-padded to ``width`` digits), or a boolean array (``-`` where
    True, nothing elsewhere). The characters go into a ``[rows, max line length]`` matrix with a mask of
    the ones to keep (not the leading zeros of a shorter number), compacted at the end."""
    if rows == 0:
        return b""
    columns, keeps = [], []
    for piece in pieces:
        if isinstance(piece, bytes):
            columns.append(np.broadcast_to(np.frombuffer(piece, dtype=np.uint8), (rows, len(piece))))
            keeps.append(None)
            continue
        if not isinstance(piece, tuple) and np.asarray(piece).dtype == np.bool_:
            columns.append(np.full((rows, 1), ord("-"), dtype=np.uint8))
            keeps.append(np.asarray(piece).reshape(rows, 1))
            continue
        values, pad = (piece[0], piece[1]) if isinstance(piece, tuple) else (piece, 1)
        values = np.asarray(values, dtype=np.int64)
        if values.size and values.min() < 0:
            raise ValueError("text_lines prints non-negative integers (give the sign as a boolean piece)")
        width = np.maximum(_digit_counts(values), pad)
        most = int(width.max())
        matrix = np.empty((rows, most), dtype=np.uint8)
        rest = values
        for j in range(most - 1, -1, -1):
            rest, digit = np.divmod(rest, 10)
            matrix[:, j] = digit
        matrix += ord("0")
        columns.append(matrix)
        short = width < most
        keeps.append(np.arange(most)[None, :] >= (most - width)[:, None] if short.any() else None)
    columns.append(np.full((rows, 1), ord("\n"), dtype=np.uint8))
    keeps.append(None)
    text = np.concatenate(columns, axis=1)
    if all(keep is None for keep in keeps):
        return text.tobytes()
    mask = np.concatenate([np.ones(c.shape, dtype=bool) if k is None else k for c, k in zip(columns, keeps)],
                          axis=1)
    return text[mask].tobytes()


def fixed_point(values: np.ndarray, decimals: int) -> tuple[np.ndarray, np.ndarray]:
    """``values`` rounded to ``decimals`` decimals: ``(integer multiples of 10**-decimals, the values they
    denote as float64)``; the text of the first (``fixed_pieces``) parses back to exactly the second."""
    scaled = np.rint(np.asarray(values, dtype=np.float64) * 10 ** decimals).astype(np.int64)
    return scaled, scaled / 10 ** decimals


def fixed_pieces(scaled: np.ndarray, decimals: int) -> list:
    """``text_lines`` pieces printing ``scaled / 10**decimals`` with exactly ``decimals`` decimals."""
    magnitude = np.abs(scaled)
    unit = 10 ** decimals
    return [scaled < 0, magnitude // unit, b".", (magnitude % unit, decimals)]


# ------------------------------------------------------------------------------------- identifiers
def spread_ids(count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct positive int64 ids with gaps of 2-12 between neighbours, in random order."""
    start = int(rng.integers(1, 1000))
    ids = start + np.cumsum(rng.integers(2, 13, size=count, dtype=np.int64)) - 2
    return rng.permutation(ids)


# ------------------------------------------------------------------------------------- pair sampling
def _spread(total: int, caps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``total`` items spread over rows in proportion to ``caps``, row ``i`` receiving at most ``caps[i]``."""
    caps = np.asarray(caps, dtype=np.int64)
    capacity = int(caps.sum())
    if total > capacity:
        raise ValueError(f"{total} items do not fit in a capacity of {capacity}")
    if total == capacity:
        return caps.copy()
    counts = np.zeros_like(caps)
    left = total
    while left:
        room = caps - counts
        drawn = rng.multinomial(left, room / room.sum())
        counts += np.minimum(drawn, room)
        left = int(total - counts.sum())
    return counts


def _distinct_offsets(avail: np.ndarray, want: np.ndarray, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray]:
    """For each row ``r``, ``want[r]`` distinct random offsets in ``[0, avail[r])``: ``(rows, offsets)``."""
    dense = want * 3 > avail
    rows_out, offs_out = [], []
    index = np.flatnonzero(dense & (want > 0))
    if index.size:  # enumerate the candidates, keep a random subset of each row
        count = avail[index]
        rows = np.repeat(index, count)
        offs = np.arange(rows.size, dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
        rows, offs = _random_subset(rows, offs, want, rng)
        rows_out.append(rows)
        offs_out.append(offs)
    index = np.flatnonzero(~dense & (want > 0))
    if index.size:  # draw, drop repeats, draw again what is missing: a uniform subset, without replacement
        span = int(avail[index].max()) + 1
        codes = np.zeros(0, dtype=np.int64)
        missing = want[index]
        while missing.any():
            rows = np.repeat(index, missing)
            offs = rng.integers(0, avail[rows])
            codes = np.sort(np.concatenate([codes, rows * span + offs]))
            codes = codes[np.concatenate(([True], codes[1:] != codes[:-1]))]  # (np.unique hashes: slower)
            missing = want[index] - np.bincount(codes // span, minlength=len(want))[index]
        rows_out.append(codes // span)
        offs_out.append(codes % span)
    if not rows_out:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(rows_out), np.concatenate(offs_out)


def _random_subset(rows: np.ndarray, offs: np.ndarray, want: np.ndarray, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A uniformly random ``want[r]`` of the candidates of each row ``r`` (candidates grouped by row)."""
    order = rng.permutation(rows.size)
    order = order[np.argsort(rows[order], kind="stable")]  # by row, in random order within a row
    rows, offs = rows[order], offs[order]
    starts = np.searchsorted(rows, rows, side="left")
    keep = np.arange(rows.size) - starts < want[rows]
    return rows[keep], offs[keep]


def pair_blocks(block_end: np.ndarray, genuine: int, impostors: int, rng: np.random.Generator,
                chunk: int = CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Distinct template pairs by blocks of about ``chunk``: ``(t1, t2, label)`` template indices.

    Templates ``0..T-1`` are grouped into identities of contiguous indices; ``block_end[i]`` is the end
    (exclusive) of the identity of template ``i``. ``genuine`` pairs are drawn uniformly among the pairs of
    one identity, ``impostors`` among the pairs of two identities; no pair twice (either way round), no
    template with itself. Row ``i`` pairs template ``i`` with a later one: ``i+1..block_end[i]-1``
    (genuine) or ``block_end[i]..T-1`` (impostors); each block is shuffled and each pair randomly turned.
    """
    block_end = np.asarray(block_end, dtype=np.int64)
    templates = len(block_end)
    index = np.arange(templates, dtype=np.int64)
    genuine_caps = block_end - index - 1
    impostor_caps = templates - block_end
    genuine_rows = _spread(genuine, genuine_caps, rng)
    impostor_rows = _spread(impostors, impostor_caps, rng)
    per_row = np.cumsum(genuine_rows + impostor_rows)
    start = 0
    while start < templates:
        done = int(per_row[start - 1]) if start else 0
        stop = max(int(np.searchsorted(per_row, done + chunk, side="right")), start + 1)
        rows = slice(start, stop)
        g_rows, g_offs = _distinct_offsets(genuine_caps[rows], genuine_rows[rows], rng)
        i_rows, i_offs = _distinct_offsets(impostor_caps[rows], impostor_rows[rows], rng)
        t1 = np.concatenate([g_rows, i_rows]) + start
        t2 = np.concatenate([t1[:g_rows.size] + 1 + g_offs, block_end[i_rows + start] + i_offs])
        label = np.concatenate([np.ones(g_rows.size, np.int64), np.zeros(i_rows.size, np.int64)])
        turn = rng.random(t1.size) < 0.5
        t1, t2 = np.where(turn, t2, t1), np.where(turn, t1, t2)
        order = rng.permutation(t1.size)
        if t1.size:
            yield t1[order], t2[order], label[order]
        start = stop


def pair_capacity(block_end: np.ndarray) -> tuple[int, int]:
    """``(genuine, impostor)`` numbers of distinct template pairs the identity grouping allows."""
    block_end = np.asarray(block_end, dtype=np.int64)
    index = np.arange(len(block_end), dtype=np.int64)
    return int((block_end - index - 1).sum()), int((len(block_end) - block_end).sum())


def block_ends(sizes: Sequence[int]) -> np.ndarray:
    """``block_end`` of ``pair_blocks`` for identities of ``sizes`` templates, in order."""
    sizes = np.asarray(sizes, dtype=np.int64)
    return np.repeat(np.cumsum(sizes), sizes)


# --------------------------------------------------------------------------------- placements
def placements(theta: np.ndarray, scale: np.ndarray, width: np.ndarray, height: np.ndarray, u: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Similarity transforms ``[n, 2, 3]`` (face-crop pixels -> canvas pixels) and canvas sizes.

    The face crop (pixel centres 0..111) is rotated by ``theta`` (radians) and scaled by ``scale`` about its
    centre; the canvas is ``width x height`` enlarged where the turned crop would not fit with a pixel to
    spare; ``u`` in [0, 1]^2 places the crop's centre within the range that keeps the whole crop inside."""
    cos, sin = np.cos(theta) * scale, np.sin(theta) * scale
    half = CROP_SIZE / 2.0  # half the crop's extent, pixel edges included
    reach = half * (np.abs(cos) + np.abs(sin))  # half the turned crop's bounding box
    width = np.maximum(np.asarray(width, dtype=np.int64), np.ceil(2 * reach + 2).astype(np.int64))
    height = np.maximum(np.asarray(height, dtype=np.int64), np.ceil(2 * reach + 2).astype(np.int64))
    low = reach + 0.5  # centre range keeping [centre - reach, centre + reach] within [-0.5, side - 0.5]
    cx = low + np.clip(u[:, 0], 0, 1) * (width - 1 - 2 * low)
    cy = low + np.clip(u[:, 1], 0, 1) * (height - 1 - 2 * low)
    c0 = (CROP_SIZE - 1) / 2.0
    matrix = np.empty((len(theta), 2, 3), dtype=np.float64)
    matrix[:, 0, 0], matrix[:, 0, 1] = cos, -sin
    matrix[:, 1, 0], matrix[:, 1, 1] = sin, cos
    matrix[:, 0, 2] = cx - (cos * c0 - sin * c0)
    matrix[:, 1, 2] = cy - (sin * c0 + cos * c0)
    return matrix, width, height


def random_placements(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` random placements: rotation within ``ROTATION`` degrees, scale in ``SCALE``, canvas in ``CANVAS``."""
    theta = np.deg2rad(rng.uniform(-ROTATION, ROTATION, n))
    scale = rng.uniform(*SCALE, n)
    width = rng.integers(CANVAS[0], CANVAS[1] + 1, n)
    height = rng.integers(CANVAS[0], CANVAS[1] + 1, n)
    return placements(theta, scale, width, height, rng.random((n, 2)))


def map_landmarks(matrix: np.ndarray) -> np.ndarray:
    """``ARCFACE_DST`` through each transform ``[n, 2, 3]``: ``[n, 5, 2]`` float64."""
    dst = ARCFACE_DST.astype(np.float64)
    return np.einsum("nij,kj->nki", matrix[:, :, :2], dst) + matrix[:, None, :, 2]


# --------------------------------------------------------------------------------- real faces
def default_face_sources() -> list[Path]:
    """The project's sample faces: ``small_lfw.bin`` and ``small_dataset`` in ``$ARCFACE_SHARED_DATA`` (else
    ``../shared/data`` beside the project), those that exist."""
    shared = Path(os.environ.get("ARCFACE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    return [p for p in (shared / "small_lfw.bin", shared / "small_dataset") if p.exists()]


def _aligned(bgr: np.ndarray, path: Path, what: str) -> np.ndarray:
    if bgr.shape[:2] != (CROP_SIZE, CROP_SIZE):
        raise UserError(path, f"{what}: {bgr.shape[1]}x{bgr.shape[0]}, expected a {CROP_SIZE}x{CROP_SIZE} "
                        "aligned face")
    return np.ascontiguousarray(bgr)


def _read_source(path: Path) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """Faces (BGR) of one source and pairs of face indices known to show one identity."""
    import cv2

    from converters.folders import IMAGE_SUFFIXES, list_images, read_image_file
    from converters.images import decode_image

    if path.is_file() and path.suffix.lower() == ".bin":
        from converters.binfile import read_bin

        pack = read_bin(path)
        faces = [cv2.cvtColor(pack.decode(i), cv2.COLOR_RGB2BGR) for i in range(len(pack))]
        links = [(2 * k, 2 * k + 1) for k, same in enumerate(pack.issame) if same]
        return faces, links
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return [_aligned(decode_image(read_image_file(path), path, "image"), path, "image")], []
    if path.is_file() and path.name != "label.txt":
        raise UserError(path, "not a face source: give a .bin pack, an image folder, label.txt or an image")
    listing = list_images(path)
    faces = [_aligned(decode_image(read_image_file(p), p, "image"), p, "image") for p in listing.paths]
    first: dict[int, int] = {}
    links = []
    for i, label in enumerate(listing.labels):
        links.append((first.setdefault(label, i), i))
    return faces, links


def load_identities(sources: Sequence[str | Path]) -> list[list[np.ndarray]]:
    """Real identities of ``sources``: lists of distinct 112x112 BGR faces, in order of first appearance.

    Faces are joined into one identity by a pack's same-identity pairs, by a folder's class labels, and by
    being pixel-identical (in any sources); pixel-identical faces are kept once."""
    faces: list[np.ndarray] = []
    parent: list[int] = []

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(a: int, b: int) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    seen: dict[bytes, int] = {}
    for source in sources:
        path = Path(source)
        if not path.exists():
            raise UserError(path, "no such file or folder")
        found, links = _read_source(path)
        base = len(faces)
        for face in found:
            faces.append(face)
            parent.append(len(parent))
            key = hashlib.sha256(face.tobytes()).digest()
            if key in seen:
                join(seen[key], len(faces) - 1)
            else:
                seen[key] = len(faces) - 1
        for a, b in links:
            join(base + a, base + b)
    groups: dict[int, list[np.ndarray]] = {}
    kept: set[bytes] = set()
    for i, face in enumerate(faces):
        key = hashlib.sha256(face.tobytes()).digest()
        if key not in kept:
            kept.add(key)
            groups.setdefault(root(i), []).append(face)
    if not groups:
        raise UserError(None, "the face sources hold no faces")
    return list(groups.values())


def _recolour(face: np.ndarray, gains: np.ndarray, gamma: float) -> np.ndarray:
    """A strong colour change: per-channel gains after a gamma curve."""
    x = (face.astype(np.float32) / 255.0) ** np.float32(gamma)
    return np.clip(x * gains.astype(np.float32) * 255.0, 0, 255).round().astype(np.uint8)


def _jitter(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A mild photometric change: brightness, contrast, a slight colour cast and noise."""
    gain = rng.uniform(0.9, 1.1) * rng.uniform(0.97, 1.03, size=3)
    bias = rng.uniform(-8.0, 8.0)
    noise = rng.normal(0.0, 2.0, size=face.shape)
    mean = face.mean()
    x = (face.astype(np.float64) - mean) * gain + mean + bias + noise
    return np.clip(x, 0, 255).round().astype(np.uint8)


def _background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random colour field with texture, ``[height, width, 3]`` uint8."""
    import cv2

    coarse = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.float32)
    field = cv2.resize(coarse, (int(width), int(height)), interpolation=cv2.INTER_CUBIC)
    texture = rng.normal(0.0, 10.0, size=field.shape).astype(np.float32)
    return np.clip(field + texture, 0, 255).astype(np.uint8)


def paste(face: np.ndarray, matrix: np.ndarray, width: int, height: int, background: np.ndarray) -> np.ndarray:
    """``face`` warped by ``matrix`` (bilinear) over ``background``, its edges blended."""
    import cv2

    size = (int(width), int(height))
    warped = cv2.warpAffine(face.astype(np.float32), matrix, size, flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    cover = cv2.warpAffine(np.ones(face.shape[:2], np.float32), matrix, size, flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out = background.astype(np.float32) * (1.0 - cover[..., None]) + warped
    return np.clip(out, 0, 255).round().astype(np.uint8)


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return buf.tobytes()


# ------------------------------------------------------------------------------ structure of identities
def identity_structure(images: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int, int]:
    """One identity's ``images`` (>= 2): ``(media, template)`` local indices per image, numbers of medias
    and templates. Medias of 1-4 images; 2-4 templates of whole medias; sometimes one frame of a video
    moved to another template (a media in two templates)."""
    sizes: list[int] = []
    while sum(sizes) < images:
        sizes.append(int(rng.choice([1, 1, 2, 3, 4])))
    sizes[-1] -= sum(sizes) - images
    if len(sizes) == 1:
        sizes = [1, images - 1]
    n_media = len(sizes)
    n_templates = int(rng.integers(2, min(n_media, 4) + 1))
    cuts = np.sort(rng.choice(np.arange(1, n_media), n_templates - 1, replace=False))
    template_of_slot = np.searchsorted(cuts, np.arange(n_media), side="right")
    template_of_media = np.empty(n_media, dtype=np.int64)
    template_of_media[rng.permutation(n_media)] = template_of_slot
    media = np.repeat(np.arange(n_media), sizes)
    template = template_of_media[media]
    videos = [m for m in range(n_media) if sizes[m] >= 2]
    if videos and rng.random() < 1 / 3:
        m = videos[int(rng.integers(len(videos)))]
        frame = int(np.flatnonzero(media == m)[-1])
        others = [t for t in range(n_templates) if t != template_of_media[m]]
        template[frame] = others[int(rng.integers(len(others)))]
    return media, template, n_media, n_templates


@dataclass
class IjbSynthetic:
    """What ``write_synthetic_ijb`` wrote, per image in line order and per pair in file order."""

    root: Path
    target: str
    names: list[str]
    templates: np.ndarray  # int64 [N] template id
    medias: np.ndarray  # int64 [N] media id
    landmarks: np.ndarray  # float32 [N, 5, 2] as written (3 decimals)
    faceness: np.ndarray  # float32 [N] as written (6 decimals)
    identities: np.ndarray  # int64 [N] synthetic identity
    real_identity: np.ndarray  # int64 [N] index of the real identity the face comes from
    reused: np.ndarray  # bool [N] the face is a mirrored, recoloured reuse
    matrices: np.ndarray  # float64 [N, 2, 3] face crop -> loose crop
    p1: np.ndarray  # int64 [P]
    p2: np.ndarray  # int64 [P]
    labels: np.ndarray  # int64 [P]
    faces: np.ndarray | None = field(default=None, repr=False)  # uint8 [N, 112, 112, 3] BGR pasted faces


def write_synthetic_ijb(out: str | Path, identities: int, *, target: str = "IJBC", images_per_identity: int = 6,
                        seed: int = 0, faces: Sequence | None = None,
                        impostors_per_genuine: int = IMPOSTORS_PER_GENUINE, order: str = "shuffled",
                        keep_faces: bool = False) -> IjbSynthetic:
    """Write a synthetic IJB data set (meta files and loose crops) into the new folder ``out``.

    ``faces``: face sources (paths; default ``default_face_sources()``) or identities already loaded by
    ``load_identities``. ``keep_faces`` returns the pasted faces (after the mild change) for checks."""
    from converters.outputs import atomic_directory

    if target not in TARGETS:
        raise ValueError(f"target {target!r}: expected one of {', '.join(TARGETS)}")
    if order not in ORDERS:
        raise ValueError(f"order {order!r}: expected one of {', '.join(ORDERS)}")
    if identities < 1 or images_per_identity < 2:
        raise ValueError("need at least 1 identity and 2 images per identity")
    with atomic_directory(out) as tmp:
        if faces is None:
            faces = default_face_sources()
            if not faces:
                raise UserError(None, "no --faces given and no sample faces found (small_lfw.bin, "
                                "small_dataset in $ARCFACE_SHARED_DATA or ../shared/data)")
        real = load_identities(faces) if faces and isinstance(faces[0], (str, os.PathLike)) else list(faces)
        rng = np.random.default_rng(seed)
        data, render = _build(identities, images_per_identity, real, rng, impostors_per_genuine, order)
        _write_full(Path(tmp), target, data, render, rng, keep_faces)
    data.root, data.target = Path(out), target
    return data


def _build(identities: int, per_identity: int, real: list[list[np.ndarray]], rng: np.random.Generator,
           impostors_per_genuine: int, order: str) -> tuple[IjbSynthetic, dict]:
    """The structure, placements and pairs (``IjbSynthetic``) and what rendering the images needs."""
    n_real = len(real)
    rounds = -(-identities // n_real)
    real_of = np.concatenate([rng.permutation(n_real) for _ in range(rounds)])[:identities]
    reuse = np.arange(identities) >= n_real
    ident, media, template, photo = [], [], [], []
    sizes = []
    n_media = n_templates = 0
    for i in range(identities):
        m, t, nm, nt = identity_structure(per_identity, rng)
        choice = rng.integers(len(real[real_of[i]]), size=nm)  # one photo per media
        ident.append(np.full(per_identity, i))
        media.append(m + n_media)
        template.append(t + n_templates)
        photo.append(choice[m])
        sizes.append(nt)
        n_media += nm
        n_templates += nt
    ident_a, media_a = np.concatenate(ident), np.concatenate(media)
    template_a, photo_a = np.concatenate(template), np.concatenate(photo)
    template_ids, media_ids = spread_ids(n_templates, rng), spread_ids(n_media, rng)

    # frames of a media: one base placement, slightly moved per frame
    n = len(ident_a)
    base_theta = np.deg2rad(rng.uniform(-ROTATION, ROTATION, n_media))[media_a]
    base_scale = rng.uniform(*SCALE, n_media)[media_a]
    base_u = rng.random((n_media, 2))[media_a]
    width = rng.integers(CANVAS[0], CANVAS[1] + 1, n_media)[media_a]
    height = rng.integers(CANVAS[0], CANVAS[1] + 1, n_media)[media_a]
    theta = np.clip(base_theta + np.deg2rad(rng.uniform(-3, 3, n)), -np.deg2rad(ROTATION), np.deg2rad(ROTATION))
    scale = np.clip(base_scale * rng.uniform(0.97, 1.03, n), *SCALE)
    u = np.clip(base_u + rng.uniform(-0.05, 0.05, (n, 2)), 0, 1)
    matrices, width, height = placements(theta, scale, width, height, u)
    faceness = rng.uniform(*FACENESS, n)

    lines = rng.permutation(n) if order == "shuffled" else np.argsort(template_ids[template_a], kind="stable")
    end = block_ends(sizes)
    genuine, impostor_cap = pair_capacity(end)
    impostors = min(impostors_per_genuine * genuine, impostor_cap)
    pairs = list(pair_blocks(end, genuine, impostors, rng))
    t1 = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0, np.int64)
    t2 = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0, np.int64)
    labels = np.concatenate([p[2] for p in pairs]) if pairs else np.zeros(0, np.int64)

    landmarks_scaled, landmarks = fixed_point(map_landmarks(matrices[lines]), LANDMARK_DECIMALS)
    faceness_scaled, score = fixed_point(faceness[lines], FACENESS_DECIMALS)
    data = IjbSynthetic(
        root=Path(), target="", names=[f"{k}.jpg" for k in range(1, n + 1)],
        templates=template_ids[template_a[lines]], medias=media_ids[media_a[lines]],
        landmarks=landmarks.astype(np.float32), faceness=score.astype(np.float32),
        identities=ident_a[lines].astype(np.int64), real_identity=real_of[ident_a[lines]].astype(np.int64),
        reused=reuse[ident_a[lines]], matrices=matrices[lines], p1=template_ids[t1], p2=template_ids[t2],
        labels=labels)
    render = {"real": real, "real_of": real_of, "reuse": reuse, "photo": photo_a[lines], "width": width[lines],
              "height": height[lines], "landmarks": landmarks_scaled.reshape(-1, 10), "faceness": faceness_scaled}
    return data, render


def _write_full(root: Path, target: str, data: IjbSynthetic, render: dict, rng: np.random.Generator,
                keep_faces: bool) -> None:
    real, real_of, reuse = render["real"], render["real_of"], render["reuse"]
    photo, width, height = render["photo"], render["width"], render["height"]
    identities = len(real_of)
    recolour = {i: (rng.uniform(0.6, 1.4, size=3), float(rng.uniform(0.6, 1.6)))
                for i in range(identities) if reuse[i]}
    crops = root / "loose_crop"
    crops.mkdir()
    kept = np.empty((len(data.names), CROP_SIZE, CROP_SIZE, 3), np.uint8) if keep_faces else None
    for k, name in enumerate(data.names):
        i = int(data.identities[k])
        face = real[real_of[i]][int(photo[k])]
        if reuse[i]:
            gains, gamma = recolour[i]
            face = _recolour(face[:, ::-1], gains, gamma)
        face = _jitter(face, rng)
        if kept is not None:
            kept[k] = face
        image = paste(face, data.matrices[k], width[k], height[k], _background(width[k], height[k], rng))
        (crops / name).write_bytes(encode_jpeg(image))
    data.faces = kept
    _write_meta(root, target, np.arange(1, len(data.names) + 1), data.templates, data.medias,
                render["landmarks"], render["faceness"], iter([(data.p1, data.p2, data.labels)]))


def _write_meta(root: Path, target: str, numbers: np.ndarray, templates: np.ndarray, medias: np.ndarray,
                landmarks_scaled: np.ndarray, faceness_scaled: np.ndarray,
                pairs: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> int:
    """The three meta files; landmarks ``[N, 10]`` and faceness ``[N]`` as fixed-point integers; pairs as
    ``(tid1, tid2, label)`` id blocks. Returns the number of pairs written."""
    paths = meta_paths(root, target)
    paths["pairs"].parent.mkdir(parents=True, exist_ok=True)
    n = len(numbers)
    with open(paths["face_tid_mid"], "wb") as fh:
        for s in range(0, n, CHUNK):
            e = min(s + CHUNK, n)
            fh.write(text_lines([numbers[s:e], b".jpg ", templates[s:e], b" ", medias[s:e]], e - s))
    with open(paths["landmarks"], "wb") as fh:
        for s in range(0, n, CHUNK // 4):
            e = min(s + CHUNK // 4, n)
            pieces: list = [numbers[s:e], b".jpg"]
            for c in range(10):
                pieces += [b" ", *fixed_pieces(landmarks_scaled[s:e, c], LANDMARK_DECIMALS)]
            pieces += [b" ", *fixed_pieces(faceness_scaled[s:e], FACENESS_DECIMALS)]
            fh.write(text_lines(pieces, e - s))
    written = 0
    with open(paths["pairs"], "wb") as fh:
        for t1, t2, label in pairs:
            fh.write(text_lines([t1, b" ", t2, b" ", label], len(t1)))
            written += len(t1)
    return written


# --------------------------------------------------------------------------------------- meta-only mode
@dataclass
class IjbMeta:
    """What ``write_meta_only`` wrote."""

    root: Path
    target: str
    images: int
    templates: int
    medias: int
    pairs: int
    genuine: int
    identities: int
    features: Path | None


def default_genuine(pairs: int) -> int:
    """IJB-C's share of genuine pairs (19,557 of 15,658,489), at least 1."""
    return min(pairs, max(1, round(pairs * IJBC_GENUINE_FRACTION)))


def meta_identity_sizes(templates: int, genuine: int, rng: np.random.Generator) -> np.ndarray:
    """Templates per identity: about six (more when ``genuine`` needs it: twice the genuine pairs fit)."""
    mean = max(6, math.ceil(4 * genuine / max(templates, 1)) + 1)
    mean = min(mean, templates)
    sizes = []
    total = 0
    while total < templates:
        size = int(rng.integers(max(2, mean - 2), mean + 3)) if mean >= 2 else 1
        sizes.append(min(size, templates - total))
        total += sizes[-1]
    if len(sizes) > 1 and sizes[-1] < 2:
        last = sizes.pop()
        sizes[-1] += last
    return np.asarray(sizes, dtype=np.int64)


def write_meta_only(out: str | Path, images: int, templates: int, pairs: int, genuine: int | None = None, *,
                    target: str = "IJBC", seed: int = 0, features: str | Path | None = None, dim: int = 512,
                    order: str = "shuffled") -> IjbMeta:
    """The three meta files (no images) of ``images`` images in ``templates`` templates and ``pairs``
    pairs (``genuine`` of them genuine), and optionally raw features ``[images, 2, dim]`` float32 (.npy)."""
    import contextlib

    from converters.outputs import atomic_directory, atomic_output, check_outputs, is_inside

    if target not in TARGETS or order not in ORDERS:
        raise ValueError(f"target {target!r} / order {order!r}: expected {TARGETS} / {ORDERS}")
    if not 1 <= templates <= images:
        raise UserError(None, f"--templates {templates}: must be between 1 and --images ({images})")
    if templates < 2:
        raise UserError(None, f"--templates {templates}: a pair needs two templates")
    genuine = default_genuine(pairs) if genuine is None else genuine
    if not 0 <= genuine <= pairs:
        raise UserError(None, f"--genuine {genuine}: must be between 0 and --pairs ({pairs})")
    rng = np.random.default_rng(seed)
    sizes = meta_identity_sizes(templates, genuine, rng)
    end = block_ends(sizes)
    genuine_cap, impostor_cap = pair_capacity(end)
    if genuine > genuine_cap:
        raise UserError(None, f"--genuine {genuine}: {templates} templates allow only {genuine_cap} genuine "
                        "pairs here; give more --templates")
    if pairs - genuine > impostor_cap:
        raise UserError(None, f"--pairs {pairs}: {templates} templates allow only {impostor_cap} impostor "
                        f"pairs besides {genuine} genuine ones; give fewer --pairs or more --templates")
    if features is not None:
        check_outputs({}, {"OUT": out, "--features": features}, prepare=False)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(atomic_directory(out)))
        feature_tmp = None
        if features is not None:
            if is_inside(features, out):
                inner = Path(os.path.realpath(features)).relative_to(os.path.realpath(out))
                feature_tmp = tmp / inner
                feature_tmp.parent.mkdir(parents=True, exist_ok=True)
            else:
                feature_tmp = Path(stack.enter_context(atomic_output(features)))
        # images per template: one each, the rest spread with skewed weights (some templates of one image)
        weights = rng.lognormal(0.0, 1.0, templates)
        counts = 1 + rng.multinomial(images - templates, weights / weights.sum())
        template_of = np.repeat(np.arange(templates, dtype=np.int64), counts)
        first = np.zeros(images, dtype=bool)
        first[np.cumsum(counts) - counts] = True
        media_of = np.cumsum(first | (rng.random(images) < 0.4)) - 1
        n_media = int(media_of[-1]) + 1
        template_ids, media_ids = spread_ids(templates, rng), spread_ids(n_media, rng)
        lines = (rng.permutation(images) if order == "shuffled"
                 else np.argsort(template_ids[template_of], kind="stable"))
        template_of, media_of = template_of[lines], media_of[lines]
        del lines
        identity_of_template = np.repeat(np.arange(len(sizes)), sizes)
        numbers = np.arange(1, images + 1, dtype=np.int64)
        landmarks = np.empty((images, 10), dtype=np.int64)
        for s in range(0, images, CHUNK):
            e = min(s + CHUNK, images)
            matrix, _, _ = random_placements(e - s, rng)
            landmarks[s:e] = fixed_point(map_landmarks(matrix).reshape(-1, 10), LANDMARK_DECIMALS)[0]
        faceness = fixed_point(rng.uniform(*FACENESS, images), FACENESS_DECIMALS)[0]

        def id_blocks():
            for t1, t2, label in pair_blocks(end, genuine, pairs - genuine, rng):
                yield template_ids[t1], template_ids[t2], label

        written = _write_meta(tmp, target, numbers, template_ids[template_of], media_ids[media_of], landmarks,
                              faceness, id_blocks())
        assert written == pairs
        if feature_tmp is not None:
            write_features(feature_tmp, template_of, identity_of_template, dim, rng)
    return IjbMeta(Path(out), target, images, templates, n_media, pairs, genuine, len(sizes),
                   None if features is None else Path(features))


def write_features(path: Path, template_of: np.ndarray, identity_of_template: np.ndarray, dim: int,
                   rng: np.random.Generator) -> None:
    """Raw features ``[N, 2, dim]`` float32 of images in templates ``template_of`` (indices), written block by
    block into a ``.npy`` (header, then the rows; one block in memory at a time).

    A feature is its identity's direction, plus its template's direction weighted by a per-template
    nuisance in [0.5, 2.5] (so that some genuine templates agree far less than others), plus per-image
    noise, scaled by a random norm; the mirror row is the same plus a little more noise. Directions come
    from pools of at most ``POOL`` vectors (distinct below that many identities or templates)."""
    n = len(template_of)
    identities = int(identity_of_template.max()) + 1 if len(identity_of_template) else 1
    centres = rng.standard_normal((min(identities, POOL), dim)).astype(np.float32)
    offsets = rng.standard_normal((min(len(identity_of_template), POOL), dim)).astype(np.float32)
    nuisance = rng.uniform(0.5, 2.5, len(identity_of_template)).astype(np.float32)
    rows = max(1, FEATURE_CHUNK_VALUES // (2 * dim))
    unit = np.float32(1 / 64)  # int8 noise -> uniform within +-2 per value
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                  "fortran_order": False, "shape": (n, 2, dim)})
        for s in range(0, n, rows):
            e = min(s + rows, n)
            t = template_of[s:e]
            block = rng.integers(-128, 128, size=(e - s, 2, dim), dtype=np.int8).astype(np.float32)
            block *= unit
            block[:, 1] *= np.float32(0.25)
            block[:, 1] += block[:, 0]
            block += (centres[identity_of_template[t] % len(centres)]
                      + nuisance[t, None] * offsets[t % len(offsets)])[:, None, :]
            block *= rng.uniform(4.0, 30.0, size=(e - s, 1, 1)).astype(np.float32) / np.float32(math.sqrt(dim))
            fh.write(block.tobytes())


# ---------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="ijb_synthetic.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to create (must not exist, or be empty)")
    parser.add_argument("--target", choices=TARGETS, default="IJBC", help="file names ijbc_* or ijbb_*")
    parser.add_argument("--seed", type=random_seed, default=0)
    parser.add_argument("--order", choices=ORDERS, default="shuffled",
                        help="image lines in random order (default) or grouped by ascending template id")
    group = parser.add_argument_group("images (default mode)")
    group.add_argument("--identities", type=int_range(1, 1_000_000), help="synthetic identities")
    group.add_argument("--images-per-identity", type=int_range(2, 10_000), default=None,
                       help="images of each identity (default 6)")
    group.add_argument("--impostors-per-genuine", type=int_range(0, 1_000_000), default=None,
                       help=f"impostor pairs per genuine pair (default {IMPOSTORS_PER_GENUINE})")
    group.add_argument("--faces", type=Path, nargs="+", default=None,
                       help="face sources: .bin packs, image folders (label.txt or class folders), images "
                       "(default: the project's sample faces)")
    group = parser.add_argument_group("--meta-only mode")
    group.add_argument("--meta-only", action="store_true", help="write the three meta files only")
    group.add_argument("--images", type=int_range(1, 1_000_000_000))
    group.add_argument("--templates", type=int_range(1, 1_000_000_000))
    group.add_argument("--pairs", type=int_range(1, 10_000_000_000))
    group.add_argument("--genuine", type=int_range(0, 10_000_000_000),
                       help="genuine pairs among --pairs (default: IJB-C's share, at least 1)")
    group.add_argument("--features", type=Path, help="also write random raw features [N, 2, D] (.npy)")
    group.add_argument("--dim", type=int_range(1, 65_536), default=None, help="feature size (default 512)")
    args = parser.parse_args(argv)

    from converters.outputs import check_outputs, prepare_output_dir

    if args.meta_only:
        misplaced = [name for name, value in (("--identities", args.identities), ("--faces", args.faces),
                                              ("--images-per-identity", args.images_per_identity),
                                              ("--impostors-per-genuine", args.impostors_per_genuine))
                     if value is not None]
        if misplaced:
            raise UserError(None, f"{misplaced[0]} does not apply to --meta-only")
        missing = [name for name, value in (("--images", args.images), ("--templates", args.templates),
                                            ("--pairs", args.pairs)) if value is None]
        if missing:
            raise UserError(None, f"--meta-only needs {', '.join(missing)}")
        if args.dim is not None and args.features is None:
            raise UserError(None, "--dim applies to --features only")
        prepare_output_dir(args.out)
        meta = write_meta_only(args.out, args.images, args.templates, args.pairs, args.genuine,
                               target=args.target, seed=args.seed, features=args.features,
                               dim=args.dim or 512, order=args.order)
        extra = f"; features {args.features} [{meta.images}, 2, {args.dim or 512}] float32" if args.features else ""
        print(f"wrote {args.out}: {meta.images} images, {meta.templates} templates, {meta.medias} medias, "
              f"{meta.pairs} pairs ({meta.genuine} genuine), meta files only{extra}")
        return 0
    misplaced = [name for name, value in (("--images", args.images), ("--templates", args.templates),
                                          ("--pairs", args.pairs), ("--genuine", args.genuine),
                                          ("--features", args.features), ("--dim", args.dim)) if value is not None]
    if misplaced:
        raise UserError(None, f"{misplaced[0]} applies to --meta-only only")
    if args.identities is None:
        raise UserError(None, "--identities is required (or --meta-only with --images, --templates, --pairs)")
    check_outputs({"--faces": args.faces}, {"OUT": args.out}, folders=True)
    data = write_synthetic_ijb(args.out, args.identities, target=args.target,
                               images_per_identity=args.images_per_identity or 6, seed=args.seed,
                               faces=args.faces, order=args.order,
                               impostors_per_genuine=(IMPOSTORS_PER_GENUINE if args.impostors_per_genuine is None
                                                      else args.impostors_per_genuine))
    genuine = int(data.labels.sum())
    print(f"wrote {args.out}: {args.identities} identities ({len(np.unique(data.real_identity))} real ones"
          f"{', some reused mirrored and recoloured' if data.reused.any() else ''}), {len(data.names)} images, "
          f"{len(np.unique(data.templates))} templates, {len(np.unique(data.medias))} medias, "
          f"{len(data.labels)} pairs ({genuine} genuine)")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main())
