"""onnx2paddle.py end to end: an r50 made by an independent implementation of InsightFace's layout, exported
with arcface_torch's recipe (BatchNorm folded, input ``data``, opset 11, batch ``'None'``), imports with every
stage within its gate, and the Paddle model's embeddings of the real faces match onnxruntime's on the
original graph; the same after renaming the graph as model-pack files are named (input ``input.1``, numeric
initializer and node names). Then the CLI's outputs, metadata, exit codes and "no file left on failure"."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from converters import onnx2paddle
from converters.errors import exit_code
from converters.inputs import faces_from_bin
from parity_tests.archs import LARGE_ENABLED
from parity_tests.test_independent_r50 import forward, independent_checkpoint


class FunctionalR50(torch.nn.Module):
    """The independent functional r50 as a module (its tensors as buffers), for the ONNX exporter."""

    def __init__(self, state):
        super().__init__()
        self.keys = list(state)
        for i, key in enumerate(self.keys):
            self.register_buffer(f"t{i}", state[key].clone())

    def forward(self, x):
        return forward({k: getattr(self, f"t{i}") for i, k in enumerate(self.keys)}, x)


def arcface_torch_export(model: torch.nn.Module, path: Path) -> Path:
    """arcface_torch's torch2onnx.py recipe: traced at batch 1, input ``data``, opset 11, then dim 0 renamed."""
    model.eval()
    torch.onnx.export(model, torch.zeros(1, 3, 112, 112), str(path), input_names=["data"],
                      keep_initializers_as_inputs=False, opset_version=11, dynamo=False)
    graph = onnx.load(str(path))
    graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "None"
    onnx.save(graph, str(path))
    return path


def model_pack_names(src: Path, dst: Path) -> Path:
    """The graph renamed as model-pack files are: input ``input.1``, every initializer and node a number."""
    model = onnx.load(str(src))
    g = model.graph
    rename = {g.input[0].name: "input.1"}
    for i, init in enumerate(g.initializer):
        rename[init.name] = str(1000 + i)
    for i, node in enumerate(g.node):
        node.name = str(i)
        for out in node.output:
            rename.setdefault(out, str(5000 + len(rename)))
    for init in g.initializer:
        init.name = rename[init.name]
    for node in g.node:
        node.input[:] = [rename.get(t, t) for t in node.input]
        node.output[:] = [rename.get(t, t) for t in node.output]
    for value in [*g.input, *g.output, *g.value_info]:
        value.name = rename.get(value.name, value.name)
    onnx.save(model, str(dst))
    return dst


