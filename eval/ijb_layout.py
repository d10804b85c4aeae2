"""InsightFace's IJB-B / IJB-C evaluation layout: the three meta files and the loose-crop images, read fast.

Under ``ROOT`` (``<t>`` = ``ijbb`` or ``ijbc``, the target in lower case)::

    meta/<t>_face_tid_mid.txt          img_name tid mid                     one line per image
    meta/<t>_name_5pts_score.txt       img_name x1 y1 ... x5 y5 faceness    the same images, same order
    meta/<t>_template_pair_label.txt   tid1 tid2 label                      label 1 genuine, 0 impostor
    loose_crop/<img_name>              the images

Fields are separated by spaces (runs of blanks and tabs are accepted too), lines by ``\\n`` or ``\\r\\n``;
whitespace at the ends of lines and of the file is ignored; every other empty line is an error, since
line ``K`` of both image files is image ``K - 1``. Integers are decimal digits (no sign); numbers are
whatever Python's ``float()`` reads, converted to float32 as InsightFace does (``float()``, then float32).

Every problem is a ``UserError(file, "line K: ...")`` (K counted from 1). Well-formed files are parsed
with numpy over the bytes, ``CHUNK_BYTES`` at a time (IJB-C's 15.7-million-line pair file in about 3.5 s
of CPU, ~0.5 GB peak); a chunk in which that parser meets anything unusual (a wrong field count, a
non-digit in an integer, a control byte, a 19-digit integer) is re-read line by line by the reference
parser, which reads what is valid and names the first bad line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from converters.errors import UserError
from eval.align import degenerate, degenerate_reason

TARGETS = ("IJBB", "IJBC")
CHUNK_BYTES = 8 << 20  # bytes parsed per vectorised step: transient memory is a small multiple of this
MAX_NAME_BYTES = 1024
_INT64_MAX = 2**63 - 1
_BLANKS = b" \t\n\r\x0b\x0c"  # what bytes.split() splits on; the vectorised parser uses the same set
_POW10 = np.array([float(10**k) for k in range(16)])  # exact in float64


class IjbPaths(NamedTuple):
    """Where the layout's files are: the three meta files and the image folder."""

    face_tid_mid: Path
    template_pair_label: Path
    name_5pts_score: Path
    loose_crop: Path


def parse_target(target: str) -> str:
    """``"IJBC"`` or ``"IJBB"`` (any case accepted); ``UserError`` for anything else."""
    name = str(target).upper()
    if name not in TARGETS:
        raise UserError(None, f"unknown IJB target '{target}' (known: {', '.join(TARGETS)})")
    return name


def layout_paths(root: str | Path, target: str) -> IjbPaths:
    """The paths of ``target``'s meta files and of the ``loose_crop`` folder under ``root``."""
    root = Path(root)
    prefix = parse_target(target).lower()
    meta = root / "meta"
    return IjbPaths(meta / f"{prefix}_face_tid_mid.txt", meta / f"{prefix}_template_pair_label.txt",
                    meta / f"{prefix}_name_5pts_score.txt", root / "loose_crop")


@dataclass
class IjbLayout:
    """One IJB target's images and pairs. Image ``i`` is line ``i + 1`` of both image files."""

    root: Path
    target: str  # "IJBB" or "IJBC"
    names: np.ndarray  # [N] str, image names relative to loose_crop
    templates: np.ndarray  # [N] int64 template id of each image
    medias: np.ndarray  # [N] int64 media id of each image
    landmarks: np.ndarray  # [N, 5, 2] float32 (x, y) in the loose crop: eyes, nose, mouth corners
    faceness: np.ndarray  # [N] float32 detector score
    p1: np.ndarray  # [P] int64 first template of each pair
    p2: np.ndarray  # [P] int64 second template
    labels: np.ndarray  # [P] int8, 1 genuine, 0 impostor

    @property
    def paths(self) -> IjbPaths:
        return layout_paths(self.root, self.target)

    @property
    def num_images(self) -> int:
        return len(self.names)

    @property
    def num_pairs(self) -> int:
        return len(self.p1)

    def image_path(self, index: int) -> Path:
        """The file of image ``index`` (``root/loose_crop/<name>``)."""
        return self.root / "loose_crop" / str(self.names[index])


# ---------------------------------------------------------------------------------------------------------
# Column-typed whitespace tables


class _Column(NamedTuple):
    title: str  # as the error messages call the field
    kind: str  # "name", "int" or "float"


