"""ONNX round trips on every registered architecture with distinct weights up to 200 M parameters (every
iresnet and MobileFaceNet size, vit_t, vit_s, vit_b; r2060, vit_l and vit_h are too large for one ONNX file
or for `make test`):

- ``.pth`` -> ONNX (arcface_torch's recipe, BatchNorm folded) -> ``onnx2paddle.py`` -> ``.pdparams`` ->
  ``paddle2torch.py`` -> ``.pth``: the PyTorch reference holding the result gives the original's embeddings
  within the gates;
- ``.pdparams`` -> ONNX (paddle2onnx, BatchNorm kept) -> ``onnx2paddle.py``: the Paddle model holding the
  result gives the original Paddle model's embeddings within the gates, and every weight comes back
  bit for bit (nothing was folded; a ViT's ``mask_token``, used only by training-time masking, is in no
  inference graph and comes back as zeros).

`make test` runs the architectures up to 25 M weights (r18, mbf, mbf_large, vit_t); the others (r34, r50,
r100, r200, vit_s, vit_b) take minutes together and run with `make parity-large` (ARCFACE_PARITY_LARGE=1).
The converters run with ``--no-verify`` here (their stage-by-stage check is tested in
test_onnx2paddle_cli.py); the embeddings are compared on real faces."""

from __future__ import annotations

import numpy as np
import pytest

from architectures import parameter_count
from converters import onnx2paddle, paddle2torch
from converters.errors import exit_code
from converters.inputs import faces_from_bin
from parity_tests.archs import ARCHS, LARGE_ENABLED

EMBEDDING_REL, EMBEDDING_COSINE = 5e-5, 0.999999
QUICK_PARAMETERS = 25_000_000
ROUND_TRIP_ARCHS = [
    a if parameter_count(a) <= QUICK_PARAMETERS else pytest.param(a, marks=pytest.mark.skipif(
        not LARGE_ENABLED, reason="minutes per architecture: `make parity-large` (ARCFACE_PARITY_LARGE=1) runs it"))
    for a in ARCHS]


def compare(ref: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    ref, out = ref.astype(np.float64), out.astype(np.float64)
    rel = float(np.abs(ref - out).max() / np.abs(ref).max())
    cos = np.sum(ref * out, 1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(out, axis=1)
    return rel, float(cos.min())


@pytest.fixture(scope="module")
def faces(small_lfw) -> np.ndarray:
    return faces_from_bin(small_lfw, 2)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ROUND_TRIP_ARCHS)
def test_torch_onnx_paddle_torch(tmp_path, arch, faces):
    from converters.checkpoint import read_torch_checkpoint, write_torch_state_dict
    from converters.demo import demo_state_dict
    from converters.export import export_onnx, torch_forward
    from converters.models import torch_model

    original = demo_state_dict(arch, seed=7)
    src = tmp_path / f"{arch}.pth"
    write_torch_state_dict(src, original)
    onnx_file = export_onnx(original, arch, 512, tmp_path / f"{arch}.onnx")
    pd, back = tmp_path / f"{arch}.pdparams", tmp_path / f"{arch}.back.pth"
    assert exit_code(onnx2paddle.main, ["--src", onnx_file, "--out", pd, "--arch", arch, "--no-verify"]) == 0
    assert exit_code(paddle2torch.main, ["--src", pd, "--out", back]) == 0
    restored = read_torch_checkpoint(back).arrays
    assert list(restored) == list(original)
    before = torch_forward(torch_model(arch, original, share=True))(faces)
    rel, cos = compare(before, torch_forward(torch_model(arch, restored, share=True))(faces))
    assert rel <= EMBEDDING_REL and cos >= EMBEDDING_COSINE, (rel, cos)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ROUND_TRIP_ARCHS)
def test_paddle_onnx_paddle(tmp_path, arch, faces):
    from converters.checkpoint import read_paddle_weights, write_paddle_weights
    from converters.demo import demo_state_dict
    from converters.export import onnx_via_paddle, paddle_forward
    from converters.mapping import torch_to_paddle
    from converters.models import paddle_model

    weights = torch_to_paddle(demo_state_dict(arch, seed=8), arch, 512, "<demo>")
    src = tmp_path / f"{arch}.pdparams"
    write_paddle_weights(src, weights)
    model = paddle_model(arch, read_paddle_weights(src), 512)
    before = paddle_forward(model)(faces)
    onnx_file = onnx_via_paddle(model, 512, tmp_path / f"{arch}.onnx")
    del model
    out = tmp_path / f"{arch}.imported.pdparams"
    assert exit_code(onnx2paddle.main, ["--src", onnx_file, "--out", out, "--arch", arch, "--no-verify"]) == 0
    imported = read_paddle_weights(out)
    assert imported.meta["folded_batchnorm"] == []
    original = read_paddle_weights(src).arrays
    assert list(imported.arrays) == list(original)
    for key, value in original.items():
        if key == "mask_token":  # a ViT's training-time patch masking: in no inference graph, read as zeros
            assert not imported.arrays[key].any()
            continue
        np.testing.assert_array_equal(imported.arrays[key], value, err_msg=key)
    rel, cos = compare(before, paddle_forward(paddle_model(arch, imported, 512))(faces))
    assert rel <= EMBEDDING_REL and cos >= EMBEDDING_COSINE, (rel, cos)
