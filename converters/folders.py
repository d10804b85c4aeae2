"""Image folders: arcface_paddle's ``label.txt`` or one sub-folder per class (training sets; faces for
synthetic evaluation data).

``label.txt`` holds ``<relative path>\\t<class id>`` lines (the last line with or without a newline), paths
relative to the folder holding it. Without it, every sub-folder is a class, numbered in sorted name order
as torchvision's ``ImageFolder`` does, and its image files (searched recursively, sorted) are the samples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from converters.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ImageList:
    """Samples of an image folder: file paths and class ids, in the order the source lists them."""

    source: Path  # label.txt or the class-folder root
    paths: list[Path]
    labels: list[int]
    classes: list[str] | None = None  # class-folder names (index = class id), None for label.txt

    def __len__(self) -> int:
        return len(self.paths)


def read_label_txt(path: Path) -> ImageList:
    """Parse arcface_paddle's ``label.txt``; each bad line is an error naming its line number."""
    root = path.parent
    paths, labels = [], []
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.rstrip("\r").split("\t")
        if len(fields) != 2 or not fields[0]:
            raise UserError(path, f"line {number}: expected '<path>\\t<class id>', got {line[:80]!r}")
        label = fields[1].strip()
        if not (label.isascii() and label.isdigit()):
            shown = label[:20].encode("utf-8", "surrogateescape")  # undecodable bytes shown as \xNN
            raise UserError(path, f"line {number}: label {str(shown)[1:]} is not an integer class id")
        paths.append(root / fields[0])
        labels.append(int(label))
    if not paths:
        raise UserError(path, "lists no images")
    return ImageList(path, paths, labels)


def read_class_folders(root: Path) -> ImageList:
    """One sub-folder per class (sorted names -> ids 0, 1, ...), images found recursively, sorted."""
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    paths, labels = [], []
    for label, name in enumerate(classes):
        found = []
        for folder, dirs, files in os.walk(root / name, followlinks=True):
            dirs.sort()
            found += [Path(folder) / f for f in sorted(files) if f.lower().endswith(IMAGE_SUFFIXES)]
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise UserError(root, "no label.txt and no class sub-folders with images "
                        f"({', '.join(IMAGE_SUFFIXES)})")
    return ImageList(root, paths, labels, classes)


def list_images(source: str | Path) -> ImageList:
    """The samples of ``source``: a ``label.txt`` file, a folder holding one, or a class-folder root."""
    source = Path(source)
    if source.is_file():
        return read_label_txt(source)
    if not source.is_dir():
        raise UserError(source, "no such file or folder")
    if (source / "label.txt").is_file():
        return read_label_txt(source / "label.txt")
    return read_class_folders(source)


def read_image_file(path: Path) -> bytes:
    """The bytes of one listed image file; a missing or unreadable file is an error naming it."""
    try:
        return path.read_bytes()
    except OSError as err:
        raise UserError(path, f"cannot read listed image ({err.strerror or err})") from None
