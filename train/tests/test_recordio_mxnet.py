"""Cross-check against real MXNet: packs MXNet writes read identically here, and packs written here read
identically in MXNet (single and multi-label, header first or last, split records, header-less).

MXNet 1.9.1 does not install beside numpy 2, so it runs in a separate interpreter named by the
environment variable ``ARCFACE_MXNET_PYTHON``. Without it these tests are skipped; with it they must pass:

    python -m venv /tmp/mxvenv
    /tmp/mxvenv/bin/pip install numpy==1.23.5 requests
    /tmp/mxvenv/bin/pip install --no-deps mxnet==1.9.1
    ARCFACE_MXNET_PYTHON=/tmp/mxvenv/bin/python python -m pytest train/tests/test_recordio_mxnet.py
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from train.data.layout import read_layout
from train.data.recordio import MAGIC_BYTES, RecordReader, RecordWriter, encode_record
from train.data.tools import dump_lines, pack_folder

MXNET_PYTHON = os.environ.get("ARCFACE_MXNET_PYTHON")
pytestmark = pytest.mark.skipif(not MXNET_PYTHON, reason="set ARCFACE_MXNET_PYTHON to a Python with mxnet")

MXNET_SCRIPT = r'''
import hashlib, json, sys
import mxnet as mx

command, folder = sys.argv[1], sys.argv[2]
if command == "write":
    writer = mx.recordio.MXIndexedRecordIO(folder + "/train.idx", folder + "/train.rec", "w")
    for spec in json.load(open(sys.argv[3])):
        payload = bytes.fromhex(spec["payload"])
        data = payload if spec.get("raw") else mx.recordio.pack(
            mx.recordio.IRHeader(0, spec["label"], spec["id"], spec["id2"]), payload)
        writer.write_idx(spec["key"], data)
    writer.close()
else:
    reader = mx.recordio.MXIndexedRecordIO(folder + "/train.idx", folder + "/train.rec", "r")
    for key in reader.keys:
        data = reader.read_idx(key)
        if len(data) < 24:  # a raw record, not an image record
            print(json.dumps({"key": key, "raw": hashlib.sha256(data).hexdigest()}))
            continue
        header, payload = mx.recordio.unpack(data)
        label = header.label.tolist() if header.flag > 0 else float(header.label)
        print(json.dumps({"key": key, "flag": header.flag, "label": label, "id": header.id, "id2": header.id2,
                          "length": len(payload), "sha256": hashlib.sha256(payload).hexdigest(),
                          "raw": hashlib.sha256(data).hexdigest()}))
'''


def mxnet(tmp_path: Path, *args: str) -> list[dict]:
    script = tmp_path / "mxnet_side.py"
    script.write_text(MXNET_SCRIPT)
    done = subprocess.run([MXNET_PYTHON, str(script), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def our_dump(root: Path) -> list[dict]:
    reader = RecordReader.open(root)
    rows = [json.loads(line) for line in dump_lines(root)]
    for row in rows:
        row["raw"] = hashlib.sha256(reader.read(row["key"])).hexdigest()
    return rows


def specs(header_first: bool) -> list[dict]:
    """An InsightFace-layout pack with split payloads, a multi-label image and raw (non-IRHeader) records."""
    rng = np.random.default_rng(5)
    images = []
    for key in range(1, 9):
        payload = bytearray(rng.bytes(int(rng.integers(100, 3000))))
        if key % 3 == 0:  # the magic at aligned and unaligned places in the payload
            for pos in (0, 8, 12, 50, 99):
                payload[pos:pos + 4] = MAGIC_BYTES
        label = [key // 3, 0.5, 7.0] if key == 4 else key // 3
        images.append({"key": key, "label": label, "id": key, "id2": int(rng.integers(0, 2**40)),
                       "payload": bytes(payload).hex()})
    header = {"key": 0, "label": [9, 12], "id": 0, "id2": 1, "payload": ""}
    bounds = [1, 3, 6, 9]
    identities = [{"key": 9 + c, "label": [bounds[c], bounds[c + 1]], "id": 9 + c, "id2": 0, "payload": ""}
                  for c in range(3)]
    return [header, *images, *identities] if header_first else [*images, header, *identities]


def write_ours(root: Path, records: list[dict]) -> None:
    root.mkdir(parents=True)
    with RecordWriter(root / "train.rec", root / "train.idx") as writer:
        for spec in records:
            payload = bytes.fromhex(spec["payload"])
            writer.write(spec["key"], payload if spec.get("raw") else
                         encode_record(spec["label"], payload, spec["id"], spec["id2"]))


def mxnet_write(tmp_path: Path, name: str, records: list[dict]) -> Path:
    (tmp_path / f"{name}.json").write_text(json.dumps(records))
    (tmp_path / name).mkdir()
    mxnet(tmp_path, "write", str(tmp_path / name), str(tmp_path / f"{name}.json"))
    return tmp_path / name


@pytest.mark.parametrize("header_first", [True, False])
def test_mxnet_written_pack_reads_identically_and_is_byte_identical_to_ours(tmp_path, header_first):
    records = specs(header_first)
    mx_pack = mxnet_write(tmp_path, "mx", records)
    write_ours(tmp_path / "ours", records)
    for name in ("train.rec", "train.idx"):
        assert (tmp_path / "ours" / name).read_bytes() == (mx_pack / name).read_bytes()
    rows = mxnet(tmp_path, "read", str(mx_pack))
    assert our_dump(mx_pack) == rows
    assert read_layout(RecordReader.open(mx_pack)).image_keys.tolist() == list(range(1, 9))
    assert sum(row["flag"] == 3 for row in rows) == 1 and len(rows) == 12


def test_raw_records_with_magic_at_the_start_match_mxnet(tmp_path):
    payloads = {100: MAGIC_BYTES * 3 + b"xyz", 101: MAGIC_BYTES, 102: b"", 103: b"ab" + MAGIC_BYTES + b"c"}
    records = [{"key": k, "raw": True, "payload": p.hex()} for k, p in payloads.items()]
    mx_pack = mxnet_write(tmp_path, "mx", records)
    write_ours(tmp_path / "ours", records)
    assert (tmp_path / "ours" / "train.rec").read_bytes() == (mx_pack / "train.rec").read_bytes()
    reader = RecordReader.open(mx_pack)
    assert {k: reader.read(k) for k in payloads} == payloads
    assert mxnet(tmp_path, "read", str(mx_pack)) == [
        {"key": k, "raw": hashlib.sha256(p).hexdigest()} for k, p in payloads.items()]


def test_packs_written_here_read_identically_in_mxnet(small_dataset, tmp_path):
    write_ours(tmp_path / "ours", specs(header_first=True))
    assert mxnet(tmp_path, "read", str(tmp_path / "ours")) == our_dump(tmp_path / "ours")
    pack_folder(small_dataset, tmp_path / "packed")
    assert mxnet(tmp_path, "read", str(tmp_path / "packed")) == our_dump(tmp_path / "packed")


def test_header_less_pack_from_mxnet_reads_all_keys(tmp_path):
    records = [{"key": k, "label": float(k % 2), "id": k, "id2": 0, "payload": bytes([k]).hex() * 9}
               for k in (3, 0, 2, 1)]
    mx_pack = mxnet_write(tmp_path, "mx", records)
    assert read_layout(RecordReader.open(mx_pack)).image_keys.tolist() == [3, 0, 2, 1]
    assert our_dump(mx_pack) == mxnet(tmp_path, "read", str(mx_pack))
