"""RecordIO format: the MXNet-written sample read byte-exactly, the writer reproducing it, split records,
multi-label records and header-less packs checked against an independent reader, and every bad input."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from converters.errors import UserError
from train.data.layout import read_layout, read_property
from train.data.recordio import (
    MAGIC_BYTES,
    RecordIOError,
    RecordReader,
    RecordWriter,
    decode_record,
    encode_parts,
    encode_record,
    parse_idx,
)


def oracle_read(rec: Path) -> list[tuple[int, bytes, list[int]]]:
    """Independent reader of the dmlc RecordIO format: (offset, logical bytes, part cflags) of each record."""
    blob = rec.read_bytes()
    out, pos = [], 0
    while pos < len(blob):
        start, chunks, cflags = pos, [], []
        while True:
            assert blob[pos:pos + 4] == bytes([0x0A, 0x23, 0xD7, 0xCE]), f"magic at {pos}"
            lrec = int.from_bytes(blob[pos + 4:pos + 8], "little")
            cflag, length = lrec >> 29, lrec & 0x1FFFFFFF
            chunks.append(blob[pos + 8:pos + 8 + length])
            cflags.append(cflag)
            pos += 8 + length + (4 - length % 4) % 4
            if cflag in (0, 3):
                break
        out.append((start, bytes([0x0A, 0x23, 0xD7, 0xCE]).join(chunks), cflags))
    return out


def oracle_header(data: bytes) -> tuple[int, object, int, int, bytes]:
    """(flag, label or list of labels, id, id2, payload) decoded field by field."""
    flag = int.from_bytes(data[0:4], "little")
    label = float(np.frombuffer(data[4:8], "<f4")[0])
    id_, id2 = int.from_bytes(data[8:16], "little"), int.from_bytes(data[16:24], "little")
    if flag:
        return flag, np.frombuffer(data[24:24 + 4 * flag], "<f4").tolist(), id_, id2, data[24 + 4 * flag:]
    return flag, label, id_, id2, data[24:]


def source_images(small_dataset: Path) -> list[tuple[bytes, int]]:
    lines = (small_dataset / "label.txt").read_text().splitlines()
    return [((small_dataset / p).read_bytes(), int(c)) for p, c in (line.split("\t") for line in lines)]


def write_pack(root: Path, records: list[tuple[int, bytes]]) -> Path:
    """A pack folder holding (key, logical record) in the order given."""
    root.mkdir(parents=True, exist_ok=True)
    with RecordWriter(root / "train.rec", root / "train.idx") as writer:
        for key, data in records:
            writer.write(key, data)
    return root


def insightface_records(n_img: int = 6, classes: int = 3,
                        header_first: bool = False) -> list[tuple[int, bytes]]:
    """A small InsightFace-layout pack: images 1..n (labels i*classes//n), header 0, identity records."""
    rng = np.random.default_rng(0)
    labels = [i * classes // n_img for i in range(n_img)]
    images = [(k, encode_record(labels[k - 1], rng.bytes(37 + k), k)) for k in range(1, n_img + 1)]
    header = [(0, encode_record([n_img + 1, n_img + 1 + classes], b"", 0))]
    bounds = np.searchsorted(labels, np.arange(classes + 1)) + 1
    identities = [(n_img + 1 + c, encode_record([bounds[c], bounds[c + 1]], b"", n_img + 1 + c))
                  for c in range(classes)]
    return header + images + identities if header_first else images + header + identities


# ---------------------------------------------------------------------------------------------------
# the MXNet-written sample


def test_mxnet_sample_images_are_the_source_jpegs_with_their_labels(small_dataset, small_dataset_rec):
    reader = RecordReader.open(small_dataset_rec)
    for key, (jpeg, label) in enumerate(source_images(small_dataset), 1):
        record = reader.read_record(key)
        assert hashlib.sha256(record.payload).hexdigest() == hashlib.sha256(jpeg).hexdigest()
        header = record.header
        assert (header.flag, header.label, header.id, header.id2) == (0, label, key, 0)


def test_mxnet_sample_meta_header_identity_records_and_property(small_dataset_rec):
    reader = RecordReader.open(small_dataset_rec)
    assert reader.keys.tolist() == [*range(1, 11), 0, *range(11, 21)]  # MXNet wrote the header after images
    header = reader.read_record(0)
    assert (header.header.flag, header.header.label, header.header.id, header.payload) == \
        (2, (11.0, 21.0), 0, b"")
    for key in range(11, 21):
        record = reader.read_record(key)
        assert (record.header.flag, record.header.label, record.header.id, record.payload) == \
            (2, (key - 10.0, key - 9.0), key, b"")
    layout = read_layout(reader)
    assert layout.image_keys.tolist() == list(range(1, 11))
    assert list(layout.identity_keys) == list(range(11, 21))
    assert read_property(small_dataset_rec / "property") == (10, 112, 112)


def test_mxnet_sample_agrees_with_the_independent_reader(small_dataset_rec):
    reader = RecordReader.open(small_dataset_rec)
    oracle = oracle_read(small_dataset_rec / "train.rec")
    assert [offset for offset, _, _ in oracle] == reader.offsets.tolist()
    for key, (_, data, cflags) in zip(reader.keys.tolist(), oracle):
        assert reader.read(key) == data and cflags == [0]
        flag, label, id_, id2, payload = oracle_header(data)
        record = reader.read_record(key)
        header = record.header
        assert (header.flag, header.id, header.id2, record.payload) == (flag, id_, id2, payload)
        assert (list(record.header.label) if flag else record.header.label) == label


def test_writer_reproduces_the_mxnet_pack_byte_for_byte(small_dataset_rec, tmp_path):
    reader = RecordReader.open(small_dataset_rec)
    records = []
    for record in reader:  # re-encode every header from its decoded fields, in MXNet's key order
        label = list(record.header.label) if record.header.flag else record.header.label
        data = encode_record(label, record.payload, record.header.id, record.header.id2)
        records.append((record.key, data))
    out = write_pack(tmp_path / "copy", records)
    assert (out / "train.rec").read_bytes() == (small_dataset_rec / "train.rec").read_bytes()
    assert (out / "train.idx").read_bytes() == (small_dataset_rec / "train.idx").read_bytes()


# ---------------------------------------------------------------------------------------------------
# split records, multi-label records, header-less packs


def test_single_magic_record_is_two_empty_parts():
    expected = MAGIC_BYTES + struct.pack("<I", 1 << 29) + MAGIC_BYTES + struct.pack("<I", 3 << 29)
    assert encode_parts(MAGIC_BYTES) == expected


def test_unsplit_record_length_and_padding_as_in_the_reference():
    assert len(encode_parts(bytes(1000))) == 1008 and len(encode_parts(bytes(1001))) == 1012
    assert encode_parts(b"\x01\x02\x03")[8:] == b"\x01\x02\x03\x00"


SPLIT_CASES = {
    "magic at 0": MAGIC_BYTES + b"abcdefgh",
    "magic at the end": b"abcdefgh" + MAGIC_BYTES,
    "three magics, two adjacent": b"wxyz" + MAGIC_BYTES + MAGIC_BYTES + b"01234567" + MAGIC_BYTES + b"zz",
    "magic unaligned is not split": b"ab" + MAGIC_BYTES + b"cdefg",
    "magic straddling the end of a short tail": b"abcd" + MAGIC_BYTES[:3],
}
SPLIT_CFLAGS = {
    "magic at 0": [1, 3], "magic at the end": [1, 3], "three magics, two adjacent": [1, 2, 2, 3],
    "magic unaligned is not split": [0], "magic straddling the end of a short tail": [0],
}


def test_split_records_round_trip_and_match_the_independent_reader(tmp_path):
    rng = np.random.default_rng(1)
    records = [(i, data) for i, data in enumerate(SPLIT_CASES.values())]
    jpeg_like = bytearray(rng.bytes(4000))
    for pos in (24, 400, 404, 3996):  # magic inside an image record at aligned logical offsets
        jpeg_like[pos:pos + 4] = MAGIC_BYTES
    image = encode_record(7, bytes(jpeg_like[24:]), 99)
    records.append((len(records), image))
    root = write_pack(tmp_path / "split", records)
    oracle = oracle_read(root / "train.rec")
    reader = RecordReader.open(root)
    for (key, data), (_, oracle_data, cflags), name in zip(records, oracle, [*SPLIT_CASES, "image"]):
        assert reader.read(key) == data == oracle_data, name
        if name in SPLIT_CFLAGS:
            assert cflags == SPLIT_CFLAGS[name], name
    assert oracle[-1][2] == [1, 2, 2, 2, 3]  # 4 aligned magics -> 5 parts
    assert reader.read_record(len(records) - 1).payload == bytes(jpeg_like[24:])


def test_multi_label_record_layout_and_values(tmp_path):
    labels = [3.0, 0.25, -1.5, 16777216.0]
    data = encode_record(labels, b"payload!", 123, 2**40)
    assert data[:4] == struct.pack("<I", 4) and data[4:8] == bytes(4)  # flag = count, header label 0.0
    assert oracle_header(data) == (4, labels, 123, 2**40, b"payload!")
    root = write_pack(tmp_path / "multi", [(5, data), (6, encode_record([1.0], b"", 6))])
    reader = RecordReader.open(root)
    record = reader.read_record(5)
    assert (record.header.flag, record.header.label, record.payload) == (4, tuple(labels), b"payload!")
    assert reader.read_record(6).header.label == (1.0,)


def test_header_less_pack_reads_every_key_in_idx_order(tmp_path):
    records = [(k, encode_record(k % 3, bytes([k]) * 5, k)) for k in (2, 0, 3, 1)]
    layout = read_layout(RecordReader.open(write_pack(tmp_path / "plain", records)))
    assert layout.header is None and layout.image_keys.tolist() == [2, 0, 3, 1]


def test_header_first_and_header_last_give_the_same_layout(tmp_path):
    first = read_layout(RecordReader.open(write_pack(tmp_path / "a", insightface_records(header_first=True))))
    last = read_layout(RecordReader.open(write_pack(tmp_path / "b", insightface_records(header_first=False))))
    assert first.image_keys.tolist() == last.image_keys.tolist() == list(range(1, 7))
    assert list(first.identity_keys) == list(last.identity_keys) == [7, 8, 9]


def test_idx_parser_fast_path_equals_line_by_line_parse():
    rng = np.random.default_rng(2)
    keys, offsets = rng.integers(0, 10**12, 1000), rng.integers(0, 10**15, 1000)
    text = "".join(f"{k}\t{o}\n" for k, o in zip(keys, offsets)).encode()
    for data in (text, text[:-1], text.replace(b"\n", b"\r\n")):  # with/without final newline, CRLF
        got_keys, got_offsets, bad = parse_idx(data)
        assert bad == [] and got_keys.tolist() == keys.tolist() and got_offsets.tolist() == offsets.tolist()


# ---------------------------------------------------------------------------------------------------
# bad input: one-line errors naming the file and the key or offset


@pytest.fixture
def pack(tmp_path) -> Path:
    return write_pack(tmp_path / "pack", insightface_records())


def patch(path: Path, offset: int, data: bytes) -> None:
    blob = bytearray(path.read_bytes())
    blob[offset:offset + len(data)] = data
    path.write_bytes(bytes(blob))


def test_error_type_is_a_user_error():
    assert issubclass(RecordIOError, UserError)


def test_wrong_magic_names_file_key_and_offset(pack):
    offset = RecordReader.open(pack).offset_of(3)
    patch(pack / "train.rec", offset, bytes(4))
    with pytest.raises(RecordIOError,
                       match=rf"train\.rec: record key 3 at offset {offset}: bad magic 0x00000000"):
        RecordReader.open(pack).read(3)


def test_truncated_record_names_key_and_offset(pack):
    reader = RecordReader.open(pack)
    last_key, offset = int(reader.keys[-1]), int(reader.offsets[-1])
    (pack / "train.rec").write_bytes((pack / "train.rec").read_bytes()[:-4])
    with pytest.raises(RecordIOError, match=rf"record key {last_key} at offset {offset}: truncated"):
        RecordReader.open(pack).read(last_key)


def test_record_running_into_the_next_record_is_reported(pack):
    reader = RecordReader.open(pack)
    offset = reader.offset_of(2)
    patch(pack / "train.rec", offset + 4, struct.pack("<I", 1000))
    with pytest.raises(RecordIOError, match=rf"record key 2 at offset {offset}: the record runs past offset "
                       rf"{reader.offset_of(3)}"):
        RecordReader.open(pack).read(2)


def test_first_part_with_a_continuation_flag_is_reported(pack):
    offset = RecordReader.open(pack).offset_of(4)
    length = struct.unpack("<I", (pack / "train.rec").read_bytes()[offset + 4:offset + 8])[0]
    patch(pack / "train.rec", offset + 4, struct.pack("<I", (2 << 29) | length))
    with pytest.raises(RecordIOError, match=rf"record key 4 at offset {offset}: part flag 2"):
        RecordReader.open(pack).read(4)


def test_idx_offset_past_the_end_names_key_and_offset(pack):
    size = (pack / "train.rec").stat().st_size
    lines = (pack / "train.idx").read_text().splitlines()
    lines[4] = f"5\t{size + 100}"
    (pack / "train.idx").write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordIOError,
                       match=rf"train\.idx: record key 5: offset {size + 100} is past the end"):
        RecordReader.open(pack)


def test_duplicate_key_names_both_lines(pack):
    lines = (pack / "train.idx").read_text().splitlines()
    lines[5] = "5\t" + lines[5].split("\t")[1]
    (pack / "train.idx").write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordIOError, match=r"train\.idx: duplicate key 5 \(lines 5 and 6\)"):
        RecordReader.open(pack)


