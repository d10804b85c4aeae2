"""A ViT through eval/verify.py: a seeded demo vit_t (random, calibrated; not a face model) converted to Paddle
gives the same verification numbers on every backend, and its results.txt rows say so."""

from __future__ import annotations

import json

import pytest

from eval.results import read_results
from eval.verify import main

# the demo vit_t on small_lfw (10 pairs): one fold of one pair judged wrongly, on every backend
ACCURACY, ACCURACY_STD, XNORM = 0.9, 0.3, 24.3687
CELL = "90.000±30.000"


@pytest.fixture(scope="module")
def vit_files(tmp_path_factory):
    from converters.checkpoint import write_paddle_weights, write_torch_state_dict
    from converters.demo import demo_state_dict
    from converters.mapping import torch_to_paddle

    folder = tmp_path_factory.mktemp("vit_t")
    arrays = demo_state_dict("vit_t")
    write_torch_state_dict(folder / "vit_t.pth", arrays)
    write_paddle_weights(folder / "vit_t.pdparams", torch_to_paddle(arrays, "vit_t", 512, "demo"))
    return {"pth": folder / "vit_t.pth", "pdparams": folder / "vit_t.pdparams", "cache": folder / "cache"}


def evaluate(weights, backend: str, compare: str, small_lfw, folder, cache) -> tuple[dict, dict]:
    results, out_json = folder / "results.txt", folder / f"{backend}.json"
    assert main(["--weights", str(weights), "--data", str(small_lfw), "--backend", backend, "--compare", compare,
                 "--batch-size", "20", "--threads", "2", "--cache-dir", str(cache), "--no-progress",
                 "--results", str(results), "--json", str(out_json)]) == 0
    rows = {key[2]: (key, row) for key, row in read_results(results).rows.items()}
    return json.loads(out_json.read_text())["small_lfw"], rows


def assert_same_numbers(record: dict, rows: dict, backend: str, compare: str, weights) -> None:
    assert record["pairs"] == 10
    assert record["accuracy"] == pytest.approx(ACCURACY, abs=1e-12)
    assert record["accuracy_std"] == pytest.approx(ACCURACY_STD, abs=1e-12)
    assert record["xnorm"] == pytest.approx(XNORM, rel=1e-4)
    assert record["compare"]["backend"] == compare
    assert record["compare"]["fold_accuracies"] == record["fold_accuracies"]
    assert record["compare"]["thresholds"] == record["thresholds"]
    assert record["compare"]["xnorm"] == pytest.approx(record["xnorm"], rel=1e-5)
    assert record["compare"]["pairs_judged_differently"] == 0
    for name in (backend, compare):
        key, row = rows[name]
        assert key == ("vit_t", str(weights), name, "")
        assert row["small_lfw"] == CELL and row["XNorm"] == "small_lfw 24.37"
    assert rows[compare][1]["note"] == f"decisions differ from {backend}: small_lfw 0/10"


def test_converted_vit_t_gives_the_same_accuracy_on_paddle_and_torch(vit_files, small_lfw, tmp_path):
    record, rows = evaluate(vit_files["pdparams"], "paddle", "torch", small_lfw, tmp_path, vit_files["cache"])
    assert set(rows) == {"paddle", "torch"}
    assert_same_numbers(record, rows, "paddle", "torch", vit_files["pdparams"])


@pytest.mark.slow
def test_vit_t_exports_for_paddle_inference_and_onnx_with_the_same_accuracy(vit_files, small_lfw, tmp_path):
    """``paddle.jit.save`` traces the ViT in eval mode (masking and stochastic depth left out) and the ONNX
    export takes any batch; the original checkpoint gives the numbers the converted weights give."""
    record, rows = evaluate(vit_files["pth"], "paddle-inference", "onnx", small_lfw, tmp_path, vit_files["cache"])
    assert set(rows) == {"paddle-inference", "onnx"}
    assert_same_numbers(record, rows, "paddle-inference", "onnx", vit_files["pth"])
    exports = sorted(p.name.split("-")[1:4] for p in vit_files["cache"].iterdir())  # sha256-arch-size-framework
    assert [e[2][:6] for e in exports] == ["paddle", "torch2"] and all(e[:2] == ["vit_t", "512"] for e in exports)
