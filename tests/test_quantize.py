"""int8 post-training quantization (converters.quantize): calibration input errors and an ONNX int8 model
of the demo mbf calibrated on the shared real faces, compared with its float32 export."""

from __future__ import annotations

import numpy as np
import pytest

from converters.errors import UserError
from converters.quantize import (
    PADDLE_PTQ_UNAVAILABLE,
    calibration_images,
    quantize_onnx_int8,
    quantize_paddle_int8,
)

# min cosine of the int8 demo mbf to its float32 export on the 20 faces + mirrors, with the default options
# (measured 0.900; without reduce_range 0.766): random demo weights quantize worse than trained ones
MBF_INT8_MIN_COSINE = 0.88


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def test_calibration_images_from_a_pack_are_normalised_faces_and_mirrors(small_lfw):
    x = calibration_images(small_lfw, mirrors=True)
    assert x.shape == (40, 3, 112, 112) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.std() > 0.2
    np.testing.assert_array_equal(x[20:], x[:20, ..., ::-1])
    assert calibration_images(small_lfw, limit=17).shape[0] == 17


@pytest.mark.parametrize("case", ["too-few", "limit", "missing-bin", "missing-folder", "small-folder"])
def test_calibration_errors_are_one_line_naming_the_file(case, small_lfw, small_dataset, tmp_path):
    spec, kwargs, expected = {
        "too-few": (small_lfw, {"minimum": 32}, "20 calibration images, at least 32"),
        "limit": (small_lfw, {"limit": 8}, "8 calibration images, at least 16"),
        "missing-bin": (tmp_path / "nope.bin", {}, "no such file"),
        "missing-folder": (tmp_path / "nope", {}, "no such file"),
        "small-folder": (small_dataset, {}, "at least 16"),
    }[case]
    with pytest.raises(UserError) as info:
        calibration_images(spec, **kwargs)
    message = str(info.value)
    assert "\n" not in message and expected in message
    named = {"too-few": small_lfw, "limit": small_lfw, "small-folder": small_dataset}.get(case, spec)
    assert info.value.path == str(named) and message.startswith(str(named))


def test_paddle_ptq_states_why_it_is_unavailable(tmp_path):
    with pytest.raises(NotImplementedError, match="PIR"):
        quantize_paddle_int8(tmp_path / "model", tmp_path / "out", np.zeros((1, 3, 112, 112), np.float32))
    assert "quantize_onnx_int8" in PADDLE_PTQ_UNAVAILABLE


@pytest.mark.slow
def test_onnx_int8_mbf_on_real_faces_is_smaller_and_close_to_float32(small_lfw, tmp_path):
    from converters.demo import demo_state_dict
    from converters.export import OnnxRunner, export_onnx

    faces = calibration_images(small_lfw, mirrors=True)
    src = export_onnx(demo_state_dict("mbf"), "mbf", 512, tmp_path / "mbf.onnx")
    dst = quantize_onnx_int8(src, tmp_path / "mbf.int8.onnx", faces)
    assert dst.stat().st_size < 0.4 * src.stat().st_size  # int8 weights: about a quarter
    ref = OnnxRunner(src, 2)(faces)
    out = OnnxRunner(dst, 2)(faces)
    assert out.shape == ref.shape and np.isfinite(out).all()
    cos = _cosines(ref, out)
    assert cos.min() >= MBF_INT8_MIN_COSINE, (cos.min(), cos.mean())
    assert not list(tmp_path.glob(".*tmp*")), "no temporary left beside the output"
