"""Check a whole RecordIO pack and list every problem found, each naming the file and the key or offset.

The ``.rec`` file is scanned from start to end independently of the index (magic, part flags, lengths,
padding, truncation, IRHeader and label sizes); then the ``.idx`` is checked against what the scan found
(malformed lines, duplicate keys, offsets past the end or not at a record start, unindexed records), then
InsightFace's layout (meta header range against the keys, identity records against the image labels,
integer class labels, ``property``), and with ``decode`` every image is decoded with OpenCV.
``python -m train.data.recordio verify DIR [--decode]`` runs it.
"""

from __future__ import annotations

import math
import mmap
import sys
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from converters.images import ImageRefused, decode_bgr

from .layout import header_range, range_mismatch, read_property
from .recordio import (
    FLOAT32_EXACT_INT,
    CorruptRecord,
    RecordIOError,
    decode_record,
    describe_idx_line,
    duplicate_keys,
    find_aligned_magic,
    is_class_id,
    pack_paths,
    parse_idx,
    parse_parts,
    sorted_unique,
)

LISTED_PER_KIND = 20  # repeated problems of one kind (e.g. bad labels) are listed this often, then counted


@dataclass
class VerifyResult:
    """What ``verify_pack`` found: summary rows for people and the list of problems (empty = sound)."""

    rec_path: Path
    idx_path: Path
    summary: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _Scan:
    """Per logical record found by the sequential scan, in file order."""

    offsets: array = field(default_factory=lambda: array("q"))
    flags: array = field(default_factory=lambda: array("q"))  # -1: IRHeader unreadable
    label0: array = field(default_factory=lambda: array("d"))  # label, or label[0] when multi-label
    label1: array = field(default_factory=lambda: array("d"))  # label[1] when flag >= 2, else nan
    split: int = 0
    corrupt: set = field(default_factory=set)  # offsets where a record could not be read


class _Problems:
    """Collects problem lines; after ``LISTED_PER_KIND`` of one kind, only counts them."""

    def __init__(self, path: Path):
        self.path = path
        self.lines: list[str] = []
        self.counts: dict[str, int] = {}

    def add(self, kind: str, text: str, path: Path | None = None) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.counts[kind] <= LISTED_PER_KIND:
            self.lines.append(f"{path or self.path}: {text}")

    def finish(self) -> list[str]:
        more = [f"{self.path}: ... and {n - LISTED_PER_KIND} more problems of the kind '{kind}'"
                for kind, n in self.counts.items() if n > LISTED_PER_KIND]
        return self.lines + more


def _scan(buf, size: int, where, problems: _Problems, progress: bool) -> _Scan:
    scan = _Scan()
    pos = 0
    bar = tqdm(total=size, unit="B", unit_scale=True, desc="scan", file=sys.stderr,
               disable=None if progress else True)
    while pos < size:
        try:
            data, end, parts = parse_parts(buf, pos, size)
        except CorruptRecord as err:
            scan.corrupt.add(pos)
            part = f", part at offset {err.offset}" if err.offset != pos else ""
            if err.truncated:
                problems.add("truncated", f"{where(pos)}{part}: {err.problem}")
                break
            resume = find_aligned_magic(buf, (pos + 4) & ~3)
            skipped = (f"skipped {resume - pos} bytes to the next magic at offset {resume}" if resume != -1
                       else f"no further magic; the last {size - pos} bytes are unreadable")
            problems.add("corrupt", f"{where(pos)}{part}: {err.problem}; {skipped}")
            if resume == -1:
                break
            bar.update(resume - pos)
            pos = resume
            continue
        scan.offsets.append(pos)
        scan.split += parts > 1
        try:
            header, _ = decode_record(data)
        except ValueError as err:
            problems.add("header", f"{where(pos)}: {err}")
            scan.flags.append(-1)
            scan.label0.append(math.nan)
            scan.label1.append(math.nan)
        else:
            labels = header.label if isinstance(header.label, tuple) else (header.label,)
            scan.flags.append(header.flag)
            scan.label0.append(labels[0])
            scan.label1.append(labels[1] if len(labels) > 1 else math.nan)
        bar.update(end - pos)
        pos = end
    bar.close()
    return scan


