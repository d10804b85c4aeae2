"""The restricted unpickler and the atomic writer."""

from __future__ import annotations

import pickle
from collections import OrderedDict

import numpy as np
import pytest

from converters.checkpoint import atomic_output, strip_prefixes
from converters.safe_pickle import RefusedPickle, safe_load, safe_loads


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_numpy_arrays_and_plain_containers_load(protocol):
    obj = OrderedDict(a=np.arange(6, dtype=np.float32).reshape(2, 3), b=[True, False], c=(b"jpeg", 3),
                      d={"x": np.int64(7)})
    back = safe_loads(pickle.dumps(obj, protocol=protocol))
    assert list(back) == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(back["a"], obj["a"])
    assert back["b"] == [True, False] and back["c"] == (b"jpeg", 3) and back["d"]["x"] == 7


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_a_pickle_that_runs_a_command_is_refused_before_running(hostile, protocol):
    payload, marker = hostile
    with pytest.raises(RefusedPickle, match="refused to load posix.system"):
        safe_loads(pickle.dumps({"w": payload}, protocol=protocol))
    assert not marker.exists()


def test_builtins_and_object_arrays_are_refused():
    with pytest.raises(RefusedPickle):
        safe_loads(pickle.dumps(eval))
    with pytest.raises(RefusedPickle, match="only plain numeric and bool arrays"):
        safe_loads(pickle.dumps(np.array([1, "a"], dtype=object)))


def test_python2_style_byte_strings_load_with_bytes_encoding(tmp_path):
    # a protocol-2 pickle whose str holds bytes >= 0x80, as Python 2 wrote JPEGs into .bin packs
    data = b"\x80\x02]q\x00U\x04\xff\xd8\xff\xe0q\x01a."
    path = tmp_path / "py2.bin"
    path.write_bytes(data)
    assert safe_load(path) == [b"\xff\xd8\xff\xe0"]


def test_atomic_output_leaves_nothing_when_the_block_fails(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and list(tmp_path.iterdir()) == [target]


def test_ddp_and_compile_prefixes_are_stripped_even_when_nested():
    assert strip_prefixes(["module.a", "module.b"]) == "module."
    assert strip_prefixes(["module._orig_mod.a", "module._orig_mod.b"]) == "module._orig_mod."
    assert strip_prefixes(["module.a", "b"]) == ""
