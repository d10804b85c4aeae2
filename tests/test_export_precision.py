"""export.py --precision bf16|int8: the export written and compared with fp32 on the calibration faces, its
precision and calibration recorded in its metadata, the guard that refuses an export below --min-cosine with
nothing written, and one-line errors for options that do not go together or faces that are missing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from converters import export
from converters.errors import exit_code
from converters.export import PaddlePredictor

ARCH = "mbf"  # the fastest backbone: these tests are about the command
AVX512 = PaddlePredictor.bf16_supported()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from converters.checkpoint import write_torch_state_dict
    from converters.demo import demo_state_dict

    path = tmp_path_factory.mktemp("precision-weights") / f"{ARCH}.pth"
    write_torch_state_dict(path, demo_state_dict(ARCH, seed=2, batches=1))
    return path


def one_error_line(capsys, code: int, expected_code: int = 2) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == expected_code and len(err) == 1 and err[0].startswith("error: "), (code, err)
    return err[0]


def guard_row(stdout: str) -> list[str]:
    """The guard table's row: [precision, faces, images, min cosine, mean cosine, --min-cosine, verdict]."""
    rows = [line for line in stdout.splitlines() if line.startswith(("bf16 ", "int8 "))]
    assert len(rows) == 1, stdout
    cells = [c.strip() for c in rows[0].split("  ") if c.strip()]
    return cells[:1] + [" ".join(cells[1:-5])] + cells[-5:]


def export_passing(capsys, weights, calibration, fmt: str, precision: str, out, min_cosine: float | None,
                   *extra) -> tuple[str, str, float, float]:
    """Export at ``precision`` and check the guard passed on the 20 faces: ``(stdout, faces, min, mean)``,
    the min cosine at least ``min_cosine`` (default the export's 0.995) and below 1."""
    options = [] if min_cosine is None else ["--min-cosine", str(min_cosine)]
    code = exit_code(export.main, ["--weights", weights, "--format", fmt, "--precision", precision,
                                   "--calibration", calibration, *options, *extra, "--out", out, "--batch", "2"])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    row, faces, images, low, mean, threshold, verdict = guard_row(stdout)
    bound = 0.995 if min_cosine is None else min_cosine
    assert (row, images, threshold, verdict) == (precision, "20", f">= {bound:g}", "PASS")
    assert bound <= float(low) <= float(mean) < 1.0
    return stdout, faces, float(low), float(mean)


def test_int8_onnx_is_quantized_guarded_and_records_its_calibration(weights, small_lfw, tmp_path, capsys):
    import onnx

    out = tmp_path / "m-int8.onnx"
    # int8 moves every embedding a little: measured 0.90 / 0.94
    stdout, faces, low, _ = export_passing(capsys, weights, small_lfw, "onnx", "int8", out, 0.8)
    assert faces.startswith("small_lfw.bin (20 faces, sha256 ")

    model = onnx.load(str(out))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["arcface_bridge.precision"] == "int8" and meta["arcface_bridge.arch"] == ARCH
    assert meta["arcface_bridge.calibration"] == faces
    assert json.loads(meta["arcface_bridge.guard"])["cosine_min"] == pytest.approx(low, abs=1e-6)
    assert f"int8; {out.stat().st_size / 2**20:.1f} MiB" in stdout

    # the written file is what the guard measured: its embeddings of the faces against the fp32 model
    from converters.export import OnnxRunner, paddle_forward
    from converters.inputs import faces_from_bin
    from converters.models import paddle_model
    from converters.parity import cosines
    from converters.weights import read_weights

    source = read_weights(weights)
    faces_x = faces_from_bin(small_lfw, 20)
    reference = paddle_forward(paddle_model(ARCH, source.paddle_state(), 512))(faces_x)
    measured = cosines(reference, OnnxRunner(out, 2)(faces_x))
    assert measured.min() == pytest.approx(low, abs=2e-6)


