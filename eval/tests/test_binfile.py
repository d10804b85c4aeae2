"""Reading verification packs: real faces, Python-2 packs, resizing, and bad or hostile files."""

from __future__ import annotations

import pickle
import struct

import cv2
import numpy as np
import pytest

from converters.binfile import read_bin
from converters.errors import UserError
from converters.images import normalize
from eval.synthetic import encode_jpeg, identity_image, make_pack, write_pack


def py2_pickle(bins: list[bytes], issame: list[bool]) -> bytes:
    """A protocol-2 pickle of ``(bins, issame)`` as Python 2 wrote it: images as 8-bit ``str`` objects."""
    out = [b"\x80\x02", b"]", b"("]  # PROTO 2, EMPTY_LIST, MARK
    for blob in bins:
        out.append(b"U" + bytes([len(blob)]) + blob if len(blob) < 256 else b"T" + struct.pack("<I", len(blob)) + blob)
    out += [b"e", b"]", b"("]  # APPENDS, EMPTY_LIST, MARK
    out += [b"\x88" if s else b"\x89" for s in issame]  # NEWTRUE / NEWFALSE
    out += [b"e", b"\x86", b"."]  # APPENDS, TUPLE2, STOP
    return b"".join(out)


def test_small_lfw_decodes_to_rgb_faces(small_lfw):
    pack = read_bin(small_lfw)
    assert len(pack) == 20 and pack.pairs == 10 and pack.issame.all()
    first = pack.decode(0)
    assert first.shape == (112, 112, 3) and first.dtype == np.uint8
    bgr = cv2.imdecode(np.asarray(pack.bins[0]).reshape(-1), cv2.IMREAD_COLOR)
    assert np.array_equal(first, bgr[:, :, ::-1])  # RGB order
    assert np.array_equal(pack.decode(3), pack.decode(5))  # identical JPEGs in the pack (README)
    batches = list(pack.iter_batches(8))
    assert [(start, len(b)) for start, b in batches] == [(0, 8), (8, 8), (16, 4)]
    assert np.array_equal(batches[2][1][3], pack.decode(19))


def test_python2_pack_is_read_with_bytes_encoding(tmp_path):
    images = [encode_jpeg(identity_image(np.random.default_rng(i))) for i in range(20)]
    path = tmp_path / "py2.bin"
    path.write_bytes(py2_pickle(images, [True, False] * 5))
    pack = read_bin(path)
    assert pack.issame.tolist() == [True, False] * 5
    assert isinstance(pack.bins[0], bytes)
    expected = cv2.imdecode(np.frombuffer(images[7], np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    assert np.array_equal(pack.decode(7), expected)


def test_synthetic_pack_round_trips_in_both_image_formats(tmp_path):
    for fmt in ("array", "bytes"):
        pack = make_pack(12, seed=1, fmt=fmt)
        path = write_pack(tmp_path / f"{fmt}.bin", pack)
        read = read_bin(path)
        assert read.issame.tolist() == pack.issame and len(read) == 24
        raw = pack.bins[5].tobytes() if fmt == "array" else pack.bins[5]
        assert raw[:2] == b"\xff\xd8"  # a real JPEG
        assert read.decode(5).shape == (112, 112, 3)


def test_larger_square_image_is_resized_bicubic_to_112(tmp_path):
    big = identity_image(np.random.default_rng(0), size=224)
    data = encode_jpeg(big)
    path = tmp_path / "big.bin"
    with open(path, "wb") as fh:
        pickle.dump(([data] * 20, [True] * 10), fh)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    expected = cv2.resize(decoded, (112, 112), interpolation=cv2.INTER_CUBIC)[:, :, ::-1]
    assert np.array_equal(read_bin(path).decode(4), expected)


def test_non_square_image_is_an_error_naming_the_index(tmp_path):
    ok = encode_jpeg(identity_image(np.random.default_rng(0)))
    wide = encode_jpeg(np.zeros((112, 96, 3), np.uint8))
    path = tmp_path / "wide.bin"
    with open(path, "wb") as fh:
        pickle.dump(([ok] * 3 + [wide] + [ok] * 16, [True] * 10), fh)
    pack = read_bin(path)
    with pytest.raises(UserError, match=r"image 3: 96x112 is not square") as err:
        list(pack.iter_batches(32))
    assert str(path) in str(err.value)


def test_corrupt_image_is_an_error_naming_file_and_index(tmp_path):
    pack = make_pack(10, seed=2, fmt="bytes")
    pack.bins[13] = pack.bins[13][:40]  # truncated JPEG
    path = write_pack(tmp_path / "corrupt.bin", pack)
    read = read_bin(path)
    read.decode(12)
    with pytest.raises(UserError, match=r"image 13: cannot be decoded") as err:
        read.decode(13)
    assert err.value.path == str(path)


def test_hostile_pack_is_refused_without_running_anything(hostile, tmp_path):
    payload, marker = hostile
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([payload], [True])))
    with pytest.raises(UserError, match="refused") as err:
        read_bin(path)
    assert not marker.exists()
    assert "posix.system" in str(err.value) or "os.system" in str(err.value)


def test_pack_asking_for_builtins_is_refused(tmp_path):
    path = tmp_path / "eval.bin"
    # GLOBAL builtins.eval, then a call: refused at the GLOBAL opcode
    path.write_bytes(b"\x80\x02cbuiltins\neval\nX\x08\x00\x00\x001+1==2\x85R.")
    with pytest.raises(UserError, match="refused to load builtins.eval"):
        read_bin(path)


@pytest.mark.parametrize("payload,problem", [
    (b"", "not a readable verification pack"),
    (b"\x00\x01garbage", "not a readable verification pack"),
    (pickle.dumps(([b"x"] * 4, [True, False]))[:-9], "not a readable verification pack"),  # truncated
    (pickle.dumps({"bins": []}), "expected a pickled (bins, issame) pair"),
    (pickle.dumps(([b"x"] * 3, [True, False])), "3 images for 2 pairs"),
    (pickle.dumps(([b"x"] * 4, [True, "yes"])), "issame[1] is a str"),
    (pickle.dumps(([b"x", np.zeros(4, np.float32), b"x", b"x"], [True, False])), "image 1: a float32 array"),
    (pickle.dumps(([], [])), "holds no pairs"),
    (pickle.dumps(("images", [True])), "bins is a str"),
])
def test_malformed_packs_give_one_line_errors(tmp_path, payload, problem):
    path = tmp_path / "bad.bin"
    path.write_bytes(payload)
    with pytest.raises(UserError) as err:
        read_bin(path)
    assert problem in err.value.problem and err.value.path == str(path)


def test_missing_pack_is_an_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_bin(tmp_path / "lfw.bin")


def test_normalize_matches_insightface_arithmetic():
    rgb = np.arange(256, dtype=np.uint8).repeat(3).reshape(1, 16, 16, 3)
    x = normalize(rgb)
    assert x.shape == (1, 3, 16, 16) and x.dtype == np.float32
    expected = ((rgb.astype(np.float32) / np.float32(255)) - np.float32(0.5)) / np.float32(0.5)
    assert np.array_equal(x, np.moveaxis(expected, -1, 1))
    assert x.min() == -1.0 and x.max() == 1.0
