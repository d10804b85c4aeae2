"""Pack tools, run as ``python -m train.data.recordio COMMAND``.

    dump DIR [--limit N]            one JSON line per record in idx order (key, flag, label, id, id2,
                                    payload length and sha256)
    verify DIR [--decode]           scan and cross-check the whole pack; exit 1 listing every problem
    pack SRC OUT                    image folder or label.txt -> InsightFace pack (images 1..N with the file
                                    bytes unchanged, meta header, identity records, property); deterministic
    unpack DIR OUT                  pack -> OUT/images/ + OUT/label.txt (arcface_paddle's layout)
    shuffle DIR OUT [--seed S]      header-less shuffled copy, as InsightFace's shuffle_rec.py makes for DALI

Exit codes: 0 done, 1 ``verify`` found problems, 2 bad input (one line naming the file and key or offset).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
from tabulate import tabulate
from tqdm import tqdm

from converters.cli import ArgumentParser, non_negative_int, random_seed
from converters.errors import UserError
from converters.folders import list_images, read_image_file
from converters.images import ImageRefused, decode_bgr

from .layout import atomic_directory, read_layout, write_pack
from .pack_check import verify_pack
from .recordio import RecordReader, RecordWriter, class_label, encode_record, require_class_id

IMAGE_TYPES = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"BM", ".bmp"))


def _progress(iterable, total: int, desc: str):
    """A progress bar on stderr when it is a terminal."""
    return tqdm(iterable, total=total, desc=desc, unit="rec", file=sys.stderr, disable=None, mininterval=0.5)


def dump_lines(root: str | Path, limit: int | None = None) -> Iterator[str]:
    """One JSON line per record in idx order: key, flag, label(s), id, id2, payload length and sha256."""
    reader = RecordReader.open(root)
    keys = reader.keys[:limit] if limit is not None else reader.keys
    for key in keys.tolist():
        record = reader.read_record(key)
        header = record.header
        label = list(header.label) if isinstance(header.label, tuple) else header.label
        yield json.dumps({"key": key, "flag": header.flag, "label": label, "id": header.id, "id2": header.id2,
                          "length": len(record.payload),
                          "sha256": hashlib.sha256(record.payload).hexdigest()})


def pack_folder(src: str | Path, out: str | Path) -> tuple[int, int]:
    """Pack an image folder or ``label.txt`` as an InsightFace pack at ``out``; returns (images, classes)."""
    images = list_images(src)
    order = np.argsort(np.asarray(images.labels, np.int64), kind="stable")  # classes contiguous, ascending
    paths = [images.paths[i] for i in order.tolist()]
    labels = [images.labels[i] for i in order.tolist()]
    try:  # the first image gives the size in property; refused before decoding if it declares too many pixels
        first = decode_bgr(read_image_file(paths[0]))
    except ImageRefused as err:
        raise UserError(paths[0], f"{err.problem} (the first image gives the image size in property)") from None
    payloads = (read_image_file(p) for p in _progress(paths, len(paths), "pack"))
    with atomic_directory(out) as tmp:
        classes = write_pack(tmp, labels, payloads, first.shape[:2])
    return len(paths), classes


def image_suffix(payload: bytes) -> str:
    """File suffix for encoded image bytes (``.jpg``, ``.png``, ``.bmp``; ``.img`` when unknown)."""
    return next((suffix for magic, suffix in IMAGE_TYPES if payload.startswith(magic)), ".img")


def unpack_pack(root: str | Path, out: str | Path) -> int:
    """Write a pack's images to ``out/images/<key>.<ext>`` and ``out/label.txt``; returns the image count."""
    reader = RecordReader.open(root)
    keys = read_layout(reader).image_keys
    width = max(8, len(str(int(keys.max()))))
    lines = []
    with atomic_directory(out) as tmp:
        (tmp / "images").mkdir()
        for key in _progress(keys.tolist(), len(keys), "unpack"):
            record = reader.read_record(key)
            label = require_class_id(record.header.label, reader.rec_path, key)
            name = f"images/{key:0{width}d}{image_suffix(record.payload)}"
            (tmp / name).write_bytes(record.payload)
            lines.append(f"{name}\t{label}\n")
        (tmp / "label.txt").write_text("".join(lines), encoding="utf-8")
    return len(keys)


