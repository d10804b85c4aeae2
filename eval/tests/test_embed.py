"""Embedding backends: agreement on real faces, streaming, batch independence, weights errors."""

from __future__ import annotations

import numpy as np
import pytest

from converters.binfile import read_bin
from converters.errors import UserError
from eval.embed import (
    BACKENDS,
    Embedder,
    embed_pack,
    export_paddle_inference,
    load_weights,
    make_embedder,
)
from eval.protocol import decisions_differ, evaluate_flip
from eval.synthetic import make_pack, write_pack


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_every_backend_gives_the_same_fold_accuracies_on_small_lfw(r18_files, small_lfw):
    pack = read_bin(small_lfw)
    runs = {}
    for backend in BACKENDS:
        weights = r18_files["onnx" if backend == "onnx" else "pdparams" if backend.startswith("paddle") else "pth"]
        source = load_weights(weights)
        embedder = make_embedder(source, backend, threads=2, cache_dir=r18_files["cache"])
        runs[backend] = embed_pack(pack, embedder, batch_size=8, progress=False)
    ref = runs["torch"]
    ref_result = evaluate_flip(ref.original, ref.flipped, pack.issame)
    for backend, emb in runs.items():
        assert emb.original.shape == (20, 512) and emb.flipped.shape == (20, 512)
        # the forward gate: embedding cosine >= 0.999999 against the PyTorch reference
        assert cosines(emb.original, ref.original).min() >= 0.999999, backend
        assert cosines(emb.flipped, ref.flipped).min() >= 0.999999, backend
        result = evaluate_flip(emb.original, emb.flipped, pack.issame)
        assert result.fold_accuracies.tolist() == ref_result.fold_accuracies.tolist(), backend
        assert result.thresholds.tolist() == ref_result.thresholds.tolist(), backend
        assert decisions_differ(result, ref_result) == 0
        assert result.xnorm == pytest.approx(ref_result.xnorm, rel=1e-5)
    assert not np.allclose(ref.original, ref.flipped, rtol=1e-2)  # the flipped copy really is different


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


def test_paddle_inference_export_is_cached_by_weights_hash(r18_files):
    source = load_weights(r18_files["pdparams"])
    first = export_paddle_inference(source, r18_files["cache"])
    stamp = first.with_suffix(".pdiparams").stat().st_mtime_ns
    again = export_paddle_inference(load_weights(r18_files["pdparams"]), r18_files["cache"])
    assert again == first and again.with_suffix(".pdiparams").stat().st_mtime_ns == stamp
    assert source.sha256[:32] in first.parent.name


def test_weights_problems_are_user_errors(r18_files, tmp_path):
    with pytest.raises(UserError, match="unknown weights format '.npz'"):
        load_weights(tmp_path / "model.npz")
    with pytest.raises(UserError, match="no such file"):
        load_weights(tmp_path / "missing.pth")
    with pytest.raises(UserError, match="--arch r50 expects"):
        load_weights(r18_files["pdparams"], arch="r50")
    with pytest.raises(UserError, match="runs only with --backend onnx"):
        make_embedder(load_weights(r18_files["onnx"]), "paddle-inference", threads=1)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage")
    with pytest.raises(UserError, match="not a readable ONNX model|expected one image input"):
        load_weights(broken)


def test_onnx_export_follows_insightface(r18_files):
    import onnx

    model = onnx.load(str(r18_files["onnx"]))
    assert model.opset_import[0].version == 11
    (inp,) = model.graph.input
    assert inp.name == "data"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["None", 3, 112, 112]
    ops = {n.op_type for n in model.graph.node[:8]}
    assert not ops & {"Sub", "Mul"}  # normalisation is outside the graph


@pytest.mark.slow
def test_converted_r50_gives_the_same_fold_accuracies_with_every_backend(small_lfw, tmp_path):
    """Converted weights on paddle-inference and paddle, the original on torch, and an
    InsightFace-style ONNX export of the original on onnxruntime agree pair for pair."""
    from converters.checkpoint import write_paddle_weights, write_torch_state_dict
    from converters.demo import demo_state_dict
    from converters.mapping import torch_to_paddle
    from eval.embed import export_onnx

    arrays = demo_state_dict("r50")
    write_torch_state_dict(tmp_path / "r50.pth", arrays)
    write_paddle_weights(tmp_path / "r50.pdparams", torch_to_paddle(arrays, "r50", 512, "demo"))
    export_onnx(arrays, "r50", 512, tmp_path / "r50.onnx")
    del arrays
    pack = read_bin(small_lfw)
    results = {}
    for backend, weights in [("paddle-inference", "r50.pdparams"), ("paddle", "r50.pdparams"),
                             ("torch", "r50.pth"), ("onnx", "r50.onnx")]:
        embedder = make_embedder(load_weights(tmp_path / weights), backend, threads=2, cache_dir=tmp_path / "cache")
        emb = embed_pack(pack, embedder, batch_size=20, progress=False)
        results[backend] = evaluate_flip(emb.original, emb.flipped, pack.issame)
        del embedder
    ref = results["torch"]
    for backend, result in results.items():
        assert result.fold_accuracies.tolist() == ref.fold_accuracies.tolist(), backend
        assert result.thresholds.tolist() == ref.thresholds.tolist(), backend
        assert decisions_differ(result, ref) == 0, backend
        assert result.xnorm == pytest.approx(ref.xnorm, rel=1e-5), backend
