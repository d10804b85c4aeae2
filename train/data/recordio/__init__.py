"""MXNet RecordIO (``train.rec`` + ``train.idx``) in pure Python: the format of InsightFace training packs.

A ``.rec`` file is a concatenation of 4-byte aligned physical parts: magic ``0xCED7230A``, ``lrecord =
cflag << 29 | length``, ``length`` payload bytes, zero padding. A logical record whose bytes contain the
magic at a 4-byte aligned offset is split there into parts (cflag 1 first, 2 middle, 3 last; 0 = whole),
the magic itself being dropped and re-inserted on reading. An image record is a 24-byte ``IRHeader``
(``flag`` uint32, ``label`` float32, ``id`` uint64, ``id2`` uint64; written here explicitly little-endian
where MXNet uses native order) followed, when ``flag > 0``, by ``flag`` float32 labels, then the payload.
The ``.idx`` file is text, one ``<key>\\t<offset>`` line per logical record in write order.

Reading is by key with one positioned read (``os.pread``) per record; the file handle is opened lazily
per process, so a reader built before ``paddle.io.DataLoader`` forks its workers is safe to use in them.

As a command: ``python -m train.data.recordio {dump,verify,pack,unpack,shuffle} ...`` runs the pack tools
of ``train.data.tools`` (through ``__main__.py``, so this module never imports the tools that import it).
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np

from converters.errors import UserError

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
LENGTH_MASK = (1 << 29) - 1  # lrecord: the low 29 bits are the part length, the top 3 bits the cflag
MAX_RECORD = 1 << 29  # dmlc refuses logical records of this size or larger
IRHEADER_SIZE = 24
FLOAT32_EXACT_INT = 1 << 24  # float32 holds every integer up to this exactly (labels, record ranges)
_PART = struct.Struct("<II")  # magic, lrecord
_IRHEADER = struct.Struct("<IfQQ")  # flag, label, id, id2

Label = Union[float, tuple]  # a float for flag == 0, a tuple of ``flag`` floats otherwise


class RecordIOError(UserError):
    """A malformed RecordIO pack or a request it cannot serve: one line naming the file and key or offset."""


class CorruptRecord(Exception):
    """A problem at absolute byte ``offset`` of a ``.rec`` file; callers add the file and the key."""

    def __init__(self, offset: int, problem: str, truncated: bool = False):
        super().__init__(problem)
        self.offset = offset
        self.problem = problem
        self.truncated = truncated


@dataclass(frozen=True)
class IRHeader:
    """MXNet's image-record header; ``label`` is a float (flag 0) or a tuple of ``flag`` floats."""

    flag: int
    label: Label
    id: int
    id2: int


@dataclass(frozen=True)
class Record:
    """One logical record read by key: its header and the payload bytes after header and labels."""

    key: int
    header: IRHeader
    payload: bytes


# ---------------------------------------------------------------------------------------------------
# logical record <-> image record (IRHeader + labels + payload)


def encode_record(label: float | Sequence[float], payload: bytes = b"", id: int = 0, id2: int = 0) -> bytes:
    """An image record as ``mx.recordio.pack`` makes it: a number gives flag 0, a sequence flag = len."""
    if isinstance(label, (int, float, np.integer, np.floating)):
        head = _IRHEADER.pack(0, float(label), id, id2)
        return head + bytes(payload)
    values = np.asarray(label, dtype="<f4").reshape(-1)
    return _IRHEADER.pack(values.size, 0.0, id, id2) + values.tobytes() + bytes(payload)


def decode_record(data: bytes) -> tuple[IRHeader, bytes]:
    """Split a logical record into its header (labels included) and payload; ValueError if too short."""
    if len(data) < IRHEADER_SIZE:
        raise ValueError(f"{len(data)} bytes, shorter than the {IRHEADER_SIZE}-byte IRHeader")
    flag, label, id_, id2 = _IRHEADER.unpack_from(data)
    if flag == 0:
        return IRHeader(0, label, id_, id2), data[IRHEADER_SIZE:]
    start = IRHEADER_SIZE + 4 * flag
    if start > len(data):
        raise ValueError(f"header flag {flag} announces {flag} float32 labels but the record has only "
                         f"{len(data) - IRHEADER_SIZE} bytes after the IRHeader")
    labels = struct.unpack_from(f"<{flag}f", data, IRHEADER_SIZE)
    return IRHeader(flag, labels, id_, id2), data[start:]


