"""int8 post-training quantization of an exported backbone, calibrated on real aligned faces.

- ``calibration_images(spec)``: the calibration batch from a verification pack (``.bin``) or an image
  folder of aligned 112x112 faces (``label.txt`` or class sub-folders), normalised like every input of
  this project (``(pixel - 127.5) / 127.5``, ``[N, 3, 112, 112]`` float32). Too few images, a missing file
  or an image of the wrong size is a one-line ``UserError`` naming the file.
- ``quantize_onnx_int8(src, dst, images, ...)``: onnxruntime's own static quantization
  (``onnxruntime.quantization.quantize_static``) with a ``CalibrationDataReader`` over ``images``, after
  onnxruntime's ``quant_pre_process`` (symbolic shape inference and graph optimisation).
- ``quantize_paddle_int8``: not available, it raises ``NotImplementedError``. With paddlepaddle 3.3.1,
  ``paddle.static.quantization.PostTrainingQuantization`` works only on the legacy ``ProgramDesc`` IR:
  ``paddle.static.load_inference_model`` of this project's Paddle Inference export (``model.json``, the PIR
  format) returns a PIR program, and the quantizer stops at ``_get_var`` (``assert isinstance(program,
  Program)``). Exporting in the legacy format instead (``FLAGS_enable_pir_api=0`` before importing paddle,
  ``model.pdmodel``) gets through its calibration runs, but the KL threshold search had not finished for
  mbf after about 8 minutes on 2 shared cores, and the int8 predictor on that legacy graph was not measured.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from converters.binfile import IMAGE_SIZE
from converters.errors import UserError

DEFAULT_LIMIT = 512
DEFAULT_MINIMUM = 16
MIN_QUANT_OPSET = 13
PADDLE_PTQ_UNAVAILABLE = (
    "Paddle post-training quantization is not available: paddle.static.quantization.PostTrainingQuantization "
    "in paddlepaddle 3.3.1 needs a legacy ProgramDesc model, and Paddle Inference exports are PIR (model.json); "
    "use the ONNX export and quantize_onnx_int8")
CALIBRATION_BATCH = 1  # images per calibration run: the histogram calibrators (Entropy, Percentile) need equal batches


# ---------------------------------------------------------------------------------------- calibration
def _folder_images(path: Path, limit: int) -> np.ndarray:
    from converters.folders import list_images, read_image_file
    from converters.images import decode_image

    listed = list_images(path)
    images = []
    for file in listed.paths[:limit]:
        rgb = decode_image(read_image_file(file), file, "calibration image", rgb=True)
        if rgb.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
            raise UserError(file, f"calibration image is {rgb.shape[1]}x{rgb.shape[0]}, expected an aligned "
                            f"{IMAGE_SIZE}x{IMAGE_SIZE} face")
        images.append(rgb)
    if not images:
        return np.empty((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    return np.stack(images)


def calibration_images(spec: str | Path, limit: int = DEFAULT_LIMIT, minimum: int = DEFAULT_MINIMUM,
                       mirrors: bool = False) -> np.ndarray:
    """Up to ``limit`` faces of ``spec`` (a ``.bin`` verification pack, or an image folder / ``label.txt``
    of aligned 112x112 faces), normalised: ``[N, 3, 112, 112]`` float32 in [-1, 1]. ``mirrors`` appends
    each face's horizontal mirror (``2N`` images). Fewer than ``minimum`` faces is a ``UserError``."""
    from converters.images import normalize
    from converters.inputs import faces_from_bin

    path = Path(spec)
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if path.is_file() and path.suffix.lower() == ".bin":
        x = faces_from_bin(path, limit)
    elif path.suffix.lower() == ".bin" and not path.exists():
        raise UserError(path, "no such file")
    else:
        x = normalize(_folder_images(path, limit))
    if len(x) < minimum:
        raise UserError(path, f"{len(x)} calibration images, at least {minimum} are needed")
    if mirrors:
        x = np.concatenate([x, np.ascontiguousarray(x[..., ::-1])])
    return x


def _batches(images: np.ndarray, batch: int = CALIBRATION_BATCH) -> Iterator[np.ndarray]:
    for start in range(0, len(images), batch):
        yield np.ascontiguousarray(images[start:start + batch], dtype=np.float32)


def _check_images(images: np.ndarray) -> None:
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE) or len(images) == 0:
        raise ValueError(f"calibration images must be [N, 3, {IMAGE_SIZE}, {IMAGE_SIZE}], got {list(images.shape)}")


