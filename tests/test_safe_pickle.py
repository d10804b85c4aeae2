"""The restricted pickle reader: what honest pickles hold loads exactly as ``pickle.loads`` gives it, and
every forged, oversized or self-referencing pickle is refused quickly with the limit or problem named."""

from __future__ import annotations

import contextlib
import io
import pickle
import re
import struct
import subprocess
import sys
import time
from collections import OrderedDict

import numpy as np
import pytest

from converters.errors import UserError
from converters.npy import read_npy
from converters.safe_pickle import (
    CorruptPickle,
    Limits,
    PickleLimit,
    RefusedPickle,
    UnsafePickle,
    load_user_pickle,
    safe_load,
    safe_loads,
)

DTYPES = ["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16", ">f4", ">i8"]


def _arrays(dtype: str) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = (rng.standard_normal((4, 6)) * 50).astype(dtype)
    return [base, np.asfortranarray(base), base[:, ::2], base[1], np.array(base[0, 0]),
            np.zeros((0, 3), dtype), base.reshape(2, 2, 6)]


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_arrays_load_exactly_as_pickle_gives_them(protocol, dtype):
    for array in _arrays(dtype):
        data = pickle.dumps(array, protocol=protocol)
        mine, theirs = safe_loads(data), pickle.loads(data)
        assert mine.dtype == theirs.dtype and mine.shape == theirs.shape
        assert mine.tobytes(order="A") == theirs.tobytes(order="A")
        assert mine.flags.f_contiguous == theirs.flags.f_contiguous
        assert mine.flags.writeable


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_plain_containers_scalars_and_bytes(protocol):
    obj = OrderedDict(z=1, a=[None, True, False, -(2 ** 63), 2 ** 64, 1.5, float("inf")],
                      t=(b"\x00\xff" * 3, "text \u00e9\u4e2d", bytearray(b"ab")),
                      s={1, 2}, f=frozenset({"x"}), n={"x": np.float32(2.5), "y": np.int64(-7), "b": np.bool_(True)},
                      shared=None)
    shared = [1, 2]
    obj["shared"] = (shared, shared)
    back = safe_loads(pickle.dumps(obj, protocol=protocol))
    assert back == obj and list(back) == list(obj) and type(back) is OrderedDict
    assert back["shared"][0] is back["shared"][1]
    assert type(back["n"]["x"]) is np.float32 and type(back["n"]["b"]) is np.bool_


def test_a_real_verification_pack_loads_as_pickle_reads_it(small_lfw):
    mine = safe_load(small_lfw)
    with open(small_lfw, "rb") as fh:
        theirs = pickle.load(fh, encoding="bytes")
    assert len(mine) == len(theirs) == 2
    assert all(np.array_equal(a, b) and type(a) is type(b) for a, b in zip(mine[0], theirs[0], strict=True))
    assert np.array_equal(np.asarray(mine[1]), np.asarray(theirs[1]))


def test_protocol5_arrays_are_not_copied():
    array = np.arange(1 << 20, dtype=np.float32)
    back = safe_loads(pickle.dumps({"w": array}, protocol=5))["w"]
    owner = back
    while isinstance(owner, (np.ndarray, memoryview)):
        owner = owner.base if isinstance(owner, np.ndarray) else owner.obj
    assert isinstance(owner, bytearray) and back.flags.writeable
    np.testing.assert_array_equal(back, array)


# --------------------------------------------------------------------------------- forged numpy state
def _forged_object_field() -> bytes:
    """An int64 structured array whose field type is rewritten to 'O' (object) in the pickle: numpy's
    ``dtype.__setstate__`` accepts it with ``hasobject`` cleared and reads the 8 data bytes as a pointer."""
    array = np.zeros(1, dtype=[("a", "<i8")])
    array["a"] = 0x4141414141414141
    data = pickle.dumps(array, protocol=2)
    forged = data.replace(b"X\x02\x00\x00\x00i8", b"X\x02\x00\x00\x00O8")
    assert forged != data
    return forged


def _forged_field_offset() -> bytes:
    """A structured dtype whose only field sits 1 GiB past the 8-byte item."""
    array = np.zeros(1, dtype=[("a", "<i8")])
    data = pickle.dumps(array, protocol=2)
    zero = b"K\x00"  # the field's offset, BININT1 0, inside {'a': (dtype('int64'), 0)}
    at = data.index(zero, data.index(b"X\x01\x00\x00\x00a"))
    return data[:at] + b"J" + struct.pack("<i", 1 << 30) + data[at + 2:]


