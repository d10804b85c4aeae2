"""int8 post-training quantization of a backbone, calibrated on real aligned faces.

- ``calibration_images(spec)``: the calibration batch from a verification pack (``.bin``) or an image
  folder of aligned 112x112 faces (``label.txt`` or class sub-folders), normalised like every input of
  this project (``(pixel - 127.5) / 127.5``, ``[N, 3, 112, 112]`` float32). Too few images, a missing file
  or an image of the wrong size is a one-line ``UserError`` naming the file.
- ``quantize_onnx_int8(src, dst, images, ...)``: onnxruntime's own static quantization
  (``onnxruntime.quantization.quantize_static``) with a ``CalibrationDataReader`` over ``images``, after
  onnxruntime's ``quant_pre_process`` (symbolic shape inference and graph optimisation).
- ``quantize_paddle_int8(model, prefix, images, ...)``: ``paddle.quantization.PTQ`` on the dygraph model,
  saved as a legacy ``ProgramDesc`` (``<prefix>.pdmodel`` + ``<prefix>.pdiparams``) with int8 weights;
  ``paddle_int8_config(prefix, threads)`` is the Paddle Inference config that runs it with oneDNN int8.

Measured with the seeded demo weights (``converters.demo``), calibrated on the 20 faces of ``small_lfw.bin``
and their mirrors and compared on the same 40 images with the float32 model in the same runtime, on an AMD
EPYC with AVX-512 VNNI (2 threads for speed, batch 32, median of 5-7 alternating runs):

- onnxruntime 1.32, the defaults here: cosine min / mean r50 0.9926 / 0.9941, mbf 0.929 / 0.952; images/s
  int8 (fp32) r50 26.9 (15.0), mbf 41.0 (54.1).
- onnxruntime 1.32, the former defaults: r50 0.983 / 0.987, mbf 0.899 / 0.935; r50 27.7 (14.4),
  mbf 40.8 (52.3).
- Paddle Inference 3.3.1, oneDNN int8: r50 0.9968 / 0.9975, mbf 0.929 / 0.951; r50 31.4 (16.4),
  mbf 217.1 (106.3).

The former onnxruntime defaults were MinMax calibration, ``reduce_range`` and every quantizable op type.
On the r50 alone: ``reduce_range=False`` 0.987, plus Percentile 0.988, plus only Conv/Gemm 0.991, plus the
stem convolution in float32 0.9926 (r18: 0.9888 before, 0.9929 now); Entropy calibration equals MinMax
(0.987), symmetric QInt8 activations lower it (0.985), CalibPercentile 99.99 instead of 99.999 too (0.992).
``reduce_range=False`` relies on a CPU whose u8 x s8 int8 products do not saturate (VNNI); on an AVX2-only
CPU quantize with ``reduce_range=True``.
Random demo weights quantize worse than trained ones (the mbf, with depthwise convolutions, most).
onnxruntime's int8 mbf is slower than its float32 one with either setting (its QDQ depthwise convolutions).

Paddle, what works and why it is done this way (paddlepaddle 3.3.1):

- ``paddle.static.quantization.PostTrainingQuantization`` needs a legacy ``ProgramDesc``; Paddle Inference
  exports are PIR (``model.json``). The dygraph ``paddle.quantization.PTQ`` is used instead; it ships only a
  per-tensor ``AbsmaxObserver``, so the per-output-channel weight observer and the histogram activation
  observer (MSE-optimal threshold by default; absmax and percentiles too) are defined here. Only Conv2D and
  Linear are observed: the default ``QuantConfig`` also observes every leaf layer (BatchNorm, PReLU, ...).
- Saved as PIR (``model.json``) the converted model does not run int8: ``LinearQuanter`` traces
  ``create_persistable_value`` with the dynamic batch (shape -1 is refused); with that bypassed, Paddle
  Inference's PIR passes delete the activation quantize/dequantize pairs and keep float32 kernels
  (``enable_mkldnn_int8`` adds no PIR pass), and their constant folding fails on the weights' dequantize.
  Saved as a legacy ``ProgramDesc`` (``paddle.pir_utils.OldIrGuard`` around ``jit.save``), the legacy
  passes (``quant_dequant_onednn_pass``, ``cpu_quantize_pass``) turn every convolution into a oneDNN int8
  kernel (mbf: 49 of its convolutions; its final Linear stays float32).
- ``quant_dequant_onednn_pass`` reads the weight of a ``dequantize_linear`` as int8 data: the float32
  integers ``PTQ.convert`` leaves come out as garbage, so the weights are stored as int8.
- PReLU needs no workaround in int8 (it runs in float32 between the int8 convolutions; embeddings finite).
- Activation thresholds on the r50: MSE 0.9968 (the default), absmax 0.9958; on the mbf MSE 0.928, absmax
  0.913, 99.99th percentile 0.903.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from converters.binfile import IMAGE_SIZE
from converters.errors import UserError

DEFAULT_LIMIT = 512
DEFAULT_MINIMUM = 16
MIN_QUANT_OPSET = 13
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


def batches(images: np.ndarray, batch: int = CALIBRATION_BATCH) -> Iterator[np.ndarray]:
    """``images`` ``batch`` at a time, each a contiguous float32 array."""
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
    "calibrate_method": "Percentile",  # MinMax, Entropy, Percentile (onnxruntime's 99.999th of |x|)
    "reduce_range": False,  # 7-bit weights: only where u8 x s8 products saturate (CPUs without VNNI)
    "op_types_to_quantize": ("Conv", "Gemm", "MatMul"),  # not Add, Mul, PRelu, ...: their QDQ costs accuracy
    "exclude_first_conv": True,  # the stem convolution on the image stays float32
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
            self.iterator = batches(images)

    return FaceReader()


def quantize_onnx_int8(src_onnx: str | Path, dst_onnx: str | Path, images: np.ndarray, **options: Any) -> Path:
    """Quantize ``src_onnx`` to int8 with onnxruntime's ``quantize_static``, calibrated on ``images``
    (``[N, 3, 112, 112]`` normalised faces); writes ``dst_onnx`` atomically and returns it.

    ``options`` override ``ONNX_DEFAULTS``: ``quant_format`` (``QDQ`` | ``QOperator``), ``per_channel``,
    ``activation_type`` / ``weight_type`` (``QUInt8`` | ``QInt8``), ``calibrate_method`` (``MinMax`` |
    ``Entropy`` | ``Percentile``), ``reduce_range``, ``op_types_to_quantize`` (``None``: every type
    onnxruntime can quantize), ``exclude_first_conv`` (keep the graph's first ``Conv`` in float32, added to
    any ``nodes_to_exclude``), ``preprocess`` (run onnxruntime's ``quant_pre_process`` first); any other
    keyword goes to ``quantize_static`` unchanged."""
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
    exclude_first_conv = bool(settings.pop("exclude_first_conv"))
    op_types = settings.pop("op_types_to_quantize")
    op_types = None if op_types is None else list(op_types)
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
        if exclude_first_conv:
            first = next((n.name for n in onnx.load(str(model_in)).graph.node if n.op_type == "Conv"), None)
            excluded = list(settings.pop("nodes_to_exclude", None) or [])
            settings["nodes_to_exclude"] = excluded + ([first] if first and first not in excluded else [])
        with atomic_output(dst) as out:
            quantize_static(str(model_in), str(out), _onnx_reader(input_name, images), quant_format=fmt,
                            per_channel=settings.pop("per_channel"), activation_type=act, weight_type=wt,
                            calibrate_method=method, reduce_range=settings.pop("reduce_range"),
                            op_types_to_quantize=op_types, **settings)
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
PADDLE_MODEL_SUFFIX = ".pdmodel"  # the legacy ProgramDesc: Paddle Inference's oneDNN int8 passes need it
PADDLE_PARAMS_SUFFIX = ".pdiparams"
PADDLE_INPUT = "x"
PADDLE_DEFAULTS: dict[str, Any] = {
    "activation": "mse",  # per-tensor activation threshold: "mse", "absmax" or a percentile such as 99.99
    "layers": ("Conv2D", "Linear"),  # the layer types whose input and weights are quantized
    "batch": 8,  # images per calibration forward pass
}
HISTOGRAM_BINS = 4096
INT8_MAX = 127


def _paddle_observers() -> tuple[type, type]:
    """The observer factories: per-channel absmax for weights, a histogram threshold for activations
    (paddlepaddle 3.3.1 ships only a per-tensor ``AbsmaxObserver`` and a group-wise one for 2-D weights)."""
    import paddle
    from paddle.quantization.base_observer import BaseObserver
    from paddle.quantization.factory import ObserverFactory

    class ChannelAbsmaxLayer(BaseObserver):
        """Absmax per output channel: axis 0 of a Conv2D weight, axis 1 of a Linear weight ``[in, out]``."""

        def __init__(self, layer: Any, quant_bits: int = 8) -> None:
            super().__init__()
            self._quant_bits, self._max, self._scale, self._zero_point = quant_bits, None, None, None
            self._axis = 1 if isinstance(layer, paddle.nn.Linear) else 0

        def forward(self, x: Any) -> Any:
            m = paddle.max(paddle.abs(x), axis=[i for i in range(x.ndim) if i != self._axis])
            self._max = m if self._max is None else paddle.maximum(self._max, m)
            return x

        def cal_thresholds(self) -> None:
            self._scale = paddle.clip(self._max, min=1e-8)
            self._zero_point = paddle.zeros_like(self._scale)

        def bit_length(self) -> int:
            return self._quant_bits

        def quant_axis(self) -> int:
            return self._axis

        def min_value(self) -> float:
            return 0.0

        def max_value(self) -> Any:
            return self._max

        def scales(self) -> Any:
            if self._scale is None:
                self.cal_thresholds()
            return self._scale

        def zero_points(self) -> Any:
            if self._zero_point is None:
                self.cal_thresholds()
            return self._zero_point

    class HistogramLayer(ChannelAbsmaxLayer):
        """A per-tensor threshold on a histogram of ``|x|`` over every calibration batch: the one minimising
        the int8 round-and-clip error (``"mse"``), a percentile (a number), or the maximum (``"absmax"``)."""

        def __init__(self, layer: Any, method: Any = "mse", quant_bits: int = 8) -> None:
            super().__init__(layer, quant_bits)
            self._method, self._hist, self._top = method, None, 0.0

        def forward(self, x: Any) -> Any:
            a = np.abs(x.numpy()).ravel()
            top = float(a.max()) if a.size else 0.0
            if self._hist is None or top > self._top:
                new_top = max(top, 1e-8)
                hist = np.histogram(a, bins=HISTOGRAM_BINS, range=(0, new_top))[0].astype(np.float64)
                if self._hist is not None:  # re-bin what was seen into the wider range
                    centres = (np.arange(HISTOGRAM_BINS) + 0.5) * self._top / HISTOGRAM_BINS
                    hist += np.histogram(centres, bins=HISTOGRAM_BINS, range=(0, new_top),
                                         weights=self._hist)[0]
                self._hist, self._top = hist, new_top
            else:
                self._hist += np.histogram(a, bins=HISTOGRAM_BINS, range=(0, self._top))[0]
            return x

        def threshold(self) -> float:
            hist, width = self._hist, self._top / HISTOGRAM_BINS
            if self._method == "absmax":
                return self._top
            if self._method != "mse":
                cdf = np.cumsum(hist) / hist.sum()
                return float((np.searchsorted(cdf, float(self._method) / 100) + 1) * width)
            centres = (np.arange(HISTOGRAM_BINS) + 0.5) * width
            candidates = np.arange(HISTOGRAM_BINS // 16, HISTOGRAM_BINS + 1, 8) * width
            errors = [(hist * (centres - np.minimum(np.round(centres / (t / INT8_MAX)), INT8_MAX)
                               * (t / INT8_MAX)) ** 2).sum() for t in candidates]
            return float(candidates[int(np.argmin(errors))])

        def cal_thresholds(self) -> None:
            self._scale = paddle.to_tensor(np.float32(self.threshold()))
            self._zero_point = paddle.zeros_like(self._scale)

        def quant_axis(self) -> int:
            return -1

        def max_value(self) -> Any:
            return self._top

    class ChannelAbsmax(ObserverFactory):
        def __init__(self, quant_bits: int = 8) -> None:
            super().__init__(quant_bits=quant_bits)

        def _get_class(self) -> type:
            return ChannelAbsmaxLayer

    class Histogram(ObserverFactory):
        def __init__(self, method: Any = "mse", quant_bits: int = 8) -> None:
            super().__init__(method=method, quant_bits=quant_bits)

        def _get_class(self) -> type:
            return HistogramLayer

    return ChannelAbsmax, Histogram


def _activation_method(value: Any) -> Any:
    if value in ("mse", "absmax"):
        return value
    try:
        percentile = float(value)
    except (TypeError, ValueError):
        percentile = -1.0
    if not 50 < percentile <= 100:
        raise ValueError(f"activation {value!r}: expected 'mse', 'absmax' or a percentile in (50, 100]")
    return percentile


def _int8_weights(model: Any) -> int:
    """Store each converted layer's weight as int8: Paddle Inference's ``quant_dequant_onednn_pass`` reads
    the weight of a ``dequantize_linear`` as int8 data (float32 integers would be read as garbage)."""
    import paddle
    from paddle.nn.quant.format import ConvertibleQuantedLayer

    count = 0
    for layer in model.sublayers():
        if isinstance(layer, ConvertibleQuantedLayer) and layer.converted:
            w = layer.weight.numpy()
            if not (np.array_equal(w, np.round(w)) and w.min(initial=0) >= -INT8_MAX - 1
                    and w.max(initial=0) <= INT8_MAX):
                raise RuntimeError(f"{type(layer).__name__}: the converted weight is not int8-valued")
            weight = layer.create_parameter(list(w.shape), dtype="int8",
                                            default_initializer=paddle.nn.initializer.Constant(0))
            weight.set_value(w.astype(np.int8))
            weight.stop_gradient = True
            layer.weight = weight
            count += 1
    return count


def quantize_paddle_int8(model: Any, prefix: str | Path, images: np.ndarray, **options: Any) -> Path:
    """Post-training int8 quantization of the eval-mode Paddle backbone ``model`` calibrated on ``images``
    (``[N, 3, 112, 112]`` normalised faces); writes ``<prefix>.pdmodel`` and ``<prefix>.pdiparams`` and
    returns ``prefix``. ``model`` itself is left unchanged (the quantizer works on a copy).

    ``paddle.quantization.PTQ`` (dygraph) observes the input and the weights of every layer whose type is
    in ``layers``; ``convert`` turns the observers into ``quantize_linear`` / ``dequantize_linear`` pairs
    (per-tensor activations, per-output-channel int8 weights). The graph is saved in the legacy ProgramDesc
    format: only Paddle Inference's legacy oneDNN passes turn it into int8 kernels. Run it with
    ``paddle_int8_config`` (``enable_mkldnn()`` + ``enable_mkldnn_int8()``).

    ``options`` override ``PADDLE_DEFAULTS``: ``activation`` (``"mse"``, ``"absmax"`` or a percentile such
    as ``99.99``), ``layers`` (names of ``paddle.nn`` layer types), ``batch`` (images per forward pass)."""
    import paddle
    from paddle.pir_utils import OldIrGuard
    from paddle.quantization import PTQ, QuantConfig

    from converters.outputs import atomic_output, check_outputs
    from converters.runtime import onednn_flag_off

    _check_images(images)
    unknown = sorted(set(options) - set(PADDLE_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown options {unknown}: expected some of {sorted(PADDLE_DEFAULTS)}")
    settings = {**PADDLE_DEFAULTS, **options}
    method = _activation_method(settings["activation"])
    batch = int(settings["batch"])
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    types = []
    for name in settings["layers"]:
        layer_type = getattr(paddle.nn, str(name), None)
        if not (isinstance(layer_type, type) and issubclass(layer_type, paddle.nn.Layer)):
            raise ValueError(f"layers: {name!r} is not a paddle.nn layer type")
        types.append(layer_type)
    if getattr(model, "training", True):
        raise ValueError("quantize an eval-mode model")
    prefix = Path(prefix)
    model_file = Path(str(prefix) + PADDLE_MODEL_SUFFIX)
    params_file = Path(str(prefix) + PADDLE_PARAMS_SUFFIX)
    check_outputs({}, {"model": model_file, "parameters": params_file})

    channel_absmax, histogram = _paddle_observers()
    config = QuantConfig(activation=None, weight=None)
    config.add_type_config(types, activation=histogram(method), weight=channel_absmax())
    ptq = PTQ(config)
    observed = ptq.quantize(model, inplace=False)
    with paddle.no_grad():
        for chunk in batches(images, batch):
            observed(paddle.to_tensor(chunk))
    quantized = ptq.convert(observed, inplace=True)
    if _int8_weights(quantized) == 0:
        raise ValueError(f"the model has no layer of the types {list(settings['layers'])} to quantize")
    spec = [paddle.static.InputSpec([None, 3, IMAGE_SIZE, IMAGE_SIZE], "float32", PADDLE_INPUT)]
    folder = model_file.parent if model_file.parent.exists() else None
    with tempfile.TemporaryDirectory(prefix="quantize-", dir=folder) as tmp:
        with OldIrGuard(), onednn_flag_off():
            paddle.jit.save(quantized, str(Path(tmp) / "int8"), input_spec=spec)
        saved_model = Path(tmp) / ("int8" + PADDLE_MODEL_SUFFIX)
        saved_params = Path(tmp) / ("int8" + PADDLE_PARAMS_SUFFIX)
        if not (saved_model.is_file() and saved_model.stat().st_size and saved_params.is_file()):
            raise UserError(model_file.parent, "cannot write: the quantized model is incomplete "
                            "(no space left on the device?)")
        with atomic_output(params_file) as out:  # parameters first: a complete .pdmodel has its parameters
            shutil.copyfile(saved_params, out)
        with atomic_output(model_file) as out:
            shutil.copyfile(saved_model, out)
    return prefix


def paddle_int8_config(prefix: str | Path, threads: int) -> Any:
    """The ``paddle.inference.Config`` that runs ``quantize_paddle_int8``'s ``prefix`` with oneDNN int8
    kernels on CPU: ``<prefix>.pdmodel`` + ``<prefix>.pdiparams``, ``threads`` math threads,
    ``enable_mkldnn()`` and ``enable_mkldnn_int8()``. Without ``enable_mkldnn_int8`` the same files run in
    float32 (weights rounded to int8 steps, activations not quantized)."""
    import paddle.inference as pi

    config = pi.Config(str(prefix) + PADDLE_MODEL_SUFFIX, str(prefix) + PADDLE_PARAMS_SUFFIX)
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(threads)
    config.enable_mkldnn()
    config.enable_mkldnn_int8()
    config.disable_glog_info()
    return config
