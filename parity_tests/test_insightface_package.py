"""The judge of the exports: the PyPI ``insightface`` package loads the ONNX files as it loads its own
recognition models (``insightface.model_zoo.get_model`` -> ``ArcFaceONNX``, normalisation detected as outside
the graph) and its ``get_feat`` on BGR face crops gives the Paddle dygraph model's embeddings; the Paddle
Inference export gives them through the ``paddle.inference`` snippet of docs/deploy.md."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from converters import export
from converters.errors import exit_code

try:
    import insightface  # noqa: F401
except ImportError:  # installed by `make install`; on CI a missing judge is a failure, not a skip
    if os.environ.get("CI"):
        raise
    pytest.skip("insightface is not installed (pip install --no-deps insightface==2.1)", allow_module_level=True)

DEPLOY_DOC = Path(__file__).resolve().parents[1] / "docs" / "deploy.md"
REL, COSINE = 5e-5, 0.999999


def within_gates(reference: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    from converters.parity import compare_arrays

    assert out.shape == reference.shape
    _, rel, cosine = compare_arrays(reference, out)
    assert rel <= REL and cosine >= COSINE, (rel, cosine)
    return rel, cosine


def demo(arch: str, folder: Path, faces_rgb: np.ndarray) -> tuple[Path, np.ndarray]:
    """A seeded demo ``arch`` written as InsightFace's ``.pth``, and the Paddle dygraph model's embeddings of
    the faces (normalised by this project's reader, not by insightface)."""
    import paddle

    from converters.checkpoint import write_torch_state_dict
    from converters.demo import demo_state_dict
    from converters.images import normalize
    from converters.mapping import torch_to_paddle
    from converters.models import paddle_model

    arrays = demo_state_dict(arch, batches=1)
    path = folder / f"{arch}.pth"
    write_torch_state_dict(path, arrays)
    model = paddle_model(arch, torch_to_paddle(arrays, arch, 512, "demo"), 512)
    with paddle.no_grad():
        embeddings = model(paddle.to_tensor(normalize(faces_rgb))).numpy()
    return path, embeddings


@pytest.fixture(scope="module")
def faces(small_lfw) -> np.ndarray:
    """The pack's 20 aligned faces as ``[20, 112, 112, 3]`` uint8 RGB."""
    from converters.binfile import read_bin

    pack = read_bin(small_lfw)
    return np.stack([pack.decode(i) for i in range(len(pack))])


def bgr(faces_rgb: np.ndarray) -> list[np.ndarray]:
    """insightface takes OpenCV's BGR crops (``get_feat`` swaps them back to RGB)."""
    return [np.ascontiguousarray(face[:, :, ::-1]) for face in faces_rgb]


@pytest.fixture(scope="module")
def r18(tmp_path_factory, faces):
    return demo("r18", tmp_path_factory.mktemp("insightface-r18"), faces[:6])


@pytest.fixture(scope="module")
def vit_t(tmp_path_factory, faces):
    return demo("vit_t", tmp_path_factory.mktemp("insightface-vit_t"), faces[:4])


def load_with_insightface(path: Path):
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    model = get_model(str(path), providers=["CPUExecutionProvider"])
    assert isinstance(model, ArcFaceONNX)
    # normalisation outside the graph, as insightface reads it: (pixel - 127.5) / 127.5
    assert (model.input_mean, model.input_std) == (127.5, 127.5)
    assert model.input_size == (112, 112) and len(model.output_names) == 1
    return model


@pytest.mark.slow
@pytest.mark.parametrize("via", ["paddle", "torch"])
def test_r18_onnx_gives_the_dygraph_embeddings_through_insightface(via, r18, faces, tmp_path, capsys):
    weights, reference = r18
    out = tmp_path / f"r18-{via}.onnx"
    code = exit_code(export.main, ["--weights", weights, "--format", "onnx", "--via", via, "--out", out,
                                   "--batch", "2"])
    assert code == 0, capsys.readouterr()
    import onnx

    assert [o.version for o in onnx.load(str(out)).opset_import] == [11]  # the default opset, either route
    model = load_with_insightface(out)
    assert model.input_name == "data" and model.output_shape == ["None", 512]
    within_gates(reference, model.get_feat(bgr(faces[:6])))


def deploy_snippet() -> str:
    """The ``paddle.inference`` snippet of docs/deploy.md (the python block after its marker line)."""
    text = DEPLOY_DOC.read_text()
    match = re.search(r"<!-- snippet: paddle-inference -->\s*```python\n(.*?)```", text, re.S)
    assert match, "docs/deploy.md lost its paddle.inference snippet"
    return match.group(1)


@pytest.mark.slow
def test_r18_paddle_inference_gives_the_dygraph_embeddings_through_the_documented_snippet(r18, faces, small_lfw,
                                                                                        capsys):
    weights, reference = r18
    code = exit_code(export.main, ["--weights", weights, "--format", "paddle-inference", "--verify",
                                   "--input", small_lfw, "--batch", "2"])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    # seeded batch 1 and 2, two faces; against the Paddle dygraph model and (--verify) the PyTorch reference
    assert stdout.count("PASS") == 6 and "FAIL" not in stdout
    folder = weights.with_name("r18-paddle-inference")  # the default: beside the weights
    assert sorted(p.name for p in folder.iterdir()) == ["export.json", "model.json", "model.pdiparams"]
    assert json.loads((folder / "export.json").read_text()) == {"arch": "r18", "num_features": 512, "precision": "fp32"}
    code = deploy_snippet()
    assert 'MODEL_DIR = "r50-paddle-inference"' in code
    namespace: dict = {}
    exec(compile(code.replace('"r50-paddle-inference"', repr(str(folder))), str(DEPLOY_DOC), "exec"), namespace)
    within_gates(reference, namespace["embed"](namespace["predictor"], faces[:6]))


@pytest.mark.slow
@pytest.mark.parametrize("via", ["paddle", "torch"])
def test_vit_t_onnx_runs_any_batch_through_insightface(via, vit_t, faces, tmp_path, capsys):
    """The ViT's attention reshapes must follow the batch: batch 1 and batch 3 through insightface."""
    weights, reference = vit_t
    out = tmp_path / "vit_t.onnx"
    code = exit_code(export.main, ["--weights", weights, "--format", "onnx", "--via", via, "--out", out,
                                   "--batch", "3"])
    assert code == 0, capsys.readouterr()
    model = load_with_insightface(out)
    within_gates(reference[:1], model.get_feat(bgr(faces[:1])))
    within_gates(reference[1:4], model.get_feat(bgr(faces[1:4])))