FACE_COLUMNS = (_Column("image name", "name"), _Column("tid", "int"), _Column("mid", "int"))
POINT_COLUMNS = (_Column("image name", "name"),
                 *(_Column(f"{axis}{k}", "float") for k in range(1, 6) for axis in "xy"),
                 _Column("faceness", "float"))
PAIR_COLUMNS = (_Column("tid1", "int"), _Column("tid2", "int"), _Column("label", "int"))
_DTYPES = {"int": np.int64, "float": np.float64}


def read_table(path: Path, columns: tuple[_Column, ...]) -> list[np.ndarray]:
    """The columns of a whitespace-separated text file with ``len(columns)`` fields per line.

    Returns one array per column: ``name`` -> str, ``int`` -> int64, ``float`` -> float64 (exactly
    ``float()`` of the text). ``UserError(path, "line K: ...")`` for the first malformed line.
    """
    end = _content_end(path)
    if end == 0:
        raise UserError(path, "empty file (expected lines of " + " ".join(c.title for c in columns) + ")")
    rows = _count_lines(path, end)
    # numbers go straight into their final arrays (no second copy at the end); names are small
    out: list = [[] if c.kind == "name" else np.empty(rows, dtype=_DTYPES[c.kind]) for c in columns]
    row = 0  # every line is one row (or an error), so a chunk's first line is number row + 1
    for body in _chunks(path, end):
        arrays = _parse_fast(body, columns)
        if arrays is None:
            arrays = _parse_slow(path, bytes(body), row + 1, columns)
        count = len(arrays[0])
        if row + count > rows:
            raise UserError(path, "changed while being read")
        for target, array in zip(out, arrays):
            if isinstance(target, list):
                target.append(array)
            else:
                target[row:row + count] = array
        row += count
    if row != rows:
        raise UserError(path, "changed while being read")
    return [np.concatenate(target) if isinstance(target, list) else target for target in out]


def _open_error(path: Path, err: OSError) -> UserError:
    return UserError(path, f"cannot read ({err.strerror or type(err).__name__})")


def _content_end(path: Path) -> int:
    """The file's length without the blanks at its end."""
    try:
        with open(path, "rb") as file:
            end = file.seek(0, os.SEEK_END)
            while end > 0:
                start = max(0, end - 65536)
                file.seek(start)
                kept = file.read(end - start).rstrip(_BLANKS)
                if kept:
                    return start + len(kept)
                end = start
    except OSError as err:
        raise _open_error(path, err) from None
    return 0


def _count_lines(path: Path, end: int) -> int:
    """Lines in the file's first ``end`` bytes (which end with a character that is not a newline)."""
    count = 1
    try:
        with open(path, "rb") as file:
            done = 0
            while done < end:
                data = file.read(min(CHUNK_BYTES, end - done))
                if not data:
                    break
                done += len(data)
                count += data.count(b"\n")
    except OSError as err:
        raise _open_error(path, err) from None
    return count


def _chunks(path: Path, end: int) -> Iterator[memoryview]:
    """Pieces of about ``CHUNK_BYTES`` of the file's first ``end`` bytes, each cut after a newline."""
    carry = b""
    try:
        with open(path, "rb") as file:
            done = 0
            while done < end:
                data = file.read(min(CHUNK_BYTES, end - done))
                if not data:  # the file shrank while being read
                    break
                done += len(data)
                buf = carry + data if carry else data
                cut = len(buf) if done >= end else buf.rfind(b"\n") + 1
                if cut == 0:  # a line longer than a chunk: read on
                    carry = buf
                    continue
                carry = buf[cut:]
                yield memoryview(buf)[:cut]
    except OSError as err:
        raise _open_error(path, err) from None
    if carry:
        yield memoryview(carry)


_PAD = 32  # blank bytes around a chunk: reading up to this far past a token's ends stays in the array