@dataclass
class _Index:
    """The ``.idx`` entries and, per key, the scanned record its offset points to (-1: none)."""

    keys: np.ndarray
    offsets: np.ndarray
    record_of: np.ndarray = None

    def __post_init__(self):
        self._by_offset = np.argsort(self.offsets, kind="stable")
        self._sorted_offsets = self.offsets[self._by_offset]
        self._by_key = np.argsort(self.keys, kind="stable")
        self.sorted_keys = self.keys[self._by_key]

    def where(self, offset: int) -> str:
        """``record key K at offset O`` for a record the idx names, else ``offset O (no idx entry)``."""
        i = int(np.searchsorted(self._sorted_offsets, offset))
        if i < len(self._sorted_offsets) and self._sorted_offsets[i] == offset:
            return f"record key {self.keys[self._by_offset[i]]} at offset {offset}"
        return f"offset {offset} (no idx entry)"

    def records(self, query: np.ndarray) -> np.ndarray:
        """The scanned record index of each key in ``query`` (-1 when the key or its record is missing)."""
        if not len(self.keys):
            return np.full(len(query), -1, np.int64)
        i = np.minimum(np.searchsorted(self.sorted_keys, query), len(self.keys) - 1)
        return np.where(self.sorted_keys[i] == query, self.record_of[self._by_key[i]], -1)


def _as_array(values: array, dtype) -> np.ndarray:
    return np.frombuffer(values, dtype) if len(values) else np.zeros(0, dtype)


def verify_pack(root: str | Path, decode: bool = False, progress: bool = True) -> VerifyResult:
    """Scan and cross-check a whole pack (folder or ``.rec`` path); never stops at the first problem."""
    rec_path, idx_path = pack_paths(root)
    for path in (rec_path, idx_path):
        if not path.is_file():
            raise RecordIOError(path, "no such file")
    problems = _Problems(rec_path)
    size = rec_path.stat().st_size
    keys, offsets, bad_lines = parse_idx(idx_path.read_bytes())
    for number, text in bad_lines:
        problems.add("idx line", describe_idx_line(number, text), idx_path)
    index = _Index(keys, offsets)
    with open(rec_path, "rb") as fh, \
            (mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else memoryview(b"")) as buf:
        scan = _scan(buf, size, index.where, problems, progress)
        starts = _as_array(scan.offsets, np.int64)
        index.record_of = _check_idx(index, starts, scan, size, rec_path, idx_path, problems)
        layout = _check_layout(index, scan, problems, idx_path)
        images, classes = layout.image_keys, layout.classes
        prop = _check_property(rec_path.parent / "property", layout, problems)
        decoded = _decode_images(buf, index, images, starts, prop, problems, progress) if decode else None
    multi = int((_as_array(scan.flags, np.int64) > 0).sum())
    summary = [
        ("rec file", f"{rec_path} ({size:,} bytes)"),
        ("records in rec", f"{len(scan.offsets):,} ({scan.split:,} split into parts, {multi:,} with label "
                           "arrays)"),
        ("idx entries", f"{len(keys):,}"),
        ("layout", layout.text),
        ("images", f"{len(images):,}"),
        ("classes", f"{classes:,}"),
        ("property", "absent" if prop is None else ",".join(map(str, prop))),
    ]
    if decoded is not None:
        summary.append(("decoded images", f"{decoded:,}"))
    summary.append(("problems", f"{sum(problems.counts.values()):,}"))
    return VerifyResult(rec_path, idx_path, summary, problems.finish())