# ------------------------------------------------------------------------------------------------ ONNX
ONNX_DEFAULTS: dict[str, Any] = {
    "quant_format": "QDQ",  # QDQ or QOperator
    "per_channel": True,
    "activation_type": "QUInt8",
    "weight_type": "QInt8",
    "calibrate_method": "MinMax",  # MinMax, Entropy, Percentile
    "reduce_range": True,  # 7-bit weights: without it the u8 x s8 int8 kernels saturate (cosine 0.94 vs 0.989)
    "preprocess": True,  # onnxruntime.quantization.shape_inference.quant_pre_process first
}


def _onnx_reader(input_name: str, images: np.ndarray) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class FaceReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rewind()

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.iterator, None)
            return None if batch is None else {input_name: batch}

        def rewind(self) -> None:
            self.iterator = _batches(images)

    return FaceReader()


def quantize_onnx_int8(src_onnx: str | Path, dst_onnx: str | Path, images: np.ndarray, **options: Any) -> Path:
    """Quantize ``src_onnx`` to int8 with onnxruntime's ``quantize_static``, calibrated on ``images``
    (``[N, 3, 112, 112]`` normalised faces); writes ``dst_onnx`` atomically and returns it.

    ``options`` override ``ONNX_DEFAULTS``: ``quant_format`` (``QDQ`` | ``QOperator``), ``per_channel``,
    ``activation_type`` / ``weight_type`` (``QUInt8`` | ``QInt8``), ``calibrate_method`` (``MinMax`` |
    ``Entropy`` | ``Percentile``), ``reduce_range``, ``preprocess`` (run onnxruntime's
    ``quant_pre_process`` first); any other keyword goes to ``quantize_static`` unchanged."""
    import onnx
    import onnx.version_converter
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from converters.outputs import atomic_output, check_outputs

    _check_images(images)
    src, dst = Path(src_onnx), Path(dst_onnx)
    if not src.is_file():
        raise UserError(src, "no such file")
    check_outputs({"model": src}, {"output": dst})
    settings = {**ONNX_DEFAULTS, **options}
    unknown = {k for k in ("quant_format", "activation_type", "weight_type", "calibrate_method")
               if not isinstance(settings[k], (str, QuantFormat, QuantType, CalibrationMethod))}
    if unknown:
        raise ValueError(f"options {sorted(unknown)} must be names")
    fmt = QuantFormat[settings.pop("quant_format")] if isinstance(settings["quant_format"], str) \
        else settings.pop("quant_format")
    act = QuantType[settings.pop("activation_type")] if isinstance(settings["activation_type"], str) \
        else settings.pop("activation_type")
    wt = QuantType[settings.pop("weight_type")] if isinstance(settings["weight_type"], str) \
        else settings.pop("weight_type")
    method = CalibrationMethod[settings.pop("calibrate_method")] \
        if isinstance(settings["calibrate_method"], str) else settings.pop("calibrate_method")
    preprocess = bool(settings.pop("preprocess"))
    model = onnx.load(str(src))
    input_name = model.graph.input[0].name
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    with tempfile.TemporaryDirectory(prefix="quantize-", dir=dst.parent if dst.parent.exists() else None) as tmp:
        model_in = src
        if opset < MIN_QUANT_OPSET:
            # per-channel QuantizeLinear/DequantizeLinear (their ``axis``) need opset 13; the exports are 11
            model_in = Path(tmp) / "opset13.onnx"
            onnx.save_model(onnx.version_converter.convert_version(model, MIN_QUANT_OPSET), str(model_in))
        del model
        if preprocess:
            pre = Path(tmp) / "preprocessed.onnx"
            quant_pre_process(str(model_in), str(pre), skip_symbolic_shape=False)
            model_in = pre
        with atomic_output(dst) as out:
            quantize_static(str(model_in), str(out), _onnx_reader(input_name, images), quant_format=fmt,
                            per_channel=settings.pop("per_channel"), activation_type=act, weight_type=wt,
                            calibrate_method=method, reduce_range=settings.pop("reduce_range"), **settings)
    return dst


def calibration_key(calibration: str | Path) -> str:
    """A short digest naming the calibration data (a file's bytes, or a folder's file names and sizes)."""
    import hashlib

    from converters.checkpoint import sha256_file

    path = Path(calibration)
    if path.is_file():
        return sha256_file(path)[:16]
    if not path.is_dir():
        raise UserError(path, "no such calibration pack or folder")
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{item.relative_to(path)}\0{item.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- Paddle
def quantize_paddle_int8(model_prefix: str | Path, out_dir: str | Path, images: np.ndarray, **options: Any) -> Path:
    """Not available with paddlepaddle 3.3.1: see ``PADDLE_PTQ_UNAVAILABLE``."""
    raise NotImplementedError(PADDLE_PTQ_UNAVAILABLE)