def _parse_fast(body: memoryview, columns: tuple[_Column, ...]) -> list[np.ndarray] | None:
    """Vectorised parse of whole lines; None when anything is unusual (the slow parser then decides)."""
    raw = np.frombuffer(body, dtype=np.uint8)
    if np.count_nonzero(raw < 9) or np.count_nonzero((raw - np.uint8(14)) < 18):
        return None  # control bytes (NUL, ...) other than the blanks \t \n \v \f \r
    buf = np.full(len(raw) + 2 * _PAD, 32, dtype=np.uint8)
    buf[_PAD:-_PAD] = raw
    blank = buf <= 32  # exactly _BLANKS now that no other byte below 33 is left
    # token starts and (exclusive) ends: the edges of the runs of non-blank bytes
    edges = np.flatnonzero(blank[1:] != blank[:-1]) + 1
    del blank
    starts, ends = edges[0::2], edges[1::2]
    newlines = np.flatnonzero(buf == 10)
    ends_with_newline = raw[-1] == 10
    lines = len(newlines) + (not ends_with_newline)
    ncols = len(columns)
    if len(starts) != ncols * lines:
        return None
    # the tokens fall ncols per line iff every line's first token starts after the previous newline and
    # its last one ends before its own newline
    line_ends = newlines if ends_with_newline else np.append(newlines, len(buf) - _PAD)
    line_starts = np.concatenate(([_PAD], newlines[:lines - 1] + 1))
    starts, ends = starts.reshape(lines, ncols), ends.reshape(lines, ncols)
    if not ((starts[:, 0] >= line_starts).all() and (ends[:, -1] <= line_ends).all()):
        return None
    out = []
    for k, column in enumerate(columns):
        first = starts[:, k]
        values = _FAST[column.kind](buf, first, ends[:, k] - first)
        if values is None:
            return None
        out.append(values)
    return out


_POW10_INT = np.array([10**k for k in range(19)], dtype=np.int64)


def _fast_ints(buf: np.ndarray, first: np.ndarray, lengths: np.ndarray) -> np.ndarray | None:
    """Tokens of 1 to 18 ASCII digits (they fit int64) as int64: digit * 10**k summed from the right."""
    width = int(lengths.max())
    if width > 18:  # might not fit int64: the slow parser checks the range
        return None
    short = lengths.astype(np.uint8)
    position = first + lengths - 1
    value = np.zeros(len(first), dtype=np.int64)
    for k in range(width):
        digit = buf[position] - np.uint8(48)  # wraps around for bytes below '0'
        if k:
            digit *= short > k
        if (digit > 9).any():
            return None
        value += digit * _POW10_INT[k]
        position -= 1
    return value


def _fast_floats(buf: np.ndarray, first: np.ndarray, lengths: np.ndarray) -> np.ndarray | None:
    """Plain decimals ``[-]digits[.digits]`` of at most 15 digits are ``mantissa / 10**decimals``: one
    correctly rounded division of two exact float64 numbers, hence exactly ``float(text)``; other tokens
    (exponents, longer decimals) go through ``float()`` one by one."""
    n = len(first)
    mantissa = np.zeros(n, dtype=np.int64)
    digits = np.zeros(n, dtype=np.uint8)
    decimals = np.zeros(n, dtype=np.uint8)
    dots = np.zeros(n, dtype=np.uint8)
    other = lengths > 17
    short = np.minimum(lengths, 255).astype(np.uint8)
    position = first.copy()
    for j in range(min(int(lengths.max()), 17)):
        char = buf[position]
        position += 1
        present = short > j
        digit = char - np.uint8(48)
        is_digit = present & (digit <= 9)
        is_dot = present & (char == 46)
        odd = present ^ (is_digit | is_dot)
        if j == 0:
            odd &= char != 45  # a leading minus
        other |= odd
        mantissa = np.where(is_digit, mantissa * 10 + digit, mantissa)
        digits += is_digit
        decimals += is_digit & (dots > 0)
        dots += is_dot
    plain = ~other & (dots <= 1) & (digits >= 1) & (digits <= 15)
    value = mantissa / _POW10[np.minimum(decimals, 15)]
    np.negative(value, out=value, where=buf[first] == 45)
    for i in np.flatnonzero(~plain).tolist():
        text = buf[first[i]:first[i] + lengths[i]].tobytes()
        try:
            value[i] = float(text)
        except ValueError:
            return None
    return value


def _fast_names(buf: np.ndarray, first: np.ndarray, lengths: np.ndarray) -> np.ndarray | None:
    """Names as a str array (UTF-8)."""
    width = int(lengths.max())
    if width > MAX_NAME_BYTES:
        return None
    table = np.zeros((len(first), width), dtype=np.uint8)
    for j in range(width):
        present = lengths > j
        table[present, j] = buf[first[present] + j]
    raw = table.view(f"S{width}").ravel()
    if np.count_nonzero(table >= 128):  # UTF-8 beyond ASCII
        try:
            return np.array([name.decode("utf-8") for name in raw.tolist()])
        except UnicodeDecodeError:
            return None
    return raw.astype(f"U{width}")