def class_label(label: Label) -> float:
    """The class a record belongs to, as InsightFace reads it: the label, or label[0] when multi-label."""
    return label[0] if isinstance(label, tuple) else label


def is_class_id(value: float) -> bool:
    """True for a non-negative integer that float32 represents exactly (a usable class id or index)."""
    return value == value and 0 <= value <= FLOAT32_EXACT_INT and value == int(value)


def require_class_id(label: Label, path: str | Path, key: int) -> int:
    """The class id of record ``key`` (label or label[0]); an error naming the key if not an integer."""
    value = class_label(label)
    if not is_class_id(value):
        raise RecordIOError(path, f"record key {key}: label {value!r} is not an integer class id")
    return int(value)


# ---------------------------------------------------------------------------------------------------
# logical record <-> physical parts


def find_aligned_magic(buf, start: int) -> int:
    """Position of the first magic number at or after ``start`` that sits at a multiple of 4; -1 if none."""
    pos = buf.find(MAGIC_BYTES, start)
    while pos != -1 and pos % 4:
        pos = buf.find(MAGIC_BYTES, pos + 1)
    return pos


def encode_parts(data: bytes) -> bytes:
    """A logical record as dmlc writes it: split at every 4-byte aligned magic, headers, zero padding."""
    if len(data) >= MAX_RECORD:
        raise ValueError(f"a record of {len(data)} bytes exceeds RecordIO's limit of {MAX_RECORD - 1}")
    out: list[bytes] = []
    start = 0
    pos = find_aligned_magic(data, 0)
    while pos != -1:
        out += (_PART.pack(MAGIC, ((1 if start == 0 else 2) << 29) | (pos - start)), data[start:pos])
        start = pos + 4
        pos = find_aligned_magic(data, start)
    tail = len(data) - start
    out += (_PART.pack(MAGIC, ((3 if start else 0) << 29) | tail), data[start:], bytes(-tail % 4))
    return b"".join(out)


def parse_parts(buf, pos: int, limit: int, base: int = 0) -> tuple[bytes, int, int]:
    """Read the logical record whose first part starts at ``buf[pos]`` (not past ``buf[limit]``).

    Returns (logical bytes, position after its last part's padding, number of parts). Raises ``CorruptRecord``
    with the absolute offset ``base + position`` of the faulty part.
    """
    parts: list[bytes] = []
    while True:
        if pos + 8 > limit:
            raise CorruptRecord(base + pos, f"truncated: {limit - pos} bytes left where an 8-byte part "
                                "header (magic, lrecord) is expected", truncated=True)
        magic, lrec = _PART.unpack_from(buf, pos)
        if magic != MAGIC:
            raise CorruptRecord(base + pos, f"bad magic 0x{magic:08x}")
        cflag, length = lrec >> 29, lrec & LENGTH_MASK
        if cflag not in ((2, 3) if parts else (0, 1)):
            wanted = "2 or 3 (continuation)" if parts else "0 or 1"
            raise CorruptRecord(base + pos, f"part flag {cflag} where {wanted} is expected")
        end = pos + 8 + ((length + 3) & ~3)
        if end > limit:
            raise CorruptRecord(base + pos, f"truncated: a part of {length} bytes needs {end - pos} bytes "
                                f"with header and padding, {limit - pos} are left", truncated=True)
        parts.append(bytes(buf[pos + 8:pos + 8 + length]))
        pos = end
        if cflag in (0, 3):
            return (parts[0] if len(parts) == 1 else MAGIC_BYTES.join(parts)), pos, len(parts)


# ---------------------------------------------------------------------------------------------------
# the .idx text index


def _idx_line_ok(line: bytes) -> bool:
    fields = line.rstrip(b"\r").split(b"\t")
    return len(fields) == 2 and all(f.isdigit() and len(f) <= 18 for f in fields)