def test_forged_dtype_crashes_plain_pickle_but_is_refused_here(tmp_path):
    forged = _forged_object_field()
    script = tmp_path / "crash.py"
    script.write_text("import pickle, sys\na = pickle.loads(sys.stdin.buffer.read())\nprint(a['a'][0])\n")
    control = subprocess.run([sys.executable, str(script)], input=forged, capture_output=True, timeout=60)
    assert control.returncode < 0 or control.returncode >= 128, "the forgery no longer crashes plain pickle"
    with pytest.raises(RefusedPickle, match="only plain numeric"):
        safe_loads(forged)


def test_a_field_offset_far_past_the_item_is_refused():
    with pytest.raises(RefusedPickle, match="only plain numeric"):
        safe_loads(_forged_field_offset())


@pytest.mark.parametrize("spec", [b"O8", b"V8", b"S4", b"U1", b"M8", b"m8"])
def test_non_numeric_dtypes_are_refused(spec):
    data = pickle.dumps(np.zeros(2, dtype="f8"), protocol=2).replace(b"X\x02\x00\x00\x00f8",
                                                                       b"X\x02\x00\x00\x00" + spec)
    with pytest.raises(RefusedPickle, match="only plain numeric"):
        safe_loads(data)


def test_dtype_state_with_altered_size_or_metadata_is_refused():
    data = pickle.dumps(np.zeros(2, dtype="f8"), protocol=2)
    # elsize -1 -> 64 in the dtype state (3, '<', None, None, None, -1, -1, 0)
    altered = data.replace(b"NNNJ\xff\xff\xff\xffJ", b"NNNK@J", 1)
    assert altered != data
    with pytest.raises(RefusedPickle, match="size, alignment or flags"):
        safe_loads(altered)


@pytest.mark.parametrize("protocol", [2, 5])
def test_array_data_must_match_shape_exactly(protocol):
    data = pickle.dumps(np.zeros(4, dtype="f4"), protocol=protocol)
    shorter = data.replace(b"K\x04\x85", b"K\x05\x85")  # shape (4,) -> (5,)
    assert shorter != data
    with pytest.raises(CorruptPickle, match="needs 20 bytes, the file gives 16"):
        safe_loads(shorter)


# --------------------------------------------------------------------------------- refused constructs
@pytest.mark.parametrize("payload", [
    b"cbuiltins\neval\n(S'1'\ntR.",
    b"cos\nsystem\n(S'true'\ntR.",
    b"(cos\nsystem\nS'true'\no.",  # OBJ
    b"(S'true'\nios\nsystem\n.",  # INST
    b"\x80\x02cnumpy\nndarray\nK\x00\x85R.",  # calling an allowed global it may only pass along
    b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R.",
    b"\x80\x02}}X\x01\x00\x00\x00aK\x01sb.",  # BUILD on a dict would run __setstate__/update
    b"\x80\x02P0\n.",  # persistent id
    b"\x80\x02\x82\x01.",  # extension registry
    b"\x80\x05\x97.",  # out-of-band buffer
    b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00f4\x85R.",  # a bare dtype
])
def test_refused_constructs(payload):
    with pytest.raises(RefusedPickle):
        safe_loads(payload)


def test_a_command_in_any_protocol_never_runs(hostile):
    payload, marker = hostile
    for protocol in range(6):
        with pytest.raises(RefusedPickle, match="refused to load posix.system"):
            safe_loads(pickle.dumps([np.zeros(2), payload], protocol=protocol))
    assert not marker.exists()


# --------------------------------------------------------------------------------- limits
def _timed(data: bytes, error: type, match: str, limits: Limits | None = None) -> None:
    started = time.perf_counter()
    with pytest.raises(error, match=match):
        safe_loads(data, limits=limits)
    assert time.perf_counter() - started < 5


def test_a_self_referencing_list_is_refused():
    cycle: list = []
    cycle.append(cycle)
    data = pickle.dumps(cycle)
    assert len(data) < 30
    _timed(data, RefusedPickle, "reference cycle")
    cyclic_dict: dict = {}
    cyclic_dict["self"] = [cyclic_dict]
    _timed(pickle.dumps(cyclic_dict), RefusedPickle, "reference cycle")


def test_a_dag_with_two_to_the_64_paths_is_refused_at_once():
    dag: list = []
    for _ in range(64):
        dag = [dag, dag]
    data = pickle.dumps(dag)
    assert len(data) < 1024
    _timed(data, PickleLimit, "counting every path")
    small: list = []
    for _ in range(10):
        small = [small, small]
    assert safe_loads(pickle.dumps(small))[0] is not None  # a modest amount of sharing is fine


def test_nesting_depth_is_bounded():
    n = 100_000
    deep = b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b"."
    _timed(deep, PickleLimit, "deeper than 100 levels")
    ok = b"\x80\x02" + b"]" * 50 + b"a" * 49 + b"."
    assert isinstance(safe_loads(ok), list)
    _timed(ok, PickleLimit, "deeper than 10", Limits(max_depth=10))


