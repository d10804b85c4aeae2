"""Exported models: the Paddle Inference export cached by the weights' hash, InsightFace's ONNX layout."""

from __future__ import annotations

from eval.export import export_paddle_inference
from eval.sources import load_weights


def test_paddle_inference_export_is_cached_by_weights_hash(r18_files):
    source = load_weights(r18_files["pdparams"])
    first = export_paddle_inference(source, r18_files["cache"])
    stamp = first.with_suffix(".pdiparams").stat().st_mtime_ns
    again = export_paddle_inference(load_weights(r18_files["pdparams"]), r18_files["cache"])
    assert again == first and again.with_suffix(".pdiparams").stat().st_mtime_ns == stamp
    assert source.sha256[:32] in first.parent.name


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