def test_an_export_below_min_cosine_is_refused_and_nothing_is_written(weights, small_lfw, tmp_path, capsys):
    out = tmp_path / "m-int8.onnx"
    code = exit_code(export.main, ["--weights", weights, "--format", "onnx", "--precision", "int8",
                                   "--calibration", small_lfw, "--min-cosine", "0.99999", "--out", out,
                                   "--batch", "2"])
    captured = capsys.readouterr()
    assert code == 1 and guard_row(captured.out)[-1] == "FAIL"
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {out}: not written, the int8 export's min embedding cosine "
                                                "to fp32 on 20 calibration faces is 0.")
    assert err[0].endswith("below --min-cosine 0.99999")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_calibration_mistakes_are_one_line_errors(weights, small_lfw, tmp_path, capsys):
    base = ["--weights", weights, "--out", tmp_path / "o.onnx"]
    cases = [
        (["--format", "onnx", "--precision", "int8"], "error: --calibration: --precision int8 needs aligned faces"),
        (["--format", "onnx", "--precision", "int8", "--calibration", tmp_path / "none.bin"],
         f"error: {tmp_path / 'none.bin'}: no such file"),
        (["--format", "onnx", "--calibration", small_lfw], "error: --calibration: applies only to --precision"),
        (["--format", "onnx", "--min-cosine", "0.9"], "error: --min-cosine: applies only to --precision"),
        (["--format", "onnx", "--precision", "bf16", "--calibration", small_lfw],
         "error: --precision: bf16 is Paddle Inference's oneDNN bfloat16"),
        (["--format", "onnx", "--precision", "int8", "--calibration", small_lfw, "--calibration-images", "4"],
         "error: --calibration-images: must be an integer >= 16, got 4"),
    ]
    for options, start in cases:
        line = one_error_line(capsys, exit_code(export.main, [*base, *options]))
        assert line.startswith(start), (options, line)
    few = tmp_path / "few"
    (few / "person").mkdir(parents=True)
    import cv2

    for i in range(3):
        cv2.imwrite(str(few / "person" / f"{i}.png"), np.full((112, 112, 3), 40 * i, np.uint8))
    line = one_error_line(capsys, exit_code(export.main, [*base, "--format", "onnx", "--precision", "int8",
                                                          "--calibration", few]))
    assert line == f"error: {few}: 3 calibration images, at least 16 are needed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["few"]


def test_int8_paddle_inference_runs_onednn_int8_and_is_guarded(weights, small_lfw, tmp_path, capsys):
    out = tmp_path / "deploy"
    # measured 0.929 / 0.951 on this seeded MobileFaceNet
    _, faces, low, _ = export_passing(capsys, weights, small_lfw, "paddle-inference", "int8", out, 0.9)
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.pdiparams", "model.pdmodel"]
    meta = json.loads((out / "export.json").read_text())
    assert (meta["precision"], meta["calibration"]) == ("int8", faces)
    assert meta["guard"]["cosine_min"] == pytest.approx(low, abs=1e-6)

    from converters.inputs import faces_from_bin

    faces_x = faces_from_bin(small_lfw, 20)
    int8 = PaddlePredictor(out / "model", 2, precision="int8")(faces_x)
    assert np.isfinite(int8).all() and int8.shape == (20, 512)
    with pytest.raises(RuntimeError, match="no missing.pdmodel"):
        PaddlePredictor(tmp_path / "missing", 2, precision="int8")


def test_int8_paddle_inference_without_int8_support_is_refused(weights, small_lfw, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(PaddlePredictor, "int8_supported", staticmethod(lambda: False))
    line = one_error_line(capsys, exit_code(export.main, ["--weights", weights, "--format", "paddle-inference",
                                                          "--precision", "int8", "--calibration", small_lfw,
                                                          "--out", tmp_path / "deploy"]))
    assert line.startswith("error: --precision: int8 for Paddle Inference needs a CPU with oneDNN int8 support")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_fp32_paddle_inference_records_what_it_is(weights, tmp_path, capsys):
    out = tmp_path / "deploy"
    assert exit_code(export.main, ["--weights", weights, "--format", "paddle-inference", "--out", out,
                                   "--batch", "2"]) == 0
    capsys.readouterr()
    assert json.loads((out / "export.json").read_text()) == {"arch": ARCH, "num_features": 512, "precision": "fp32"}


def test_bf16_without_avx512_is_refused(weights, small_lfw, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(PaddlePredictor, "bf16_supported", staticmethod(lambda: False))  # as on an AVX2-only CPU
    out = tmp_path / "deploy"
    line = one_error_line(capsys, exit_code(export.main, ["--weights", weights, "--format", "paddle-inference",
                                                          "--precision", "bf16", "--calibration", small_lfw,
                                                          "--out", out]))
    assert line.startswith("error: --precision: bf16 needs a CPU with AVX-512") and not out.exists()


@pytest.mark.skipif(not AVX512, reason="bf16 needs a CPU with AVX-512")
def test_bf16_paddle_inference_is_finite_guarded_and_recorded(weights, small_lfw, tmp_path, capsys):
    from converters.export import graph_has_prelu

    out = tmp_path / "deploy"
    # measured 0.998 on this MobileFaceNet, against the default --min-cosine 0.995
    export_passing(capsys, weights, small_lfw, "paddle-inference", "bf16", out, None, "--input", small_lfw)
    meta = json.loads((out / "export.json").read_text())
    assert meta["precision"] == "bf16" and meta["guard"]["images"] == 20
    assert not graph_has_prelu(out / "model")
    embeddings = PaddlePredictor(out / "model", 2, precision="bf16")(np.zeros((2, 3, 112, 112), np.float32))
    assert np.isfinite(embeddings).all()
