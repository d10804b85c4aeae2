"""Fuzz the restricted unpickler ``converters.safe_pickle``: random bytes, mutated pickles of real weights
and of ``.bin`` packs, and generated opcode streams.

Property: ``safe_loads`` returns plain data (containers, numbers, strings, bytes and numpy arrays of plain
dtypes whose every byte can be read) or raises ``UnsafePickle``; ``load_user_pickle`` returns or raises a
one-line ``UserError``. Any other exception, a hang or a crash is a finding.
"""

from __future__ import annotations

import pickle
import pickletools
import struct

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

from converters.safe_pickle import NUMPY_GLOBALS, UnsafePickle, load_user_pickle, safe_loads
from eval.synthetic import make_pack
from tests.fuzz._harness import profile, read_or_user_error, seeded_or_random, target

PLAIN = (type(None), bool, int, float, complex, str, bytes, bytearray, np.generic)


def _weights() -> dict:
    rng = np.random.default_rng(0)
    return {"conv1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
            "bn1._mean": np.zeros(4, np.float32), "bn1._variance": np.ones(4, np.float32),
            "fc.weight": rng.standard_normal((8, 4)).astype(np.float16), "step": np.int64(3),
            "mask": np.array([True, False]), "StructuredToParameterName@@": {"conv1.weight": "conv2d_0.w_0"}}


def _seeds() -> list[bytes]:
    out = [pickle.dumps(_weights(), protocol=p) for p in (2, 4, 5)]
    pack = make_pack(1, seed=1, fmt="bytes", quality=10)
    out += [pickle.dumps((pack.bins, pack.issame), protocol=p) for p in (2, 4)]
    arrays = make_pack(1, seed=2, fmt="array", quality=10)
    out.append(pickle.dumps((arrays.bins, np.asarray(arrays.issame)), protocol=4))
    out.append(_pdparams())
    return out


def _pdparams() -> bytes:
    """A real ``.pdparams`` as the project writes it (protocol 5, metadata entry)."""
    import tempfile
    from collections import OrderedDict
    from pathlib import Path

    from converters.checkpoint import PaddleWeights, write_paddle_weights

    arrays = OrderedDict((k, v) for k, v in _weights().items() if isinstance(v, np.ndarray))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.pdparams"
        write_paddle_weights(path, PaddleWeights(arrays, {"arch": "r18", "source": "fuzz seed"}), atomic=False)
        return path.read_bytes()


SEEDS = _seeds()