@pytest.mark.parametrize("line", ["5 100", "5\t", "\t100", "x\t100", "5\t100\t7", "", "-5\t100", "5\t1e3"])
def test_malformed_idx_line_names_its_line_number(pack, line):
    lines = (pack / "train.idx").read_text().splitlines()
    lines[2] = line
    (pack / "train.idx").write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordIOError, match=r"train\.idx: line 3: malformed index line"):
        RecordReader.open(pack)


def test_missing_key_is_named(pack):
    lines = (pack / "train.idx").read_text().splitlines()
    (pack / "train.idx").write_text("\n".join(line for line in lines if not line.startswith("4\t")) + "\n")
    reader = RecordReader.open(pack)
    with pytest.raises(RecordIOError, match=r"train\.idx: no record with key 4"):
        reader.read(4)
    with pytest.raises(RecordIOError, match=r"declares images 1\.\.6 and identity records 7\.\.9, but key 4 "
                       "is missing from the idx"):
        read_layout(reader)


@pytest.mark.parametrize("label, found", [([7, 12], "key 10 is missing"),
                                          ([7, 9], "the idx also holds key 9")])
def test_header_range_disagreeing_with_the_idx_is_named(tmp_path, label, found):
    records = [(k, encode_record(label, b"", 0) if k == 0 else data) for k, data in insightface_records()]
    reader = RecordReader.open(write_pack(tmp_path / "p", records))
    with pytest.raises(RecordIOError, match=found):
        read_layout(reader)