def parse_idx(data: bytes) -> tuple[np.ndarray, np.ndarray, list[tuple[int, bytes]]]:
    """Parse ``.idx`` text: (keys, offsets) as int64 in file order, plus (line number, text) of bad lines."""
    if not data:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), []
    if b"\r" not in data:  # fast path: validate the layout with numpy, parse with numpy's text reader
        a = np.frombuffer(data, np.uint8)
        tab, newline = a == 9, a == 10
        seps = np.flatnonzero(tab | newline)
        if not data.endswith(b"\n"):
            seps = np.append(seps, len(a))
        kinds = np.where(seps < len(a), a[np.minimum(seps, len(a) - 1)], 10)
        widths = np.diff(seps, prepend=-1) - 1
        if (((a - 48) < 10) | tab | newline).all() and len(seps) % 2 == 0 and (kinds[0::2] == 9).all() \
                and (kinds[1::2] == 10).all() and (widths > 0).all() and (widths <= 18).all():
            values = np.fromstring(data, dtype=np.int64, sep=" ")  # text mode: any whitespace separates
            return values[0::2].copy(), values[1::2].copy(), []
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    keys, offsets, bad = [], [], []
    for number, line in enumerate(lines, 1):
        if _idx_line_ok(line):
            key, offset = line.rstrip(b"\r").split(b"\t")
            keys.append(int(key))
            offsets.append(int(offset))
        else:
            bad.append((number, line))
    return np.array(keys, np.int64), np.array(offsets, np.int64), bad


def describe_idx_line(number: int, text: bytes) -> str:
    """The problem text for a malformed ``.idx`` line."""
    shown = ascii(text[:60].decode("utf-8", "replace")).replace("\\ufffd", "?")  # printable, one line
    return f"line {number}: malformed index line {shown} (expected '<key>\\t<offset>')"


