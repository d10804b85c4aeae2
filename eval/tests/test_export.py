"""Exported models of the evaluation backends: converters/export.py's exports, cached by the weights' hash,
in InsightFace's ONNX layout."""

from __future__ import annotations

import numpy as np

from eval.export import cached_onnx, export_paddle_inference
from eval.sources import load_weights


def test_paddle_inference_export_is_cached_by_weights_hash(r18_files):
    source = load_weights(r18_files["pdparams"])
    first = export_paddle_inference(source, r18_files["cache"])
    stamp = first.with_suffix(".pdiparams").stat().st_mtime_ns
    again = export_paddle_inference(load_weights(r18_files["pdparams"]), r18_files["cache"])
    assert again == first and again.with_suffix(".pdiparams").stat().st_mtime_ns == stamp
    assert source.sha256[:32] in first.parent.name
    assert sorted(p.name for p in first.parent.iterdir()) == ["model.json", "model.pdiparams"]


def test_onnx_export_follows_insightface(r18_files):
    import onnx

    from converters.export import insightface_normalises_inside

    model = onnx.load(str(r18_files["onnx"]))
    assert model.opset_import[0].version == 11
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "data" and out.name == "embedding"
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["None", 3, 112, 112]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["None", 512]
    ops = {n.op_type for n in model.graph.node[:8]}
    assert not ops & {"Sub", "Mul"}  # normalisation is outside the graph
    assert not insightface_normalises_inside(model)


def test_onnx_backend_export_is_cached_and_runs_like_the_fixture(r18_files, tmp_path):
    """The onnx backend's export of a .pdparams (converted back to the PyTorch reference) is made once and
    gives the embeddings of the export of the original .pth."""
    import onnxruntime as ort

    first = cached_onnx(load_weights(r18_files["pdparams"]), tmp_path)
    stamp = first.stat().st_mtime_ns
    assert cached_onnx(load_weights(r18_files["pdparams"]), tmp_path) == first
    assert first.stat().st_mtime_ns == stamp
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 112, 112)).astype(np.float32)
    runs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"data": x})[0]
            for p in (first, r18_files["onnx"])]
    np.testing.assert_array_equal(runs[0], runs[1])
