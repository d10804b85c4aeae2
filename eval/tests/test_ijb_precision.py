"""eval/ijb.py at a reduced precision: the IJB accuracy guard on hand-computed inputs, the command end to end
(onnx int8 and Paddle Inference bf16 against fp32 on the same images of a synthetic layout of real faces,
one pass over the images, both models' caches resumable), and the one-line errors."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from converters.export import PaddlePredictor
from eval.ijb import main
from eval.ijb_guard import far_threshold, flip_sum_cosines, guard_text, ijb_guard
from eval.ijb_protocol import FARS
from eval.tests.test_ijb_cli import read_layout_counts, run, table_rows


# ------------------------------------------------------------------------------------ the guard by hand
def test_flip_sum_cosines_compare_face_plus_mirror():
    ref = np.array([[[1, 0], [1, 0]], [[1, 0], [0, 1]], [[3, 4], [0, 0]]], np.float32)
    low = np.array([[[1, 1], [1, -1]], [[1, 0], [1, 0]], [[0, 0], [-3, -4]]], np.float32)
    # sums: (2, 0) vs (2, 0); (1, 1) vs (2, 0); (3, 4) vs (-3, -4)
    np.testing.assert_allclose(flip_sum_cosines(ref, low), [1.0, 1 / math.sqrt(2), -1.0], rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="same shape"):
        flip_sum_cosines(ref, low[:2])


# 4 genuine, 6 impostor pairs. fp32 ROC (score >= t): t=0.9 (TPR 1/4, FPR 0), 0.8 (2/4, 0), 0.7 (2/4, 1/6),
# 0.6 (3/4, 1/6), 0.5 (3/4, 2/6), 0.4 (3/4, 3/6), 0.3 (1, 3/6), ...
LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
FP32 = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.5, 0.4, 0.2, 0.1, 0.0])
# reduced: genuine 0.8 -> 0.76 (still accepted at the threshold 0.75, midway between 0.8 and 0.7), impostor
# 0.7 -> 0.85 (now accepted, and above every genuine but the first); nothing else crosses 0.75
LOW = np.array([0.95, 0.76, 0.62, 0.3, 0.85, 0.5, 0.4, 0.2, 0.1, 0.0])


def test_threshold_is_that_of_the_roc_point_the_tar_table_reads():
    # FAR 1e-4 and 1e-5: the nearest FPR is 0, and among the FPR-0 points the one of the largest TPR (2/4) is
    # at score 0.8, the next lower score 0.7; FAR 0.1: nearest FPR 1/6 (0.067 away, 0 is 0.1 away), largest
    # TPR there 3/4 at 0.6, the next lower score 0.5
    assert far_threshold(LABELS, FP32, 1e-4) == (0.75, 0.0, 0.5)
    assert far_threshold(LABELS, FP32, 1e-5) == (0.75, 0.0, 0.5)
    assert far_threshold(LABELS, FP32, 0.1) == (0.55, 1 / 6, 0.75)
    # the lowest score accepted: no lower one to go halfway to
    assert far_threshold(np.array([1, 0, 1]), np.array([0.9, 0.5, 0.1]), 0.9) == (0.1, 1.0, 1.0)
    # the top score is an impostor's: the only FPR-0 point accepts nothing
    assert far_threshold(np.array([0, 1, 0]), np.array([0.9, 0.5, 0.1]), 1e-4) == (math.inf, 0.0, 0.0)


def test_guard_counts_the_pairs_decided_differently_at_the_fp32_threshold():
    cos = np.array([0.999, 0.98, 0.995])
    guard = ijb_guard(LABELS, FP32, LOW, cos)
    assert (guard.images, guard.cosine_min) == (3, 0.98)
    assert guard.cosine_mean == pytest.approx((0.999 + 0.98 + 0.995) / 3, abs=1e-15)
    # fp32 TAR by hand: FPR 0 -> 2/4 for 1e-6 ... 1e-3 and 1e-2 (0.01 is nearer 0 than 1/6); FAR 0.1 -> 3/4
    assert guard.tar_fp32 == dict(zip(FARS, (0.5, 0.5, 0.5, 0.5, 0.5, 0.75)))
    # reduced ROC: 0.95 (1/4, 0), 0.85 (1/4, 1/6), 0.76 (2/4, 1/6), 0.62 (3/4, 1/6): FPR 0 -> 1/4, 1/6 -> 3/4
    assert guard.tar == dict(zip(FARS, (0.25, 0.25, 0.25, 0.25, 0.25, 0.75)))
    assert guard.tar_difference == dict(zip(FARS, (-0.25, -0.25, -0.25, -0.25, -0.25, 0.0)))
    # at 0.75: genuine 0.9 -> 0.95 and 0.8 -> 0.76 still accepted, impostor 0.7 -> 0.85 now accepted
    [j4, j5] = guard.judged
    assert (j4.far, j4.threshold, j4.fpr_fp32, j4.genuine_differ, j4.genuine, j4.impostor_differ, j4.impostor) == \
        (1e-4, 0.75, 0.0, 0, 4, 1, 6)
    assert j5.far == 1e-5 and j5.differ == 1
    record = guard.to_json()
    assert record["pairs_judged_differently"]["1e-04"] == {
        "threshold": 0.75, "fpr_fp32": 0.0, "genuine": 0, "impostor": 1, "total": 1, "genuine_pairs": 4,
        "impostor_pairs": 6}
    assert record["tar_difference"]["1e-01"] == 0.0 and record["tar"]["1e-04"] == 0.25
    text = guard_text(guard, "int8")
    assert "min 0.980000, mean 0.991333" in text
    assert re.search(r"\| 0\.0001 +\| 50\.00 +\| 25\.00 +\| -25\.00 +\|", text), text
    assert re.search(r"\| 0\.0001 +\| 0\.750000 +\| 0 +\| 0/4 +\| 1/6 +\|", text), text

    # a genuine pair falling below the threshold counts as a genuine one; the threshold itself is accepted
    low = LOW.copy()
    low[0], low[1] = 0.74, 0.75
    assert [(j.genuine_differ, j.impostor_differ) for j in ijb_guard(LABELS, FP32, low, cos).judged] == [(1, 1)] * 2
    # the same scores: nothing differs
    same = ijb_guard(LABELS, FP32, FP32, cos)
    assert all(v == 0 for v in same.tar_difference.values()) and [j.differ for j in same.judged] == [0, 0]
    with pytest.raises(ValueError, match="NaN or infinite"):
        ijb_guard(LABELS, FP32, np.where(LABELS == 1, np.nan, LOW), cos)


def test_an_inf_threshold_is_null_in_json():
    labels, ref = np.array([0, 1, 0, 1]), np.array([0.9, 0.5, 0.1, 0.4])
    guard = ijb_guard(labels, ref, ref + 0.01, np.ones(2))
    assert guard.judged[0].threshold == math.inf and guard.judged[0].differ == 0
    assert guard.to_json()["pairs_judged_differently"]["1e-04"]["threshold"] is None
    assert "none accepted" in guard_text(guard, "bf16")


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def layout(tmp_path_factory, small_lfw, small_dataset):
    """The smallest useful layout of real faces: 6 identities, 4 images each (24 images, 78 pairs)."""
    from eval.ijb_synthetic import write_synthetic_ijb

    root = tmp_path_factory.mktemp("ijbp") / "IJBC"
    write_synthetic_ijb(root, 6, images_per_identity=4, seed=3, faces=[small_lfw, small_dataset])
    return root


def common(r18_files, layout, backend: str) -> list[str]:
    return ["--weights", str(r18_files["pdparams"]), "--data", str(layout), "--backend", backend,
            "--cache-dir", str(r18_files["cache"]), "--batch-size", "4", "--threads", "1", "--workers", "0",
            "--no-progress", "--name", "r18"]


def plain_run(args: list[str], tmp_path, capsys) -> tuple[list[str], np.ndarray]:
    """A plain fp32 run: its printed TAR row and its pair scores."""
    assert main([*args, "--scores-dir", str(tmp_path / "plain")]) == 0
    (row,) = table_rows(capsys.readouterr().out).values()
    return row, np.load(tmp_path / "plain" / "r18_ijbc.npy")


def check_guard(printed: str, record: dict, precision: str, backend: str, plain_row: list[str]) -> dict:
    """What every reduced-precision run prints and writes, read back and checked for consistency."""
    assert f"accuracy guard: {backend} {precision} against {backend} on the same images" in printed
    rows = table_rows(printed)
    assert set(rows) == {f"r18-{backend}-{precision}", f"r18-{backend}"}
    assert rows[f"r18-{backend}"] == plain_row  # the fp32 reference is exactly a plain fp32 run
    guard = record["precision_guard"]
    assert (guard["precision"], guard["backend"], guard["reference"]) == (precision, f"{backend} {precision}", backend)
    assert guard["images"] == 24 and record["precision"] == precision
    assert guard["tar"] == record["tar_at_far"]
    assert rows[f"r18-{backend}-{precision}"] == [f"{100 * v:.2f}" for v in guard["tar"].values()]
    assert [f"{100 * v:.2f}" for v in guard["tar_fp32"].values()] == plain_row
    assert guard["tar_difference"] == {k: guard["tar"][k] - guard["tar_fp32"][k] for k in guard["tar"]}
    genuine = record["genuine_pairs"]
    for far, judged in guard["pairs_judged_differently"].items():
        assert judged["total"] == judged["genuine"] + judged["impostor"]
        assert (judged["genuine_pairs"], judged["impostor_pairs"]) == (genuine, record["pairs"] - genuine)
        far_text = f"{float(far):g}"
        assert re.search(rf"\| {re.escape(far_text)} +\| [\d.]+ +\| \S+ +\| {judged['genuine']}/{genuine} +\| "
                         rf"{judged['impostor']}/{record['pairs'] - genuine} +\|", printed), printed
    assert list(guard["pairs_judged_differently"]) == ["1e-04", "1e-05"]
    print(f"{backend} {precision}: cosine min {guard['cosine_min']:.6f} mean {guard['cosine_mean']:.6f}, "
          f"judged differently {[j['total'] for j in guard['pairs_judged_differently'].values()]}")
    return guard


def test_onnx_int8_guard_in_one_pass_with_both_caches_resumable(r18_files, layout, small_lfw, tmp_path, capsys,
                                                                 monkeypatch):
    import eval.ijb_extract as extract
    from eval import backends

    onnx = common(r18_files, layout, "onnx")
    plain_row, plain_scores = plain_run(onnx, tmp_path, capsys)
    assert read_layout_counts(layout)["images"] == 24

    # a plain fp32 run, cached and stopped after 16 images: its cache is also the reference's cache below
    monkeypatch.setattr(extract, "COMMIT_SECONDS", 0.0)
    forward = backends.OnnxEmbedder.__call__
    calls: list[tuple[str, int]] = []

    def counting(self, batch):
        if len(batch) == 2:  # the check run of a model being built, not a batch of faces
            return forward(self, batch)
        if len(calls) == stop_after:
            raise KeyboardInterrupt
        calls.append((self.name, len(batch)))
        return forward(self, batch)

    monkeypatch.setattr(backends.OnnxEmbedder, "__call__", counting)
    cache = tmp_path / "cache"
    stop_after = 4  # forward passes of 4 faces (8 rows): 2 chunks of 8 faces
    with pytest.raises(KeyboardInterrupt):
        main([*onnx, "--cache", str(cache / "onnx-fp32")])
    assert json.loads((cache / "onnx-fp32" / "progress.json").read_text())["done"] == 16

    # int8 against fp32: each batch embedded by both models (one decode), the int8 cache written from 0, the
    # fp32 cache completed from row 16 (the 3-face batches' chunk 12:18 straddles it)
    calls.clear()
    stop_after = -1
    out = tmp_path / "int8.json"
    int8 = [*onnx, "--precision", "int8", "--calibration", str(small_lfw)]
    assert main([*int8, "--batch-size", "3", "--cache", str(cache), "--json", str(out),
                 "--scores-dir", str(tmp_path / "scores")]) == 0
    printed = capsys.readouterr().out
    assert [name for name, _ in calls] == ["onnx int8", "onnx"] * 8 and {n for _, n in calls} == {6}
    record = json.loads(out.read_text())
    guard = check_guard(printed, record, "int8", "onnx", plain_row)
    # onnxruntime's static int8 of the seeded (random) r18, calibrated on small_lfw: min 0.9907, mean 0.9946
    assert 0.98 < guard["cosine_min"] <= guard["cosine_mean"] < 0.9995
    np.testing.assert_array_equal(np.load(tmp_path / "scores" / "r18-onnx_ijbc.npy"), plain_scores)
    int8_scores = np.load(tmp_path / "scores" / "r18-onnx-int8_ijbc.npy")
    print("int8 largest score difference", np.abs(int8_scores - plain_scores).max())
    assert 0 < np.abs(int8_scores - plain_scores).max() < 0.02
    for folder in ("onnx-int8", "onnx-fp32"):
        assert (cache / folder / "features.npy").is_file() and not (cache / folder / "features.partial.npy").exists()

    # run again: everything read from both caches, no forward pass, the same numbers
    calls.clear()
    assert main([*int8, "--cache", str(cache), "--json", str(tmp_path / "again.json")]) == 0
    assert calls == []
    again = json.loads((tmp_path / "again.json").read_text())["precision_guard"]
    assert {k: v for k, v in again.items() if not k.startswith("cosine")} == \
        {k: v for k, v in guard.items() if not k.startswith("cosine")}
    # rows 0:16 of the fp32 cache come from 4-face batches, the cosines above from 3-face ones
    assert again["cosine_min"] == pytest.approx(guard["cosine_min"], abs=1e-6)
    assert again["cosine_mean"] == pytest.approx(guard["cosine_mean"], abs=1e-6)
    capsys.readouterr()
    # each model's cache is an ordinary features file
    assert main(["--features", str(cache / "onnx-fp32" / "features.npy"), "--data", str(layout), "--name", "f",
                 "--no-progress"]) == 0
    assert table_rows(capsys.readouterr().out)["f"] == plain_row


@pytest.mark.skipif(not PaddlePredictor.bf16_supported(), reason="Paddle Inference bf16 needs a CPU with AVX-512")
def test_paddle_inference_bf16_guard_against_fp32(r18_files, layout, tmp_path, capsys):
    pi = common(r18_files, layout, "paddle-inference")
    plain_row, plain_scores = plain_run(pi, tmp_path, capsys)
    out = tmp_path / "bf16.json"
    assert main([*pi, "--precision", "bf16", "--json", str(out), "--scores-dir", str(tmp_path / "scores")]) == 0
    guard = check_guard(capsys.readouterr().out, json.loads(out.read_text()), "bf16", "paddle-inference", plain_row)
    # oneDNN bfloat16 on the graph exported for it: min 0.99988, mean 0.99990 measured
    assert 0.9995 < guard["cosine_min"] <= guard["cosine_mean"] < 0.999999
    np.testing.assert_array_equal(np.load(tmp_path / "scores" / "r18-paddle-inference_ijbc.npy"), plain_scores)
    bf16_scores = np.load(tmp_path / "scores" / "r18-paddle-inference-bf16_ijbc.npy")
    print("bf16 largest score difference", np.abs(bf16_scores - plain_scores).max())
    assert 0 < np.abs(bf16_scores - plain_scores).max() < 0.005


# ---------------------------------------------------------------------------------------- one-line errors
@pytest.mark.parametrize("args, message", [
    (["--backend", "onnx", "--precision", "int8"], "error: --precision int8 needs --calibration"),
    (["--backend", "paddle", "--precision", "bf16"], "error: --precision bf16 is not available with --backend paddle"),
    (["--precision", "bf16", "--calibration", "x.bin"], "error: --calibration: calibrates --precision int8 only"),
    (["--compare", "paddle-inference"], "error: --compare paddle-inference is the backend being evaluated"),
])
def test_unavailable_precisions_are_one_line_errors(args, message, r18_files, layout, tmp_path):
    out = tmp_path / "out.json"
    proc = run("--weights", r18_files["pdparams"], "--data", layout, "--cache-dir", r18_files["cache"],
               "--workers", "0", "--no-progress", "--json", out, *args)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith(message), proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("option", [["--precision", "int8"], ["--compare", "onnx"], ["--calibration", "x.bin"]])
def test_features_with_a_precision_is_a_one_line_error(option, layout, tmp_path):
    np.save(tmp_path / "f.npy", np.ones((24, 2, 8), np.float32))
    proc = run("--features", tmp_path / "f.npy", "--data", layout, *option)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {option[0]} needs a model (--weights)"), proc.stderr