def read_idx(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a ``.idx`` file strictly: (keys, offsets) int64 in file order; the first bad line is an error."""
    path = Path(path)
    if not path.is_file():
        raise RecordIOError(path, "no such file")
    keys, offsets, bad = parse_idx(path.read_bytes())
    if bad:
        raise RecordIOError(path, describe_idx_line(*bad[0]))
    return keys, offsets


def duplicate_keys(keys: np.ndarray) -> list[tuple[int, int, int]]:
    """(key, first line, second line) for every key listed more than once (line numbers from 1)."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    dup = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
    return [(int(sorted_keys[i + 1]), int(order[i]) + 1, int(order[i + 1]) + 1) for i in dup]


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` by sorting (numpy 2's hash-based ``unique`` is about 15x slower on millions of ints)."""
    ordered = np.sort(values)
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))] if len(ordered) else ordered


def pack_paths(root: str | Path) -> tuple[Path, Path]:
    """(``train.rec``, ``train.idx``) of a pack folder, or of a ``.rec`` path and the ``.idx`` beside it."""
    root = Path(root)
    if root.suffix == ".rec":
        return root, root.with_suffix(".idx")
    if root.suffix == ".idx":
        return root.with_suffix(".rec"), root
    return root / "train.rec", root / "train.idx"


# ---------------------------------------------------------------------------------------------------
# random-access reader and sequential writer


class RecordReader:
    """Random access by key to an indexed ``.rec`` (one ``os.pread`` per record, no file loaded)."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        if not self.rec_path.is_file():
            raise RecordIOError(self.rec_path, "no such file")
        self.size = self.rec_path.stat().st_size
        self.keys, self.offsets = read_idx(self.idx_path)  # in idx (write) order
        if len(self.keys) and (dups := duplicate_keys(self.keys)):
            key, first, second = dups[0]
            raise RecordIOError(self.idx_path, f"duplicate key {key} (lines {first} and {second})")
        past = np.flatnonzero(self.offsets + 8 > self.size)
        if past.size:
            i = int(past[0])
            raise RecordIOError(self.idx_path, f"record key {self.keys[i]}: offset {self.offsets[i]} is past "
                                f"the end of {self.rec_path.name} ({self.size} bytes)")
        # each record is read with one pread that ends where the next record (by offset) begins
        starts = sorted_unique(self.offsets)
        ends = np.append(starts, self.size)[np.searchsorted(starts, self.offsets, side="right")]
        order = np.argsort(self.keys, kind="stable")
        self._sorted_keys = self.keys[order]
        self._offset = self.offsets[order]
        self._end = ends[order]
        n = len(self._sorted_keys)
        self._first = int(self._sorted_keys[0]) if n else 0
        self._dense = n > 0 and int(self._sorted_keys[-1]) - self._first == n - 1
        self._fd: int | None = None
        self._pid = -1

    @classmethod
    def open(cls, root: str | Path) -> RecordReader:
        """The reader of a pack folder (``train.rec``/``train.idx``) or of a ``.rec`` path."""
        return cls(*pack_paths(root))

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: int) -> bool:
        return self._locate(key) is not None

    def _locate(self, key: int) -> int | None:
        if self._dense:
            i = key - self._first
            return i if 0 <= i < len(self._sorted_keys) else None
        i = int(np.searchsorted(self._sorted_keys, key))
        return i if i < len(self._sorted_keys) and self._sorted_keys[i] == key else None

    def _handle(self) -> int:
        pid = os.getpid()
        if self._fd is None or self._pid != pid:  # first use in this process (e.g. a DataLoader worker)
            self._fd, self._pid = os.open(self.rec_path, os.O_RDONLY), pid
        return self._fd

    def offset_of(self, key: int) -> int:
        """Byte offset of record ``key`` in the ``.rec`` file."""
        i = self._locate(key)
        if i is None:
            raise RecordIOError(self.idx_path, f"no record with key {key}")
        return int(self._offset[i])

    def read(self, key: int) -> bytes:
        """The logical record ``key`` (IRHeader + labels + payload), split parts re-joined."""
        i = self._locate(key)
        if i is None:
            raise RecordIOError(self.idx_path, f"no record with key {key}")
        offset, end = int(self._offset[i]), int(self._end[i])
        buf = os.pread(self._handle(), end - offset, offset)
        try:
            return parse_parts(buf, 0, len(buf), base=offset)[0]
        except CorruptRecord as err:
            problem = err.problem
            if err.truncated and end < self.size:
                problem = (f"the record runs past offset {end}, where the next indexed record starts "
                           "(the idx and the file disagree)")
            where = f"record key {key} at offset {offset}"
            if err.offset != offset:
                where += f", part at offset {err.offset}"
            raise RecordIOError(self.rec_path, f"{where}: {problem}") from None

    def read_record(self, key: int) -> Record:
        """Record ``key`` unpacked into header, labels and payload."""
        data = self.read(key)
        try:
            header, payload = decode_record(data)
        except ValueError as err:
            where = f"record key {key} at offset {self.offset_of(key)}"
            raise RecordIOError(self.rec_path, f"{where}: {err}") from None
        return Record(key, header, payload)

    def __iter__(self) -> Iterator[Record]:
        """Every record in idx order."""
        for key in self.keys.tolist():
            yield self.read_record(key)

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __getstate__(self) -> dict:  # a pickled reader (spawned worker) opens its own handle
        state = dict(self.__dict__)
        state["_fd"] = None
        return state

    def __del__(self):
        with contextlib.suppress(OSError, AttributeError):
            self.close()

    def __enter__(self) -> RecordReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RecordWriter:
    """Write records in the order given: ``.rec`` parts and one ``key\\toffset`` ``.idx`` line each."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path):
        self.rec_path, self.idx_path = Path(rec_path), Path(idx_path)
        self._rec = open(self.rec_path, "wb")  # noqa: SIM115 (closed in close())
        self._idx = open(self.idx_path, "w", encoding="ascii", newline="\n")  # noqa: SIM115
        self.offset = 0

    def write(self, key: int, data: bytes) -> int:
        """Append logical record ``data`` under ``key`` (unique, non-negative); returns its offset."""
        if key < 0:
            raise ValueError(f"record keys are non-negative, got {key}")
        try:
            encoded = encode_parts(data)
        except ValueError as err:
            raise RecordIOError(self.rec_path, f"record key {key}: {err}") from None
        offset = self.offset
        self._rec.write(encoded)
        self._idx.write(f"{key}\t{offset}\n")
        self.offset += len(encoded)
        return offset

    def write_image(self, key: int, label: float | Sequence[float], payload: bytes = b"",
                    id: int | None = None, id2: int = 0) -> int:
        """Append an image record (IRHeader, labels, payload); ``id`` defaults to the key."""
        return self.write(key, encode_record(label, payload, key if id is None else id, id2))

    def close(self) -> None:
        self._rec.close()
        self._idx.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