def _check_idx(index: _Index, starts: np.ndarray, scan: _Scan, size: int, rec_path: Path, idx_path: Path,
               problems: _Problems) -> np.ndarray:
    """Check idx entries against the scanned records; returns each entry's record index (-1 = none)."""
    keys, offsets = index.keys, index.offsets
    for key, first, second in duplicate_keys(keys):
        problems.add("duplicate key", f"duplicate key {key} (lines {first} and {second})", idx_path)
    at = np.searchsorted(starts, offsets)
    found = np.zeros(len(offsets), bool)
    if len(starts):
        found = starts[np.minimum(at, len(starts) - 1)] == offsets
    for i in np.flatnonzero(~found).tolist():
        key, offset = int(keys[i]), int(offsets[i])
        if offset in scan.corrupt:
            continue  # the scan has reported this record under its key
        where = "is past the end of" if offset + 8 > size else "is not the start of a record in"
        problems.add("idx offset", f"record key {key}: offset {offset} {where} {rec_path.name} "
                     f"({size} bytes)", idx_path)
    record_of = np.where(found, at, -1)
    indexed = np.zeros(len(starts), bool)
    indexed[record_of[found]] = True
    if not indexed.all():
        missing = np.flatnonzero(~indexed)
        problems.add("unindexed", f"{missing.size} records are not in {idx_path.name} (the first at offset "
                     f"{starts[missing[0]]})")
    targets, target_keys = record_of[found], keys[found]
    order = np.argsort(targets, kind="stable")
    for j in np.flatnonzero(targets[order][1:] == targets[order][:-1]).tolist():
        a, b = int(target_keys[order[j]]), int(target_keys[order[j + 1]])
        problems.add("shared offset", f"keys {a} and {b} both point to the record at offset "
                     f"{starts[targets[order[j]]]}", idx_path)
    return record_of


def _class_ids(values: np.ndarray) -> np.ndarray:
    """Which float labels are usable class ids (non-negative integers float32 holds exactly)."""
    with np.errstate(invalid="ignore"):
        return (values >= 0) & (values <= FLOAT32_EXACT_INT) & (np.floor(values) == values)


def _check_labels(image_keys: np.ndarray, labels: np.ndarray, problems: _Problems) -> None:
    for i in np.flatnonzero(~_class_ids(labels)).tolist():
        problems.add("label", f"record key {image_keys[i]}: label {float(labels[i])!r} is not an integer "
                     "class id")


@dataclass
class _Layout:
    image_keys: np.ndarray
    labels: np.ndarray  # of the readable image records, as read (float)
    classes: int
    text: str  # for the summary
    has_header: bool  # an InsightFace meta header (record key 0 with a label range)