def shuffle_pack(root: str | Path, out: str | Path, seed: int = 0) -> int:
    """Copy a pack's images in a random order (numpy ``default_rng(seed)``) as a header-less pack.

    New keys are 0, 1, 2, ...; each record keeps its id and id2, and its label becomes the class id
    (label[0] of a label array) with flag 0, as InsightFace's ``shuffle_rec.py`` writes it.
    """
    reader = RecordReader.open(root)
    keys = read_layout(reader).image_keys
    order = keys[np.random.default_rng(seed).permutation(len(keys))]
    with atomic_directory(out) as tmp:
        with RecordWriter(tmp / "train.rec", tmp / "train.idx") as writer:
            for new_key, key in enumerate(_progress(order.tolist(), len(order), "shuffle")):
                record = reader.read_record(key)
                header = record.header
                data = encode_record(class_label(header.label), record.payload, header.id, header.id2)
                writer.write(new_key, data)
        prop = reader.rec_path.parent / "property"
        if prop.is_file():
            shutil.copyfile(prop, tmp / "property")
    return len(order)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m train.data.recordio",
                                     description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("dump", help="one JSON line per record in idx order")
    p.add_argument("pack", type=Path, help="pack folder (train.rec, train.idx) or a .rec file")
    p.add_argument("--limit", type=non_negative_int, help="only the first N records")
    p = sub.add_parser("verify", help="check every record; exit 1 listing the problems")
    p.add_argument("pack", type=Path)
    p.add_argument("--decode", action="store_true", help="also decode every image with OpenCV")
    p = sub.add_parser("pack", help="image folder or label.txt -> InsightFace pack")
    p.add_argument("src", type=Path, help="label.txt, a folder with label.txt, or a folder of class folders")
    p.add_argument("out", type=Path, help="new output folder")
    p = sub.add_parser("unpack", help="pack -> images/ + label.txt")
    p.add_argument("pack", type=Path)
    p.add_argument("out", type=Path, help="new output folder")
    p = sub.add_parser("shuffle", help="header-less shuffled copy of a pack")
    p.add_argument("pack", type=Path)
    p.add_argument("out", type=Path, help="new output folder")
    p.add_argument("--seed", type=random_seed, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "dump":
        if args.limit is not None and args.limit < 0:
            raise UserError(None, f"--limit must be >= 0, got {args.limit}")
        try:
            for line in dump_lines(args.pack, args.limit):
                sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except BrokenPipeError:  # e.g. piped into head
            sys.stderr.close()
        return 0
    if args.command == "verify":
        result = verify_pack(args.pack, decode=args.decode)
        print(tabulate(result.summary, tablefmt="plain"))
        for problem in result.problems:
            print(f"problem: {problem}")
        print("verify: OK" if result.ok else f"verify: FAILED ({len(result.problems)} problem lines)")
        return 0 if result.ok else 1
    if args.command in ("pack", "unpack", "shuffle"):  # before any work: never into (or inside) the input
        from converters.outputs import check_outputs

        source = ("SRC", args.src) if args.command == "pack" else ("DIR", args.pack)
        check_outputs(dict([source]), {"OUT": args.out}, folders=True)
    if args.command == "pack":
        images, classes = pack_folder(args.src, args.out)
        print(f"packed {images} images of {classes} classes into {args.out}")
    elif args.command == "unpack":
        print(f"unpacked {unpack_pack(args.pack, args.out)} images into {args.out}")
    elif args.command == "shuffle":
        count = shuffle_pack(args.pack, args.out, args.seed)
        print(f"wrote {count} shuffled records to {args.out} (no header)")
    return 0