def onnxruntime_embeddings(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def paddle_embeddings(weights: Path, x: np.ndarray) -> np.ndarray:
    import paddle

    from converters.checkpoint import read_paddle_weights
    from converters.models import paddle_model

    model = paddle_model("r50", read_paddle_weights(weights), 512)
    with paddle.no_grad():
        return model(paddle.to_tensor(x)).numpy()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def r50_onnx(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("r50onnx")
    return arcface_torch_export(FunctionalR50(independent_checkpoint()), folder / "r50.onnx")


@pytest.mark.slow
@pytest.mark.parametrize("naming", ["arcface_torch", pytest.param("model_pack", marks=pytest.mark.skipif(
    not LARGE_ENABLED, reason="the renamed r50 runs under `make parity-large`; tests/test_onnx_import.py imports "
    "renamed graphs of the smaller sizes in `make test`"))])
def test_independent_r50_onnx_imports_within_gates(tmp_path, r50_onnx, small_lfw, naming):
    src = r50_onnx if naming == "arcface_torch" else model_pack_names(r50_onnx, tmp_path / "w600k_r50.onnx")
    graph = onnx.load(str(src))
    assert graph.graph.input[0].name == ("data" if naming == "arcface_torch" else "input.1")
    assert sum(n.op_type == "Conv" for n in graph.graph.node) == 53
    assert sum(n.op_type == "BatchNormalization" for n in graph.graph.node) == 26  # the rest were folded

    out, report = tmp_path / "r50.pdparams", tmp_path / "report.json"
    assert exit_code(onnx2paddle.main, ["--src", src, "--out", out, "--input", small_lfw, "--batch", "4",
                                        "--report", report, "--table", "none"]) == 0
    data = json.loads(report.read_text())
    assert data["arch"] == "r50" and data["source"]["input_name"] == graph.graph.input[0].name
    assert len(data["folded_batchnorm"]) == 1 + 2 * 24 + 4 and "bn1" in data["folded_batchnorm"]
    assert data["fine_tuning"] and data["input_normalisation"] is None
    assert [p["passed"] for p in data["parity"]] == [True, True]
    assert all(p["worst_rel"] <= 5e-5 for p in data["parity"])

    faces = faces_from_bin(small_lfw, 12)
    cos = cosines(paddle_embeddings(out, faces), onnxruntime_embeddings(src, faces))
    assert cos.shape == (12,) and cos.min() >= 0.999999


def test_outputs_metadata_and_torch_state_dict(tmp_path, small_lfw):
    from converters.checkpoint import read_paddle_weights, read_torch_checkpoint
    from converters.demo import demo_state_dict
    from converters.models import torch_model

    state = demo_state_dict("r18", seed=3)
    src = arcface_torch_export(torch_model("r18", state), tmp_path / "r18.onnx")
    before = src.read_bytes()
    out, pth = tmp_path / "r18.pdparams", tmp_path / "r18.pth"
    assert exit_code(onnx2paddle.main, ["--src", src, "--out", out, "--torch-out", pth, "--batch", "2",
                                        "--table", "none"]) == 0
    assert src.read_bytes() == before
    meta = read_paddle_weights(out).meta
    assert meta["arch"] == "r18" and meta["source_format"] == "onnx" and meta["input_normalisation"] is None
    assert len(meta["folded_batchnorm"]) == 21
    arrays = read_torch_checkpoint(pth).arrays
    assert list(arrays) == list(state)
    folded = set(meta["folded_batchnorm"])
    conv_of = {"bn1": "conv1", "bn2": "conv1", "bn3": "conv2", "1": "0"}  # the conv each folded BN followed
    for key, value in state.items():
        module, field = key.rsplit(".", 1)
        parent, leaf = module.rsplit(".", 1) if "." in module else ("", module)
        if module in folded:  # exactly weight 1, mean 0, var 1 - eps; the bias carries the BN's shift
            expected = {"weight": 1.0, "running_mean": 0.0, "running_var": np.float32(1 - 1e-5)}.get(field)
            if expected is not None:
                assert np.all(arrays[key] == expected), key
            if field == "bias":
                scale = state[f"{module}.weight"] / np.sqrt(state[f"{module}.running_var"] + 1e-5)
                np.testing.assert_allclose(arrays[key], value - state[f"{module}.running_mean"] * scale,
                                           rtol=1e-5, atol=1e-6, err_msg=key)
                conv = ".".join(p for p in (parent, conv_of[leaf]) if p) + ".weight"
                np.testing.assert_allclose(arrays[conv], state[conv] * scale[:, None, None, None],
                                           rtol=1e-5, atol=1e-7, err_msg=conv)
        elif field != "num_batches_tracked" and not (leaf.startswith("conv") or leaf == "0"):
            np.testing.assert_array_equal(arrays[key], value, err_msg=key)


def test_failed_gate_leaves_no_file(tmp_path, monkeypatch, capsys):
    from converters import onnx_check
    from converters.demo import demo_state_dict
    from converters.models import torch_model

    src = arcface_torch_export(torch_model("mbf", demo_state_dict("mbf", seed=1)), tmp_path / "mbf.onnx")
    monkeypatch.setattr(onnx_check, "EVAL_LAYER_REL", 0.0)
    out, pth, report = tmp_path / "mbf.pdparams", tmp_path / "mbf.pth", tmp_path / "r.json"
    assert exit_code(onnx2paddle.main, ["--src", src, "--out", out, "--torch-out", pth, "--batch", "2",
                                        "--report", report, "--table", "none"]) == 1
    assert not out.exists() and not pth.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mbf.onnx", "r.json"]
    assert json.loads(report.read_text())["parity"][0]["passed"] is False
    assert capsys.readouterr().err.strip().endswith("not written, parity gate failed against onnxruntime")


@pytest.mark.parametrize("case", ["not_onnx", "out_is_src", "missing"])
def test_user_errors_are_one_line(tmp_path, capsys, case):
    src = tmp_path / "model.onnx"
    src.write_bytes(b"\x00not a protobuf" * 10)
    out = tmp_path / "out.pdparams"
    args = {"not_onnx": ["--src", src, "--out", out],
            "out_is_src": ["--src", src, "--out", src],
            "missing": ["--src", tmp_path / "nope.onnx", "--out", out]}[case]
    assert exit_code(onnx2paddle.main, args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert not out.exists()
