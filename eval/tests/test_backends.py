"""Embedding backends: agreement on real faces, and which backend a model file may run with."""

from __future__ import annotations

import numpy as np
import pytest

from converters.binfile import read_bin
from converters.errors import UserError
from converters.parity import cosines
from eval.backends import BACKENDS, make_embedder
from eval.protocol import decisions_differ, evaluate_flip
from eval.sources import load_weights
from eval.stream import embed_pack
from parity_tests.archs import LARGE_ENABLED


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


def test_an_onnx_model_runs_only_on_the_onnx_backend(r18_files):
    source = load_weights(r18_files["onnx"])
    for backend in ("paddle-inference", "paddle", "torch"):
        with pytest.raises(UserError, match=f"r18.onnx: an .onnx model runs only with --backend onnx, not {backend}"):
            make_embedder(source, backend, threads=1)
    with pytest.raises(UserError, match="unknown backend 'tensorrt'"):
        make_embedder(source, "tensorrt", threads=1)


@pytest.mark.slow
@pytest.mark.skipif(not LARGE_ENABLED, reason="r50 on every backend runs under `make parity-large` (r18 above "
                    "checks the same in `make test`)")
def test_converted_r50_gives_the_same_fold_accuracies_with_every_backend(small_lfw, tmp_path):
    """Converted weights on paddle-inference and paddle, the original on torch, and an
    InsightFace-style ONNX export of the original on onnxruntime agree pair for pair."""
    from converters.checkpoint import write_paddle_weights, write_torch_state_dict
    from converters.demo import demo_state_dict
    from converters.mapping import torch_to_paddle
    from eval.export import export_onnx

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
