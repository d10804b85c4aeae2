"""``PaddlePredictor(precision=...)``: float32 unchanged, bf16 refused where Paddle would not run it, and bf16
accurate where it does run (an exported seeded MobileFaceNet on the real faces of small_lfw.bin).

Paddle Inference runs oneDNN in bfloat16 only on a CPU with AVX-512 (``avx512_core``). Elsewhere
``Config.enable_mkldnn_bfloat16()`` leaves float32 in place and says so only in its INFO log, so the
predictor raises rather than hand back a float32 predictor labelled bf16.
"""

from __future__ import annotations

import numpy as np
import pytest

from converters.export import PaddlePredictor

BF16_MIN_COSINE = 0.999  # against the float32 predictor, per embedding (faces and their mirrors)
THREADS = 2


@pytest.fixture(scope="module")
def mbf_prefix(tmp_path_factory):
    from converters.demo import demo_state_dict
    from converters.export import save_paddle_inference
    from converters.mapping import torch_to_paddle
    from converters.models import paddle_model

    folder = tmp_path_factory.mktemp("mbf-inference")
    weights = torch_to_paddle(demo_state_dict("mbf"), "mbf", 512, folder / "mbf.pdparams")
    return str(save_paddle_inference(paddle_model("mbf", weights, 512), folder / "model"))


@pytest.fixture(scope="module")
def faces(small_lfw):
    from converters.inputs import faces_from_bin

    x = faces_from_bin(small_lfw, 20)
    return np.ascontiguousarray(np.concatenate([x, x[..., ::-1]]), dtype=np.float32)


def _plain_onednn_predictor(prefix: str):
    """The float32 predictor configured as ``PaddlePredictor`` configured it before it took a precision."""
    import paddle.inference as pi

    config = pi.Config(prefix + ".json", prefix + ".pdiparams")
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(THREADS)
    config.enable_mkldnn()
    config.disable_glog_info()
    return config


def _run(config, batch: np.ndarray) -> np.ndarray:
    import paddle.inference as pi

    predictor = pi.create_predictor(config)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(list(batch.shape))
    handle.copy_from_cpu(batch)
    predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64) / np.linalg.norm(a, axis=1, keepdims=True)
    b = b.astype(np.float64) / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def test_fp32_is_bit_identical_to_the_plain_onednn_predictor(mbf_prefix, faces):
    batch = faces[:4]
    reference = _run(_plain_onednn_predictor(mbf_prefix), batch)
    default = PaddlePredictor(mbf_prefix, THREADS)(batch)
    explicit = PaddlePredictor(mbf_prefix, THREADS, precision="fp32")(batch)
    assert default.shape == (4, 512) and np.isfinite(default).all()
    np.testing.assert_array_equal(default, reference)
    np.testing.assert_array_equal(explicit, reference)


def test_unknown_precision_is_refused(mbf_prefix):
    with pytest.raises(ValueError, match="precision 'fp16'"):
        PaddlePredictor(mbf_prefix, THREADS, precision="fp16")


@pytest.mark.skipif(PaddlePredictor.bf16_supported(), reason="this CPU has AVX-512: bf16 runs")
def test_bf16_is_refused_where_paddle_would_silently_run_float32(mbf_prefix, faces):
    batch = faces[:4]
    config = _plain_onednn_predictor(mbf_prefix)
    config.enable_mkldnn_bfloat16()
    # the reason for refusing: Paddle's bf16 switch is a no-op here, the result is float32 to the bit
    np.testing.assert_array_equal(_run(config, batch), _run(_plain_onednn_predictor(mbf_prefix), batch))
    with pytest.raises(RuntimeError, match="AVX-512"):
        PaddlePredictor(mbf_prefix, THREADS, precision="bf16")


@pytest.mark.skipif(not PaddlePredictor.bf16_supported(), reason="bf16 needs a CPU with AVX-512")
def test_bf16_embeddings_are_finite_and_close_to_fp32(mbf_prefix, faces):
    fp32 = PaddlePredictor(mbf_prefix, THREADS)(faces)
    bf16 = PaddlePredictor(mbf_prefix, THREADS, precision="bf16")(faces)  # raises on a non-finite embedding
    assert np.isfinite(bf16).all()
    assert not np.array_equal(bf16, fp32), "bf16 gave float32's exact result: bf16 did not run"
    cosines = _cosines(fp32, bf16)
    assert cosines.min() >= BF16_MIN_COSINE, f"min cosine {cosines.min():.6f}, mean {cosines.mean():.6f}"