def check_plain(value, depth: int = 0) -> None:
    """Walk a loaded value: only plain data, and arrays of plain dtypes that can be read end to end."""
    assert depth < 1000
    if isinstance(value, np.ndarray):
        assert value.dtype.names is None and value.dtype.subdtype is None and not value.dtype.hasobject, value.dtype
        value.tobytes()  # touches every byte: a forged array would read out of bounds here
    elif isinstance(value, dict):
        for k, v in value.items():
            check_plain(k, depth + 1)
            check_plain(v, depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            check_plain(v, depth + 1)
    else:
        assert isinstance(value, PLAIN) or type(value).__module__.startswith("numpy"), type(value)
        if isinstance(value, np.generic):
            assert not value.dtype.hasobject


def loads_or_refuses(data: bytes) -> None:
    try:
        value = safe_loads(data, allowed=NUMPY_GLOBALS)
    except UnsafePickle as err:
        assert "\n" not in str(err), str(err)
        return
    check_plain(value)


# ---------------------------------------------------------------------------------------------------
# generated opcode streams

GLOBALS = sorted(NUMPY_GLOBALS) + [("os", "system"), ("builtins", "eval"), ("numpy", "frombuffer"),
                                                  ("numpy.lib.format", "read_array"), ("builtins", "getattr")]
_OPS = [op for op in pickletools.opcodes if op.name not in ("PROTO", "STOP")]
_STRINGS = st.sampled_from([b"<f4", b"|u1", b"|b1", b"O8", b"V8", b"<M8", b"|S3", b"f4", b"i8", b"latin1",
                            b"numpy", b"ndarray", b"dtype", b"x" * 9])
_INTS = st.one_of(st.integers(0, 8), st.sampled_from([255, 256, 2 ** 31 - 1, 2 ** 32 - 1, 2 ** 63, 2 ** 64 - 1]))


def _arg(name: str):
    if name == "uint1":
        return _INTS.map(lambda v: bytes([v & 0xFF]))
    if name == "uint2":
        return _INTS.map(lambda v: struct.pack("<H", v & 0xFFFF))
    if name in ("int4", "uint4"):
        return _INTS.map(lambda v: struct.pack("<I", v & 0xFFFFFFFF))
    if name == "uint8":
        return _INTS.map(lambda v: struct.pack("<Q", v & (2 ** 64 - 1)))
    if name == "float8":
        return st.floats(allow_nan=True).map(lambda v: struct.pack(">d", v))
    if name in ("decimalnl_short", "decimalnl_long"):
        return st.integers(-(2 ** 70), 2 ** 70).map(lambda v: str(v).encode() + (b"L" if "long" in name else b"") + b"\n")
    if name == "floatnl":
        return st.floats(allow_nan=True).map(lambda v: repr(v).encode() + b"\n")
    if name in ("stringnl", "unicodestringnl"):
        return _STRINGS.map(lambda s: b"'" + s + b"'\n" if name == "stringnl" else s + b"\n")
    if name == "stringnl_noescape_pair":
        return st.sampled_from(GLOBALS).map(lambda g: f"{g[0]}\n{g[1]}\n".encode())
    if name == "stringnl_noescape":
        return _STRINGS.map(lambda s: s + b"\n")
    if name in ("long1", "string1", "bytes1", "unicodestring1"):
        return st.one_of(_STRINGS, st.binary(max_size=12)).map(lambda s: bytes([len(s)]) + s)
    if name in ("long4", "string4", "bytes4", "unicodestring4"):
        return st.one_of(_STRINGS.map(lambda s: struct.pack("<i", len(s)) + s),
                         _INTS.map(lambda v: struct.pack("<I", v & 0xFFFFFFFF)))
    if name in ("bytes8", "unicodestring8", "bytearray8"):
        return st.one_of(_STRINGS.map(lambda s: struct.pack("<Q", len(s)) + s),
                         _INTS.map(lambda v: struct.pack("<Q", v & (2 ** 64 - 1))))
    raise AssertionError(f"no strategy for pickle argument {name}")


# globals and arrays are what the allow-list is about: build them more often than their share
_GLOBAL_PUSH = st.sampled_from(GLOBALS).map(
    lambda g: b"\x8c" + bytes([len(g[0])]) + g[0].encode() + b"\x8c" + bytes([len(g[1])]) + g[1].encode() + b"\x93")


@st.composite
def opcode_stream(draw) -> bytes:
    proto = draw(st.integers(2, 5))
    body = draw(st.lists(st.one_of(st.sampled_from(_OPS).flatmap(
        lambda op: st.tuples(st.just(op.code.encode("latin1")), _arg(op.arg.name) if op.arg else st.just(b""))
        .map(b"".join)), _GLOBAL_PUSH), max_size=40))
    return bytes([0x80, proto]) + b"".join(body) + b"."


@target
@profile()
@given(seeded_or_random(SEEDS, 512))
def test_fuzz_safe_loads_mutated(data):
    loads_or_refuses(data)


@target
@profile()
@given(opcode_stream())
@example(b"\x80\x02]q\x00h\x00a.")  # a list containing itself
@example(b"\x80\x04\x8c\x01a\x94" + b"(h\x00h\x00l\x94" * 64 + b".")  # a DAG with 2^64 paths
@example(b"\x80\x02X\xff\xff\xff\xff.")  # a 4 GiB string declared in 8 bytes
@example(b"\x80\x04\x8e" + b"\xff" * 8 + b".")  # a 2^64-byte string
def test_fuzz_safe_loads_opcode_streams(data):
    loads_or_refuses(data)


@target
@profile()
@given(data=st.one_of(seeded_or_random(SEEDS, 256), opcode_stream()))
def test_fuzz_load_user_pickle(workdir, data):
    value = read_or_user_error(workdir / "model.pdparams", data, lambda path: load_user_pickle(path, ".pdparams file"))
    if value is None:
        return
    check_plain(value)


def test_seeds_load():
    """The positive control: every unmutated seed loads with the allow-list it is meant for."""
    for data in SEEDS:
        check_plain(safe_loads(data))
