"""Streaming a pack through a backend: batches decoded one at a time, the mirror image, batch independence."""

from __future__ import annotations

import numpy as np
import pytest

from converters.binfile import read_bin
from converters.errors import UserError
from eval.backends import Embedder, make_embedder
from eval.sources import load_weights
from eval.stream import embed_pack
from eval.synthetic import make_pack, write_pack


class Recorder(Embedder):
    """A model-free embedder: per-channel means of the input and of its left half; records every call."""

    name = "recorder"

    def __init__(self):
        self.calls: list[np.ndarray] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(batch.copy())
        return np.concatenate([batch.mean(axis=(2, 3)), batch[..., :56].mean(axis=(2, 3))], axis=1)


def test_embed_pack_streams_batches_and_feeds_the_mirror_image(tmp_path):
    pack = read_bin(write_pack(tmp_path / "p.bin", make_pack(11, seed=4)))
    decoded: list[int] = []
    original_decode = pack.decode
    recorder = Recorder()

    def counting_decode(index):
        decoded.append(index)
        if index == 5:  # by the time image 5 is decoded, only the first batch has been embedded
            assert len(recorder.calls) == 2
        return original_decode(index)

    pack.decode = counting_decode
    emb = embed_pack(pack, recorder, batch_size=5, progress=False)
    assert [len(c) for c in recorder.calls] == [5] * 8 + [2, 2]  # original, flipped per batch
    assert decoded == list(range(22))
    first, mirrored = recorder.calls[0], recorder.calls[1]
    assert np.array_equal(mirrored, first[..., ::-1])
    assert emb.original.shape == (22, 6) and emb.original.dtype == np.float32
    assert np.allclose(emb.original[:, :3], emb.flipped[:, :3], atol=1e-6)  # mirroring keeps channel means
    assert not np.allclose(emb.original[:, 3:], emb.flipped[:, 3:])  # ... but not the left half's


def test_results_do_not_depend_on_batch_size(r18_files, small_lfw):
    pack = read_bin(small_lfw)
    embedder = make_embedder(load_weights(r18_files["pth"]), "torch", threads=2)
    small = embed_pack(pack, embedder, batch_size=3, flip=False, progress=False)
    large = embed_pack(pack, embedder, batch_size=20, flip=False, progress=False)
    assert small.flipped is None
    np.testing.assert_allclose(small.original, large.original, rtol=0, atol=1e-5 * np.abs(large.original).max())


def test_corrupt_image_stops_embedding_with_its_index(tmp_path):
    synthetic = make_pack(10, seed=5, fmt="bytes")
    synthetic.bins[17] = b"\xff\xd8 not really a jpeg"
    pack = read_bin(write_pack(tmp_path / "bad.bin", synthetic))
    with pytest.raises(UserError, match="image 17: cannot be decoded"):
        embed_pack(pack, Recorder(), batch_size=4, progress=False)