@pytest.mark.parametrize("data, match", [
    (b"\x80\x04\x8e" + (2 ** 64 - 1).to_bytes(8, "little") + b".", "declares 18446744073709551615 bytes"),
    (b"\x80\x02X\xff\xff\xff\xff.", "declares 4294967295 bytes"),
    (b"\x80\x05\x96" + (2 ** 63).to_bytes(8, "little") + b".", "declares 9223372036854775808 bytes"),
    (b"\x80\x02T\xff\xff\xff\x7f.", "declares 2147483647 bytes"),
    (b"\x80\x04\x95" + (2 ** 40).to_bytes(8, "little") + b"N.", "frame of 1099511627776 bytes"),
])
def test_declared_sizes_are_checked_before_allocating(data, match):
    _timed(data, CorruptPickle, match)


def test_byte_budget_and_string_and_int_limits():
    data = pickle.dumps([b"x" * 1000] * 3 + [b"y" * 1000], protocol=4)
    _timed(data, PickleLimit, "more than 1500 bytes", Limits(max_bytes=1500))
    _timed(pickle.dumps("z" * 5000), PickleLimit, "exceeds the limit of 100", Limits(max_string=100))
    _timed(pickle.dumps(2 ** 4000, protocol=2), PickleLimit, "integer of 501 bytes")
    _timed(pickle.dumps(list(range(100)), protocol=2), PickleLimit, "more than 50 objects", Limits(max_objects=50))


@pytest.mark.parametrize("data", [
    b"", b"\x80", b"\x80\x02", b"\x80\x02]", b"\x80\x02a.", b"\x80\x02h\x05.", b"\x80\x02(.", b"\x80\x06N.",
    b"\x80\x02\xff.", b"I12x\n.", b"\x80\x02]\x85}\x86b.", b"\x80\x02}]]s.",
])
def test_malformed_pickles_are_corrupt_not_crashes(data):
    with pytest.raises(UnsafePickle):
        safe_loads(data)


def test_random_mutations_of_a_weights_pickle_raise_only_the_readers_errors():
    rng = np.random.default_rng(1)
    base = pickle.dumps(OrderedDict(w=np.ones((3, 4), "f4"), b=np.arange(3), m={"arch": "r18"}), protocol=4)
    for _ in range(3000):
        data = bytearray(base)
        for _ in range(rng.integers(1, 4)):
            data[rng.integers(len(data))] = rng.integers(256)
        with contextlib.suppress(UnsafePickle):
            safe_loads(bytes(data))


# --------------------------------------------------------------------------------- user-facing errors
def test_user_errors_are_one_line_naming_the_file(tmp_path):
    forged = tmp_path / "forged.pdparams"
    forged.write_bytes(_forged_object_field())
    truncated = tmp_path / "truncated.pdparams"
    truncated.write_bytes(pickle.dumps({"w": np.zeros(100, "f4")}, protocol=4)[:-40])
    for path, words in [(forged, "refused: refused an array of type 'V8'"), (truncated, "not a readable weights file"),
                        (tmp_path, "is a directory"), (tmp_path / "nope", "no such file")]:
        with pytest.raises(UserError) as info:
            load_user_pickle(path, "weights file")
        assert str(info.value).startswith(f"{path}: ") and words in str(info.value)
        assert "\n" not in str(info.value)


def test_npy_reader(tmp_path):
    good = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "good.npy", good)
    np.save(tmp_path / "fortran.npy", np.asfortranarray(good))
    np.testing.assert_array_equal(read_npy(tmp_path / "good.npy"), good)
    np.testing.assert_array_equal(read_npy(tmp_path / "fortran.npy"), good)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10 ** 12, 512)})
    (tmp_path / "bomb.npy").write_bytes(header.getvalue())
    np.savez(tmp_path / "pair.npz", a=good)
    np.save(tmp_path / "objects.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    np.save(tmp_path / "short.npy", good)
    (tmp_path / "short.npy").write_bytes((tmp_path / "short.npy").read_bytes()[:-4])
    (tmp_path / "text.npy").write_text("1 2 3\n")
    for name, words in [("bomb.npy", "declares shape [1000000000000, 512]"), ("pair.npz", "is an .npz archive"),
                        ("objects.npy", "holds object values"), ("short.npy", "holds 44 bytes"),
                        ("text.npy", "not a .npy file")]:
        started = time.perf_counter()
        with pytest.raises(UserError, match=re.escape(words)):
            read_npy(tmp_path / name)
        assert time.perf_counter() - started < 2
