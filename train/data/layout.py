"""InsightFace's layout of a RecordIO pack: meta header, image and identity records, ``property`` file.

Records 1..n are images (flag 0, label = class id, id = key), records n+1..n+c are one identity record per
class (flag 2, label ``[first image, end image)``, empty payload) and record 0 is the meta header (flag 2,
label ``[n+1, n+c+1)``). A pack whose record 0 is absent or has flag 0 is header-less (im2rec or shuffled
output): every key in idx order is an image. This is exactly how InsightFace's ``MXFaceDataset`` decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from converters.outputs import atomic_directory  # noqa: F401 (re-exported; the writer lives in outputs.py)

from .recordio import FLOAT32_EXACT_INT, IRHeader, RecordIOError, RecordReader, RecordWriter, is_class_id


@dataclass(frozen=True)
class PackLayout:
    """Which keys of a pack are images (in reading order) and, with a meta header, its identity range."""

    image_keys: np.ndarray  # int64 keys of the image records, in the order a dataset reads them
    header: IRHeader | None  # record 0 when it is InsightFace's meta header
    identity_start: int = 0  # first identity-record key (header label[0])
    identity_end: int = 0  # end of the identity records (header label[1])

    @property
    def identity_keys(self) -> range:
        return range(self.identity_start, self.identity_end)


def header_range(label: float | tuple[float, ...], path: Path) -> tuple[int, int]:
    """(first identity key, end) from a meta header's label; an error when it is not such a range."""
    label = label if isinstance(label, tuple) else (label,)
    if len(label) < 2 or not (is_class_id(label[0]) and is_class_id(label[1])) \
            or not 1 <= label[0] <= label[1]:
        raise RecordIOError(path, f"record key 0: meta header label {list(label)} is not a record range "
                            "[first identity record, end) with 1 <= first <= end")
    return int(label[0]), int(label[1])


def range_mismatch(keys: np.ndarray, end: int) -> tuple[np.ndarray, np.ndarray]:
    """(keys of ``range(end)`` absent from ``keys``, keys outside ``range(end)``), both sorted."""
    inside = (keys >= 0) & (keys < end)
    present = np.zeros(end, bool)
    present[keys[inside]] = True
    return np.flatnonzero(~present), np.sort(keys[~inside])


def read_layout(reader: RecordReader) -> PackLayout:
    """Find the image keys as InsightFace does and check a meta header's range against the idx."""
    if len(reader) == 0:
        raise RecordIOError(reader.idx_path, "the pack holds no records")
    header = reader.read_record(0).header if 0 in reader else None
    if header is None or header.flag == 0:
        return PackLayout(reader.keys, None)
    start, end = header_range(header.label, reader.rec_path)
    missing, extra = range_mismatch(reader.keys, end)
    if missing.size or extra.size:
        found = (f"key {missing[0]} is missing from the idx" if missing.size
                 else f"the idx also holds key {extra[0]}")
        raise RecordIOError(reader.idx_path, f"meta header (record key 0) declares images 1..{start - 1} and "
                            f"identity records {start}..{end - 1}, but {found}")
    return PackLayout(np.arange(1, start, dtype=np.int64), header, start, end)


def read_property(path: str | Path) -> tuple[int, int, int]:
    """(num_classes, image height, image width) from an InsightFace ``property`` file."""
    path = Path(path)
    if not path.is_file():
        raise RecordIOError(path, "no such file")
    first = path.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0].strip()
    fields = [f.strip(" \t\r") for f in first.split(",")]
    if len(fields) != 3 or not all(f.isascii() and f.isdigit() for f in fields):
        raise RecordIOError(path, f"line 1: {first[:60]!r} is not '<num_classes>,<height>,<width>'")
    num_classes, height, width = (int(f) for f in fields)
    return num_classes, height, width


def property_text(num_classes: int, height: int, width: int) -> str:
    return f"{num_classes},{height},{width}\n"


def class_ranges(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``[num_classes, 2]`` image-key ranges ``[start, end)`` of each class, images keyed from 1."""
    bounds = np.searchsorted(labels, np.arange(num_classes + 1)) + 1
    return np.stack([bounds[:-1], bounds[1:]], axis=1)


def write_pack(out_dir: Path, labels: Sequence[int], payloads: Iterable[bytes],
               image_size: tuple[int, int]) -> int:
    """Write an InsightFace pack into ``out_dir``: images 1..n, meta header 0, identity records, property.

    ``labels`` must be non-decreasing class ids (images of one class contiguous, classes ascending, as
    InsightFace requires); ``payloads`` yields each image's file bytes, stored unchanged. Records are
    written in the order MXNet wrote the reference pack: images, then the header, then the identities.
    Returns the number of classes.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if n == 0:
        raise RecordIOError(out_dir, "no images to pack")
    if (np.diff(labels) < 0).any() or labels[0] < 0:
        raise ValueError("labels must be non-negative and sorted")
    num_classes = int(labels[-1]) + 1
    if n + num_classes + 1 > FLOAT32_EXACT_INT:
        raise RecordIOError(out_dir, f"{n} images and {num_classes} classes: record indices above 2^24 "
                            "cannot be stored exactly in float32 header labels (use a header-less pack)")
    ranges = class_ranges(labels, num_classes)
    with RecordWriter(out_dir / "train.rec", out_dir / "train.idx") as writer:
        written = 0
        for key, (label, payload) in enumerate(zip(labels.tolist(), payloads), 1):
            writer.write_image(key, float(label), payload)
            written += 1
        if written != n:
            raise ValueError(f"{n} labels but {written} payloads")
        writer.write_image(0, [n + 1, n + 1 + num_classes], id=0)
        for c, (start, end) in enumerate(ranges.tolist()):
            writer.write_image(n + 1 + c, [start, end])
    (out_dir / "property").write_text(property_text(num_classes, *image_size), encoding="ascii")
    return num_classes
