"""Fuzz the ``.bin`` pack reader: ``read_bin`` on mutated packs, then every image decoded.

Property: ``read_bin`` returns a ``BinPack`` whose images each decode to ``[112, 112, 3]`` uint8 or raise
``UserError`` (one line naming the file); nothing else escapes.
"""

from __future__ import annotations

import pickle

import numpy as np
from hypothesis import given

from conftest import SHARED_DATA
from converters.binfile import read_bin
from eval.synthetic import make_pack
from tests.fuzz._harness import profile, read_or_user_error, seeded_or_random, target


def _seeds() -> list[bytes]:
    out = []
    for fmt, protocol in (("bytes", 2), ("bytes", 4), ("array", 2), ("array", 4), ("array", 5)):
        pack = make_pack(1, seed=3, fmt=fmt, quality=20)
        out.append(pickle.dumps((pack.bins, pack.issame), protocol=protocol))
    arrays = make_pack(1, seed=4, fmt="array", quality=20)
    out.append(pickle.dumps((arrays.bins, np.asarray(arrays.issame)), protocol=4))
    lfw = SHARED_DATA / "small_lfw.bin"
    if lfw.is_file():  # the real pack, cut to its first two images' worth of pickle
        out.append(lfw.read_bytes()[:20000])
    return out


SEEDS = _seeds()


@target
@profile()
@given(data=seeded_or_random(SEEDS, 256))
def test_fuzz_read_bin_and_decode(workdir, data):
    def read_and_decode(path):
        pack = read_bin(path)
        for i in range(len(pack)):
            image = pack.decode(i)
            assert image.shape == (112, 112, 3) and image.dtype == np.uint8
        return pack

    pack = read_or_user_error(workdir / "pack.bin", data, read_and_decode)
    if pack is None:
        return
    assert len(pack.bins) == 2 * len(pack.issame)


def test_seeds_are_readable(workdir):
    """The positive control: the unmutated seeds are packs (protocol 5 arrays are not read from packs)."""
    for data in SEEDS[:2] + SEEDS[3:5]:
        path = workdir / "seed.bin"
        path.write_bytes(data)
        assert read_bin(path).decode(0).shape == (112, 112, 3)