@pytest.mark.parametrize("label", [[0, 5], [7.5, 10], [7]])
def test_meta_header_label_that_is_not_a_range_is_named(tmp_path, label):
    records = [(k, encode_record(label, b"", 0) if k == 0 else data) for k, data in insightface_records()]
    with pytest.raises(RecordIOError, match=r"record key 0: meta header label .* is not a record range"):
        read_layout(RecordReader.open(write_pack(tmp_path / "p", records)))


def test_label_count_beyond_the_record_is_named(tmp_path):
    data = struct.pack("<IfQQ", 1000, 0.0, 1, 0) + b"short"
    reader = RecordReader.open(write_pack(tmp_path / "p", [(1, data)]))
    with pytest.raises(RecordIOError, match=r"record key 1 at offset 0: header flag 1000 announces 1000"):
        reader.read_record(1)


def test_record_shorter_than_the_header_is_named(tmp_path):
    reader = RecordReader.open(write_pack(tmp_path / "p", [(1, b"tiny")]))
    with pytest.raises(RecordIOError, match=r"record key 1 at offset 0: 4 bytes, shorter than the 24-byte"):
        reader.read_record(1)
    with pytest.raises(ValueError):
        decode_record(b"")


def test_missing_files_are_named(tmp_path):
    with pytest.raises(RecordIOError, match=r"train\.rec: no such file"):
        RecordReader.open(tmp_path)
    (tmp_path / "train.rec").write_bytes(b"")
    with pytest.raises(RecordIOError, match=r"train\.idx: no such file"):
        RecordReader.open(tmp_path)


def test_reader_works_after_fork_with_its_own_handle(pack):
    import os

    reader = RecordReader.open(pack)
    expected = reader.read(3)
    parent_fd = reader._fd
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must reopen, read the same bytes, leave the parent's descriptor alone
        ok = reader.read(3) == expected and reader._fd != parent_fd
        os.write(write_end, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read_end, 1) == b"1"
    assert reader._fd == parent_fd and reader.read(3) == expected
