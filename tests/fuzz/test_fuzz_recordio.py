"""Fuzz the RecordIO parsers: records and parts, the ``.idx`` text, ``property``, a whole pack's reader,
layout and ``verify --decode``.

Property: each returns a value or raises its documented error: ``ValueError`` (``decode_record``),
``CorruptRecord`` (``parse_parts``), nothing (``parse_idx``), ``RecordIOError``/``UserError`` (files).
"""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from converters.errors import UserError
from tests.fuzz._harness import mutated, profile, read_or_user_error, seeded_or_random, target
from train.data.layout import read_layout, read_property, write_pack
from train.data.pack_check import verify_pack
from train.data.recordio import (
    CorruptRecord,
    IRHeader,
    RecordReader,
    decode_record,
    encode_parts,
    encode_record,
    parse_idx,
    parse_parts,
    read_idx,
)

RECORD_SEEDS = [encode_record(3.0, b"payload"), encode_record([1.0, 5.0], b""), encode_record([2.0], b"\xce\xd7\x23\x0a" * 3),
                encode_record(0.0, b"\0" * 40, 7, 9)]
PART_SEEDS = [encode_parts(r) for r in RECORD_SEEDS] + [encode_parts(b"ab\0\0" + struct.pack("<I", 0xCED7230A) + b"cd")]


@target
@profile()
@given(seeded_or_random(RECORD_SEEDS))
def test_fuzz_decode_record(data):
    try:
        header, payload = decode_record(data)
    except ValueError:
        return
    assert isinstance(header, IRHeader) and isinstance(payload, bytes)
    assert header.flag == 0 or len(header.label) == header.flag


@target
@profile()
@given(seeded_or_random(PART_SEEDS))
def test_fuzz_parse_parts(data):
    try:
        record, end, parts = parse_parts(data, 0, len(data))
    except CorruptRecord as err:
        assert 0 <= err.offset <= len(data)
        return
    assert 0 < end <= len(data) and end % 4 == 0 and parts >= 1
    assert len(record) + 8 * parts - 4 * (parts - 1) <= end  # every part's header, the magics re-inserted


IDX_SEEDS = [b"0\t0\n1\t44\n2\t88\n", b"5\t0", b"1\t0\r\n2\t16\r\n", b""]


@target
@profile()
@given(seeded_or_random(IDX_SEEDS, 128))
@example(b"1\t2\t3\n")
@example(b"1 2\n")
@example(b"99999999999999999999\t1\n")
def test_fuzz_parse_idx(data):
    keys, offsets, bad = parse_idx(data)
    assert len(keys) == len(offsets)
    assert keys.dtype == offsets.dtype == np.int64
    assert (keys >= 0).all() and (offsets >= 0).all()
    for number, text in bad:
        assert number >= 1 and isinstance(text, bytes)


@target
@profile()
@given(data=seeded_or_random([b"10,112,112\n", b"93431,112,112", b"1,2,3\n4,5,6\n"], 64))
@example(data=b"\xff\xfe,1,2")
@example(data="١,٢,٣".encode())  # digits that are not ASCII
@example(data=b"1\x1c,2,3\n4,5,6\n")  # str.strip() removes \x1c but int() does not accept it
def test_fuzz_read_property(workdir, data):
    found = read_or_user_error(workdir / "property", data, read_property, names_file=False)
    if found is None:
        return
    assert min(found) >= 0


def _pack_seed(tmp_path_factory) -> tuple[bytes, bytes]:
    root = tmp_path_factory.mktemp("seed-pack")
    rng = np.random.default_rng(0)
    images = [cv2.imencode(".jpg", rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))[1].tobytes() for _ in range(4)]
    write_pack(root, [0, 0, 1, 2], images, (8, 8))
    return (root / "train.rec").read_bytes(), (root / "train.idx").read_bytes()


@pytest.fixture(scope="module")
def pack_seed(tmp_path_factory):
    return _pack_seed(tmp_path_factory)


@target
@profile()
@given(choice=st.data())
def test_fuzz_pack_reader_layout_and_verify(workdir, pack_seed, choice):
    rec, idx = pack_seed
    root = workdir / "pack"
    root.mkdir(exist_ok=True)
    which = choice.draw(st.sampled_from(["rec", "idx", "both"]))
    if which in ("rec", "both"):
        rec = choice.draw(mutated([rec]))
    if which in ("idx", "both"):
        idx = choice.draw(mutated([idx]))
    (root / "train.rec").write_bytes(rec)
    (root / "train.idx").write_bytes(idx)
    (root / "property").write_text("3,8,8\n")
    try:
        with RecordReader.open(root) as reader:
            for record in reader:
                assert isinstance(record.payload, bytes)
            read_layout(reader)
    except UserError as err:
        assert "\n" not in str(err)
    try:
        result = verify_pack(root, decode=True, progress=False)
    except UserError as err:
        assert "\n" not in str(err)
        return
    assert all("\n" not in p for p in result.problems)


@target
@profile()
@given(data=seeded_or_random(IDX_SEEDS, 128))
def test_fuzz_read_idx(workdir, data):
    found = read_or_user_error(workdir / "fuzz.idx", data, read_idx, names_file=False)
    if found is None:
        return
    keys, offsets = found
    assert len(keys) == len(offsets)