_FAST = {"int": _fast_ints, "float": _fast_floats, "name": _fast_names}


def _parse_slow(path: Path, body: bytes, first_line: int, columns: tuple[_Column, ...]) -> list[np.ndarray]:
    """Line by line: the reference the vectorised parser agrees with; raises at the first bad line."""
    lines = body.split(b"\n")
    if body.endswith(b"\n"):
        lines.pop()
    values: list[list] = [[] for _ in columns]
    layout = " ".join(c.title for c in columns)
    for i, line in enumerate(lines):
        where = f"line {first_line + i}"
        fields = line.split()
        if not fields:
            raise UserError(path, f"{where}: empty line (expected {layout})")
        if len(fields) != len(columns):
            raise UserError(path, f"{where}: expected {len(columns)} fields ({layout}), found {len(fields)}")
        for column, field, out in zip(columns, fields, values):
            out.append(_parse_field(path, where, column, field))
    arrays = []
    for column, out in zip(columns, values):
        dtype = {"int": np.int64, "float": np.float64, "name": str}[column.kind]
        arrays.append(np.array(out, dtype=dtype))
    return arrays


def _show(field: bytes) -> str:
    text = field.decode("utf-8", "replace")
    return text if len(text) <= 40 else text[:37] + "..."


def _parse_field(path: Path, where: str, column: _Column, field: bytes):
    if column.kind == "int":
        if not field.isdigit():  # ASCII digits only (bytes.isdigit)
            raise UserError(path, f"{where}: {column.title} '{_show(field)}' is not a non-negative integer")
        value = int(field)
        if value > _INT64_MAX:
            raise UserError(path, f"{where}: {column.title} {_show(field)} is too large (above 2**63 - 1)")
        return value
    if column.kind == "float":
        try:
            return float(field)
        except ValueError:
            raise UserError(path, f"{where}: {column.title} '{_show(field)}' is not a number") from None
    if len(field) > MAX_NAME_BYTES:
        raise UserError(path, f"{where}: {column.title} is longer than {MAX_NAME_BYTES} bytes")
    if b"\0" in field:
        raise UserError(path, f"{where}: {column.title} contains a NUL byte")
    try:
        return field.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(path, f"{where}: {column.title} '{_show(field)}' is not valid UTF-8") from None


# ---------------------------------------------------------------------------------------------------------
# The layout


def read_layout(root: str | Path, target: str, images: bool = True) -> IjbLayout:
    """Read and check ``target``'s layout under ``root``; with ``images``, also that every image exists.

    Checks, each a ``UserError`` naming the file and line: the files exist and are not empty; every line
    has its fields with integer ids, 0/1 labels, numbers for landmarks and faceness; landmarks and faceness
    finite (as float32) and landmarks not ``eval.align.degenerate``; the landmarks file lists the images of
    face_tid_mid.txt in the same order; image names are paths inside loose_crop; every template of a
    pair has an image; with ``images``, every image is a file in loose_crop.
    """
    root = Path(root)
    target = parse_target(target)
    paths = layout_paths(root, target)
    if not root.is_dir():
        raise UserError(root, "no such folder (the IJB data root)" if not root.exists() else "not a folder")
    for path in (paths.face_tid_mid, paths.name_5pts_score, paths.template_pair_label):
        if not path.is_file():
            raise UserError(path, "missing (expected in the IJB data root's meta folder)"
                            if not path.exists() else "not a file")
    if images and not paths.loose_crop.is_dir():
        raise UserError(paths.loose_crop, "missing: the folder of the face images (loose crops)")

    names, templates, medias = read_table(paths.face_tid_mid, FACE_COLUMNS)
    point_names, *numbers = read_table(paths.name_5pts_score, POINT_COLUMNS)
    _check_same_images(paths, names, point_names)
    del point_names
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf: reported just below
        landmarks = np.stack([column.astype(np.float32) for column in numbers[:10]], axis=1).reshape(-1, 5, 2)
        faceness = numbers[10].astype(np.float32)
    _check_points(paths.name_5pts_score, numbers, landmarks, faceness)
    del numbers
    _check_names(paths.name_5pts_score, names)

    p1, p2, labels = read_table(paths.template_pair_label, PAIR_COLUMNS)
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if len(bad):
        k = int(bad[0])
        raise UserError(paths.template_pair_label, f"line {k + 1}: label {labels[k]} is not 0 (impostor) or "
                        "1 (genuine)")
    labels = labels.astype(np.int8)
    _check_pair_templates(paths, templates, p1, p2)
    if images:
        _check_images(paths, names)
    return IjbLayout(root=root, target=target, names=names, templates=templates, medias=medias,
                     landmarks=landmarks, faceness=faceness, p1=p1, p2=p2, labels=labels)


