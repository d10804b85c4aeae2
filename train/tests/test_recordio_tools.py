"""The pack tools: dump, pack, unpack, shuffle round trips, and verify finding every planted corruption."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from train.data.layout import read_layout
from train.data.pack_check import verify_pack
from train.data.recordio import RecordIOError, RecordReader, RecordWriter, encode_record
from train.data.tools import dump_lines, main, pack_folder, shuffle_pack, unpack_pack

ROOT = Path(__file__).resolve().parents[2]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def source_images(small_dataset: Path) -> list[tuple[bytes, int]]:
    lines = (small_dataset / "label.txt").read_text().splitlines()
    return [((small_dataset / p).read_bytes(), int(c)) for p, c in (line.split("\t") for line in lines)]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train.data.recordio", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_dump_of_the_mxnet_sample_lists_every_record_in_idx_order(small_dataset, small_dataset_rec):
    rows = [json.loads(line) for line in dump_lines(small_dataset_rec)]
    assert [row["key"] for row in rows] == [*range(1, 11), 0, *range(11, 21)]
    for row, (jpeg, label) in zip(rows[:10], source_images(small_dataset)):
        assert row == {"key": row["key"], "flag": 0, "label": float(label), "id": row["key"], "id2": 0,
                       "length": len(jpeg), "sha256": sha(jpeg)}
    assert rows[10] == {"key": 0, "flag": 2, "label": [11.0, 21.0], "id": 0, "id2": 0, "length": 0,
                        "sha256": sha(b"")}
    assert [row["label"] for row in rows[11:]] == [[float(c), float(c + 1)] for c in range(1, 11)]
    assert [json.loads(line)["key"] for line in dump_lines(small_dataset_rec, limit=3)] == [1, 2, 3]


def test_pack_of_the_source_folder_is_byte_identical_to_the_mxnet_pack(small_dataset, small_dataset_rec,
                                                                       tmp_path):
    assert pack_folder(small_dataset, tmp_path / "packed") == (10, 10)
    for name in ("train.rec", "train.idx", "property"):
        assert (tmp_path / "packed" / name).read_bytes() == (small_dataset_rec / name).read_bytes(), name


def test_pack_dump_unpack_round_trip_is_byte_identical(small_dataset, tmp_path):
    pack_folder(small_dataset, tmp_path / "a")
    assert unpack_pack(tmp_path / "a", tmp_path / "images") == 10
    lines = (tmp_path / "images" / "label.txt").read_text().splitlines()
    unpacked = [((tmp_path / "images" / p).read_bytes(), int(c))
                for p, c in (line.split("\t") for line in lines)]
    assert unpacked == source_images(small_dataset)
    pack_folder(tmp_path / "images", tmp_path / "b")
    for name in ("train.rec", "train.idx", "property"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert list(dump_lines(tmp_path / "a")) == list(dump_lines(tmp_path / "b"))


def test_pack_sorts_label_txt_by_class_and_ignores_the_final_newline(small_dataset, tmp_path):
    images = source_images(small_dataset)
    folder = tmp_path / "src"
    (folder / "img").mkdir(parents=True)
    order = [3, 0, 2, 1, 4]  # listing order; classes 1, 0, 1, 0, 2
    lines = []
    for i in order:
        (folder / "img" / f"{i}.jpg").write_bytes(images[i][0])
        lines.append(f"img/{i}.jpg\t{[1, 0, 1, 0, 2][order.index(i)]}")
    (folder / "label.txt").write_text("\n".join(lines))
    pack_folder(folder, tmp_path / "no_newline")
    (folder / "label.txt").write_text("\n".join(lines) + "\n")
    pack_folder(folder / "label.txt", tmp_path / "newline")
    assert (tmp_path / "no_newline" / "train.rec").read_bytes() == \
        (tmp_path / "newline" / "train.rec").read_bytes()
    reader = RecordReader.open(tmp_path / "newline")
    got = [(reader.read_record(k).payload, reader.read_record(k).header.label) for k in range(1, 6)]
    # stable by class: listing order within a class is kept
    expected = [(images[i][0], float(c)) for i, c in [(0, 0), (1, 0), (3, 1), (2, 1), (4, 2)]]
    assert got == expected
    assert [reader.read_record(k).header.label for k in (0, 6, 7, 8)] == \
        [(6.0, 9.0), (1.0, 3.0), (3.0, 5.0), (5.0, 6.0)]
    assert verify_pack(tmp_path / "newline", decode=True, progress=False).ok


def test_pack_of_class_folders_numbers_classes_by_sorted_name(small_dataset, tmp_path):
    images = source_images(small_dataset)
    for name, picks in {"zeta": [0, 1], "alpha": [2], "mid": [3, 4, 5]}.items():
        (tmp_path / "src" / name / "sub").mkdir(parents=True)
        for i in picks:
            (tmp_path / "src" / name / "sub" / f"{i}.jpg").write_bytes(images[i][0])
    (tmp_path / "src" / "mid" / "notes.txt").write_text("not an image")
    pack_folder(tmp_path / "src", tmp_path / "out")
    reader = RecordReader.open(tmp_path / "out")
    got = [(reader.read_record(k).payload, reader.read_record(k).header.label) for k in range(1, 7)]
    assert got == [(images[2][0], 0.0), (images[3][0], 1.0), (images[4][0], 1.0), (images[5][0], 1.0),
                   (images[0][0], 2.0), (images[1][0], 2.0)]
    assert (tmp_path / "out" / "property").read_text() == "3,112,112\n"


def test_unpack_of_the_mxnet_sample_repacks_to_the_same_bytes(small_dataset_rec, tmp_path):
    unpack_pack(small_dataset_rec, tmp_path / "images")
    pack_folder(tmp_path / "images", tmp_path / "again")
    assert (tmp_path / "again" / "train.rec").read_bytes() == (small_dataset_rec / "train.rec").read_bytes()


def test_shuffle_writes_a_header_less_permutation_keeping_labels_and_ids(small_dataset_rec, tmp_path):
    assert shuffle_pack(small_dataset_rec, tmp_path / "s1", seed=7) == 10
    shuffle_pack(small_dataset_rec, tmp_path / "s2", seed=7)
    shuffle_pack(small_dataset_rec, tmp_path / "s3", seed=8)
    assert (tmp_path / "s1" / "train.rec").read_bytes() == (tmp_path / "s2" / "train.rec").read_bytes()
    source = RecordReader.open(small_dataset_rec)
    shuffled = RecordReader.open(tmp_path / "s1")
    assert shuffled.keys.tolist() == list(range(10)) and read_layout(shuffled).header is None
    ids = []
    for record in shuffled:
        original = source.read_record(record.header.id)  # id keeps the original key
        assert (record.header.flag, record.header.label, record.payload) == \
            (0, original.header.label, original.payload)
        ids.append(record.header.id)
    expected = np.arange(1, 11)[np.random.default_rng(7).permutation(10)]
    assert ids == expected.tolist() and sorted(ids) == list(range(1, 11))
    assert [r.header.id for r in RecordReader.open(tmp_path / "s3")] != ids
    assert (tmp_path / "s1" / "property").read_text() == "10,112,112\n"


def test_shuffle_turns_label_arrays_into_their_first_label(tmp_path):
    (tmp_path / "p").mkdir()
    with RecordWriter(tmp_path / "p" / "train.rec", tmp_path / "p" / "train.idx") as writer:
        writer.write_image(1, [4.0, 0.5], b"x" * 30, id2=3)
    shuffle_pack(tmp_path / "p", tmp_path / "s")
    record = RecordReader.open(tmp_path / "s").read_record(0)
    assert (record.header.flag, record.header.label, record.header.id, record.header.id2) == (0, 4.0, 1, 3)


def test_cli_exit_codes_and_one_line_errors(small_dataset_rec, tmp_path):
    done = run_cli("dump", str(small_dataset_rec), "--limit", "2")
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 2
    done = run_cli("verify", str(small_dataset_rec), "--decode")
    assert done.returncode == 0 and "verify: OK" in done.stdout and "decoded images  10" in done.stdout
    done = run_cli("dump", str(tmp_path / "absent"))
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {tmp_path / 'absent' / 'train.rec'}: no such file"
    bad = tmp_path / "bad"
    shutil.copytree(small_dataset_rec, bad)
    (bad / "train.idx").write_text("1\t0\n2\tx\n")
    done = run_cli("dump", str(bad))
    assert done.returncode == 2
    assert done.stderr.strip().endswith("train.idx: line 2: malformed index line '2\\tx' "
                                        "(expected '<key>\\t<offset>')")
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1
    done = run_cli("verify", str(bad))
    assert done.returncode == 1 and "problem: " in done.stdout and "verify: FAILED" in done.stdout
    done = run_cli("pack", str(small_dataset_rec.parent / "small_dataset"), str(bad))
    assert done.returncode == 2 and "already exists" in done.stderr


def test_failed_unpack_leaves_no_output(tmp_path):
    (tmp_path / "p").mkdir()
    with RecordWriter(tmp_path / "p" / "train.rec", tmp_path / "p" / "train.idx") as writer:
        writer.write_image(0, 1.0, b"a" * 40)
        writer.write_image(1, 2.5, b"b" * 40)
    with pytest.raises(RecordIOError,
                       match=r"train\.rec: record key 1: label 2\.5 is not an integer class id"):
        unpack_pack(tmp_path / "p", tmp_path / "out")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["p"]
    assert main(["dump", str(tmp_path / "p"), "--limit", "1"]) == 0


# ---------------------------------------------------------------------------------------------------
# verify: planted corruptions, each found and located


def records_of(root: Path) -> list[tuple[int, bytes]]:
    reader = RecordReader.open(root)
    return [(key, reader.read(key)) for key in reader.keys.tolist()]


def rewrite(root: Path, records: list[tuple[int, bytes]]) -> None:
    with RecordWriter(root / "train.rec", root / "train.idx") as writer:
        for key, data in records:
            writer.write(key, data)


def patch(path: Path, offset: int, data: bytes) -> None:
    blob = bytearray(path.read_bytes())
    blob[offset:offset + len(data)] = data
    path.write_bytes(bytes(blob))


def edit_idx(root: Path, edit) -> None:
    lines = (root / "train.idx").read_text().splitlines()
    (root / "train.idx").write_text("\n".join(edit(lines)) + "\n")


def replace_record(root: Path, key: int, data: bytes) -> None:
    rewrite(root, [(k, data if k == key else d) for k, d in records_of(root)])


def offset(root: Path, key: int) -> int:
    return RecordReader.open(root).offset_of(key)


def plant_bad_magic(root):
    at = offset(root, 3)
    patch(root / "train.rec", at, b"\0\0\0\0")
    return [rf"train\.rec: record key 3 at offset {at}: bad magic 0x00000000; skipped \d+ bytes"]


def plant_truncation(root):
    at = offset(root, 20)
    (root / "train.rec").write_bytes((root / "train.rec").read_bytes()[:at + 6])
    return [rf"record key 20 at offset {at}: truncated"]


def plant_bad_part_flag(root):
    at = offset(root, 5)
    length = struct.unpack("<I", (root / "train.rec").read_bytes()[at + 4:at + 8])[0]
    patch(root / "train.rec", at + 4, struct.pack("<I", (3 << 29) | length))
    return [rf"record key 5 at offset {at}: part flag 3 where 0 or 1"]


def plant_offset_past_end(root):
    size = (root / "train.rec").stat().st_size
    edit_idx(root, lambda lines: [f"4\t{size + 8}" if line.startswith("4\t") else line for line in lines])
    return [rf"train\.idx: record key 4: offset {size + 8} is past the end", "1 records are not in train.idx"]


def plant_offset_inside_a_record(root):
    at = offset(root, 6) + 12
    edit_idx(root, lambda lines: [f"6\t{at}" if line.startswith("6\t") else line for line in lines])
    return [rf"record key 6: offset {at} is not the start of a record"]


def plant_duplicate_key(root):
    edit_idx(root, lambda lines: [line.replace("8\t", "7\t", 1) if line.startswith("8\t") else line
                                  for line in lines])
    return [r"train\.idx: duplicate key 7 \(lines 7 and 8\)", "key 8 is missing from the idx"]


def plant_missing_key(root):
    edit_idx(root, lambda lines: [line for line in lines if not line.startswith("9\t")])
    return ["key 9 is missing from the idx", "1 records are not in train.idx"]


def plant_malformed_idx_line(root):
    edit_idx(root, lambda lines: [*lines[:2], "three\tfields\there", *lines[3:]])
    return [r"train\.idx: line 3: malformed index line 'three\\tfields\\there'", "key 3 is missing"]


def plant_header_range(root):
    replace_record(root, 0, encode_record([11, 23], b"", 0))
    return ["declares keys 0..22 but key 21 is missing from the idx", "key 22 is missing"]


def plant_identity_range(root):
    replace_record(root, 14, encode_record([4, 6], b"", 14))
    return [r"record key 14: identity record of class 3 covers image key 5, whose label is 4\.0$",
            r"record key 15: identity record of class 4 covers images \[5, 6\), expected a range starting "
            "at 6 and ending by 11"]


def plant_identity_label_mismatch(root):
    data = dict(records_of(root))[2]
    replace_record(root, 2, encode_record(5, data[24:], 2))
    return [r"record key 12: identity record of class 1 covers image key 2, whose label is 5\.0"]


def plant_fractional_label(root):
    data = dict(records_of(root))[6]
    replace_record(root, 6, encode_record(5.5, data[24:], 6))
    return [r"record key 6: label 5\.5 is not an integer class id"]


def plant_short_label_array(root):
    replace_record(root, 17, struct.pack("<IfQQ", 9, 0.0, 17, 0) + b"\0" * 8)
    return [rf"record key 17 at offset {offset(root, 17)}: header flag 9 announces 9 float32 labels"]


def plant_undecodable_image(root):
    data = dict(records_of(root))[7]
    replace_record(root, 7, data[:24] + b"\xff\xd8\xff" + bytes(len(data) - 27))
    return [rf"record key 7 at offset {offset(root, 7)}: image cannot be decoded"]


def plant_wrong_property(root):
    (root / "property").write_text("12,112,112\n")
    return [r"property: num_classes 12 but the pack has 10 identity records"]


PLANTS = [plant_bad_magic, plant_truncation, plant_bad_part_flag, plant_offset_past_end,
          plant_offset_inside_a_record, plant_duplicate_key, plant_missing_key, plant_malformed_idx_line,
          plant_header_range, plant_identity_range, plant_identity_label_mismatch, plant_fractional_label,
          plant_short_label_array, plant_undecodable_image, plant_wrong_property]


def test_verify_passes_the_clean_mxnet_pack(small_dataset_rec):
    result = verify_pack(small_dataset_rec, decode=True, progress=False)
    summary = dict(result.summary)
    assert result.ok and summary["images"] == "10" and summary["decoded images"] == "10"


@pytest.mark.parametrize("plant", PLANTS, ids=[p.__name__[6:] for p in PLANTS])
def test_verify_finds_and_locates_a_planted_corruption(small_dataset_rec, tmp_path, plant):
    root = tmp_path / "pack"
    shutil.copytree(small_dataset_rec, root)
    for path in root.iterdir():
        path.chmod(0o644)
    expected = plant(root)
    problems = verify_pack(root, decode=True, progress=False).problems
    text = "\n".join(problems)
    for pattern in expected:
        assert any(__import__("re").search(pattern, p) for p in problems), f"{pattern!r} not in:\n{text}"


# ---------------------------------------------------------------------------------------------------
# outputs: never into the input, a full disk leaves nothing partial


def test_pack_unpack_shuffle_refuse_an_output_that_is_or_lies_in_the_input(small_dataset, small_dataset_rec,
                                                                           tmp_path, capsys):
    from converters.errors import exit_code

    src = tmp_path / "src"
    shutil.copytree(small_dataset, src)
    before = sorted((p.relative_to(src), sha(p.read_bytes())) for p in src.rglob("*") if p.is_file())
    cases = [(["pack", src, src], src, "is also the input SRC; choose another OUT"),
             (["pack", src, src / "pack"], src / "pack", f"is inside the input folder SRC {src}"),
             (["unpack", small_dataset_rec, small_dataset_rec], small_dataset_rec, "is also the input DIR"),
             (["shuffle", small_dataset_rec, small_dataset_rec / "s"], small_dataset_rec / "s",
              "is inside the input folder DIR")]
    for argv, named, message in cases:
        capsys.readouterr()
        code = exit_code(main, argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {named}: ") and message in err[0], err
    assert sorted((p.relative_to(src), sha(p.read_bytes())) for p in src.rglob("*") if p.is_file()) == before


def test_a_full_disk_during_pack_keeps_the_previous_pack_and_leaves_nothing(small_dataset, tmp_path, capsys,
                                                                             monkeypatch):
    from converters.errors import exit_code
    from tests.faults import raiser, tmpfs
    from train.data.recordio import RecordWriter

    disk = tmp_path / "disk"
    with tmpfs(disk, 128) as real:  # the 80 KB pack fits once, not twice
        assert exit_code(main, ["pack", small_dataset, disk / "old"]) == 0
        before = {p.name: p.read_bytes() for p in (disk / "old").iterdir()}
        if not real:
            monkeypatch.setattr(RecordWriter, "write", raiser(errno.ENOSPC))
        capsys.readouterr()
        code = exit_code(main, ["pack", small_dataset, disk / "new"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err == [f"error: {disk / 'new'}: cannot write: no space left on device"], err
        assert [p.name for p in disk.iterdir()] == ["old"]
        assert {p.name: p.read_bytes() for p in (disk / "old").iterdir()} == before
