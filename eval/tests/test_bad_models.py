"""eval/verify.py with models and arrays that load but cannot be used: an ONNX graph that fails at
inference, an ``.npz`` as ``--embeddings``, out-of-range arguments. Each is one stderr line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converters.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def onnx_model(path: Path, kind: str) -> Path:
    """A small graph with input ``data`` [N, 3, 112, 112] that fails when run: ``reshape`` flattens to
    3x64x64 (a model made for 64x64 faces), ``gather`` indexes past the image."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 8])
    if kind == "reshape":
        inits = [numpy_helper.from_array(np.array([-1, 3 * 64 * 64], np.int64), "shape"),
                 numpy_helper.from_array(np.zeros((3 * 64 * 64, 8), np.float32), "w")]
        nodes = [helper.make_node("Reshape", ["data", "shape"], ["flat"]),
                 helper.make_node("MatMul", ["flat", "w"], ["out"])]
    else:
        inits = [numpy_helper.from_array(np.array([500], np.int64), "idx"),
                 numpy_helper.from_array(np.array([-1, 8], np.int64), "shape")]
        nodes = [helper.make_node("Gather", ["data", "idx"], ["g"], axis=2),
                 helper.make_node("ReduceMean", ["g"], ["m"], axes=[1, 2, 3], keepdims=0),
                 helper.make_node("Expand", ["m", "shape"], ["out"])]
    model = helper.make_model(helper.make_graph(nodes, kind, [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "eval" / "verify.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def assert_one_line(proc: subprocess.CompletedProcess, path, *words: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("kind,words", [("reshape", "Reshape"), ("gather", "Gather")])
def test_onnx_model_that_fails_at_inference_is_one_line(kind, words, tmp_path, small_lfw):
    pytest.importorskip("onnxruntime")
    model = onnx_model(tmp_path / f"{kind}.onnx", kind)
    proc = run("--weights", model, "--data", small_lfw, "--no-progress", "--threads", 1,
               "--json", tmp_path / "out.json")
    assert_one_line(proc, model, "onnxruntime failed running the model", words)
    assert not (tmp_path / "out.json").exists()


def test_onnx_embedder_checks_the_model_when_built(tmp_path):
    pytest.importorskip("onnxruntime")
    from eval.backends import OnnxEmbedder

    model = onnx_model(tmp_path / "r.onnx", "reshape")
    with pytest.raises(UserError, match=r"r\.onnx: onnxruntime failed running the model on a batch of \[2, 3"):
        OnnxEmbedder(model, threads=1)


def test_npz_as_embeddings_is_one_line(tmp_path):
    emb, issame = tmp_path / "e.npz", tmp_path / "i.npy"
    np.savez(emb, e=np.zeros((4, 8), np.float32))
    np.save(issame, np.array([True, False]))
    assert_one_line(run("--embeddings", emb, "--issame", issame), emb, ".npz")


def test_out_of_range_batch_size_and_threads_are_one_line(tmp_path):
    proc = run("--embeddings", "e.npy", "--issame", "i.npy", "--batch-size", 0)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --batch-size: must be a positive integer, got 0"]
    proc = run("--embeddings", "e.npy", "--issame", "i.npy", "--threads", -1)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --threads: must be a positive integer, got -1"]