def _check_same_images(paths: IjbPaths, names: np.ndarray, point_names: np.ndarray) -> None:
    common = min(len(names), len(point_names))
    differ = np.flatnonzero(names[:common] != point_names[:common])
    face_file = paths.face_tid_mid.name
    if len(differ):
        k = int(differ[0])
        raise UserError(paths.name_5pts_score, f"line {k + 1}: image '{point_names[k]}' differs from "
                        f"'{names[k]}' on line {k + 1} of {face_file} (both files list the same images in "
                        "the same order)")
    if len(names) != len(point_names):
        raise UserError(paths.name_5pts_score, f"has {len(point_names)} lines but {face_file} has "
                        f"{len(names)} (both files list the same images in the same order)")


def _check_points(path: Path, numbers: list[np.ndarray], landmarks: np.ndarray, faceness: np.ndarray) -> None:
    finite = np.concatenate([np.isfinite(landmarks.reshape(-1, 10)), np.isfinite(faceness)[:, None]], axis=1)
    bad = np.flatnonzero(~finite.all(axis=1))
    if len(bad):
        k = int(bad[0])
        column = int(np.flatnonzero(~finite[k])[0])
        title = POINT_COLUMNS[1 + column].title
        raise UserError(path, f"line {k + 1}: {title} {float(numbers[column][k])!r} is not a finite float32 number")
    bad = np.flatnonzero(degenerate(landmarks))
    if len(bad):
        k = int(bad[0])
        raise UserError(path, f"line {k + 1}: degenerate landmarks: {degenerate_reason(landmarks[k])}")


def _check_names(path: Path, names: np.ndarray) -> None:
    """Image names are relative paths that stay inside loose_crop."""
    suspects = np.flatnonzero(np.char.startswith(names, "/") | (np.char.find(names, "..") >= 0))
    for k in suspects.tolist():
        name = str(names[k])
        if name.startswith("/") or ".." in name.split("/"):
            raise UserError(path, f"line {k + 1}: image name '{name}' is not a path inside loose_crop")


def _check_pair_templates(paths: IjbPaths, templates: np.ndarray, p1: np.ndarray, p2: np.ndarray,
                          block: int = 1 << 22) -> None:
    """Every template a pair names has an image (checked in blocks of pairs to bound memory)."""
    known = np.unique(templates)
    # ids up to a few million: a lookup table (IJB-C's 15.7M pairs in ~0.1 s; a binary search takes ~3 s)
    table = None
    if known[-1] < 1 << 24:
        table = np.zeros(int(known[-1]) + 2, dtype=bool)
        table[known] = True

    def found(ids: np.ndarray) -> np.ndarray:
        if table is not None:
            return table[np.minimum(ids, len(table) - 1)]
        return known[np.minimum(np.searchsorted(known, ids), len(known) - 1)] == ids

    for start in range(0, len(p1), block):
        first, second = p1[start:start + block], p2[start:start + block]
        found1, found2 = found(first), found(second)
        both = found1 & found2
        if not both.all():
            k = int(np.argmin(both))
            column, value = ("tid1", first[k]) if not found1[k] else ("tid2", second[k])
            raise UserError(paths.template_pair_label, f"line {start + k + 1}: {column} {value} is not the "
                            f"template of any image in {paths.face_tid_mid.name}")


def _check_images(paths: IjbPaths, names: np.ndarray) -> None:
    """Every image is a file in loose_crop: one directory listing per folder, not a stat per image."""
    listings: dict[str, set[str]] = {}
    for k, name in enumerate(names.tolist()):
        folder, _, base = name.rpartition("/")
        files = listings.get(folder)
        if files is None:
            files = listings[folder] = _files_in(paths.loose_crop / folder)
        if base not in files:
            raise UserError(paths.name_5pts_score, f"line {k + 1}: image {paths.loose_crop / name} not found")


def _files_in(folder: Path) -> set[str]:
    try:
        with os.scandir(folder) as entries:
            return {entry.name for entry in entries if entry.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return set()
    except OSError as err:
        raise UserError(folder, f"cannot list the images ({err.strerror or type(err).__name__})") from None