def _check_layout(index: _Index, scan: _Scan, problems: _Problems, idx_path: Path) -> _Layout:
    """Meta header, identity records and labels."""
    flags, label0, label1 = (_as_array(scan.flags, np.int64), _as_array(scan.label0, np.float64),
                             _as_array(scan.label1, np.float64))
    r0 = int(index.records(np.zeros(1, np.int64))[0])
    if r0 < 0 or flags[r0] <= 0:  # header-less: every key in idx order is an image
        known = index.record_of >= 0
        image_keys, labels = index.keys[known], label0[index.record_of[known]]
        _check_labels(image_keys, labels, problems)
        classes = int(sorted_unique(labels[_class_ids(labels)]).size)
        return _Layout(image_keys, labels, classes, "header-less: every idx key is an image", False)
    try:
        start, end = header_range((float(label0[r0]), float(label1[r0])), idx_path)
    except RecordIOError as err:
        problems.add("header", err.problem)
        return _Layout(np.zeros(0, np.int64), np.zeros(0), 0, "meta header unreadable", False)
    declared = f"meta header (record key 0) declares keys 0..{end - 1}"
    missing, extra = range_mismatch(index.keys, end)
    for key in missing.tolist():
        problems.add("header range", f"{declared} but key {key} is missing from the idx", idx_path)
    for key in extra.tolist():
        problems.add("header range", f"{declared} but the idx also holds key {key}", idx_path)
    image_rec = index.records(np.arange(1, start, dtype=np.int64))
    image_keys = np.arange(1, start, dtype=np.int64)[image_rec >= 0]
    labels = label0[image_rec[image_rec >= 0]]
    _check_labels(image_keys, labels, problems)
    label_by_key = np.full(start, np.nan)  # nan: no readable record (reported already)
    label_by_key[image_keys] = labels
    identity_rec = index.records(np.arange(start, end, dtype=np.int64))
    covered = 1  # the next image an identity record must start at
    for c, r in enumerate(identity_rec.tolist()):
        key = start + c
        if r < 0:
            continue
        s, e = label0[r], label1[r]
        if flags[r] < 2 or not (is_class_id(s) and is_class_id(e)):
            problems.add("identity", f"record key {key}: identity record of class {c} has flag {flags[r]} "
                         f"and label ({float(s)!r}, {float(e)!r}); expected flag 2 and an image range "
                         "[start, end)")
            continue
        s, e = int(s), int(e)
        if s != covered or e < s or e > start:
            problems.add("identity", f"record key {key}: identity record of class {c} covers images "
                         f"[{s}, {e}), expected a range starting at {covered} and ending by {start}")
        elif (wrong := np.flatnonzero((label_by_key[s:e] != c) & ~np.isnan(label_by_key[s:e]))).size:
            k = s + int(wrong[0])
            problems.add("identity", f"record key {key}: identity record of class {c} covers image key {k}, "
                         f"whose label is {float(label_by_key[k])!r}")
        covered = max(e, covered)
    if covered != start:
        problems.add("identity", f"identity records {start}..{end - 1} cover images 1..{covered - 1}, but "
                     f"the meta header declares images 1..{start - 1}")
    return _Layout(image_keys, labels, end - start, f"InsightFace meta header: images 1..{start - 1}, "
                   f"identity records {start}..{end - 1}", True)


def _check_property(path: Path, layout: _Layout, problems: _Problems) -> tuple[int, int, int] | None:
    """``property`` against the pack: its class count must match the identities or cover every label."""
    if not path.is_file():
        return None
    try:
        prop = read_property(path)
    except RecordIOError as err:
        problems.add("property", err.problem, path)
        return None
    labels = layout.labels[_class_ids(layout.labels)]
    if layout.has_header:
        if prop[0] != layout.classes:
            problems.add("property", f"num_classes {prop[0]} but the pack has {layout.classes} identity records",
                         path)
    elif labels.size and prop[0] <= labels.max():
        problems.add("property", f"num_classes {prop[0]} but labels go up to {int(labels.max())}", path)
    return prop


def _decode_images(buf, index: _Index, images: np.ndarray, starts: np.ndarray, prop, problems: _Problems,
                   progress: bool) -> int:
    """Decode every image record with OpenCV; a failure or a size unlike ``property`` is a problem."""
    expected = (prop[1], prop[2]) if prop else None
    records = index.records(images)
    decoded = 0
    for key, r in tqdm(zip(images.tolist(), records.tolist()), total=len(images), desc="decode", unit="img",
                       file=sys.stderr, disable=None if progress else True):
        if r < 0:
            continue
        offset = int(starts[r])
        try:
            _, payload = decode_record(parse_parts(buf, offset, len(buf))[0])
        except (ValueError, CorruptRecord):
            continue  # reported by the scan
        try:  # refused before decoding when the header declares too many pixels or no known format
            bgr = decode_bgr(payload)
        except ImageRefused as err:
            problems.add("decode", f"record key {key} at offset {offset}: image {err.problem}")
            continue
        decoded += 1
        expected = expected or bgr.shape[:2]
        if bgr.shape[:2] != tuple(expected):
            problems.add("image size", f"record key {key} at offset {offset}: image is {bgr.shape[1]}x"
                         f"{bgr.shape[0]} (w x h), expected {expected[1]}x{expected[0]}")
    return decoded
