"""Embedding backends behind one interface: a batch ``[N, 3, 112, 112]`` in, raw embeddings ``[N, D]`` out.

``make_embedder`` builds one for a ``ModelSource``:

- ``paddle-inference`` (default on CPU): the Paddle model exported once (``eval.export``, with
  ``converters/export.py``'s code) and run by its Paddle Inference predictor with oneDNN and an explicit
  math-thread count; measured 5-6x faster than dygraph on CPU.
- ``paddle``: the Paddle dygraph model (``paddle_models``), also what training evaluates with.
- ``torch``: the PyTorch reference (``torch_reference``) with InsightFace's state_dict layout.
- ``onnx``: onnxruntime on an ``.onnx`` file (normalisation outside the graph, as InsightFace exports);
  ``.pth``/``.pdparams`` weights are exported first (``eval.export``: the PyTorch reference exported as
  arcface_torch does, ``converters/export.py``'s ``--via torch``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from converters.errors import UserError

from .sources import INPUT_SHAPE, ModelSource

BACKENDS = ("paddle-inference", "paddle", "torch", "onnx")
DEVICES = ("cpu", "gpu")
PRECISIONS = ("fp32", "bf16", "int8")
# reduced precisions each backend offers: Paddle Inference's oneDNN bf16 (CPUs with AVX-512 only, on the
# graph exported for it) and oneDNN int8 (paddle.quantization.PTQ, converters/quantize.py), onnxruntime's
# int8 static quantization, PyTorch's bf16 autocast.
REDUCED = {"paddle-inference": ("bf16", "int8"), "onnx": ("int8",), "torch": ("bf16",), "paddle": ()}


class Embedder(ABC):
    """Maps a batch ``[N, 3, 112, 112]`` float32 RGB in [-1, 1] to raw embeddings ``[N, D]`` float32."""

    name: str

    @abstractmethod
    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


class PaddleEmbedder(Embedder):
    """Paddle dygraph: a ``paddle.nn.Layer`` in eval mode (also a model being trained)."""

    name = "paddle"

    def __init__(self, model: Any):
        self.model = model

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import paddle

        was_training = self.model.training
        self.model.eval()
        try:
            with paddle.no_grad():
                return self.model(paddle.to_tensor(batch)).numpy()
        finally:
            if was_training:
                self.model.train()


class PaddleInferenceEmbedder(Embedder):
    """A Paddle Inference predictor (``converters.export.PaddlePredictor``: oneDNN and an explicit thread count
    on CPU) on an exported ``model.json`` + ``model.pdiparams``."""

    name = "paddle-inference"

    def __init__(self, prefix: Path, threads: int, device: str = "cpu", precision: str = "fp32"):
        from converters.export import PaddlePredictor

        self.predictor = PaddlePredictor(prefix, threads, device, precision)
        if precision != "fp32":
            self.name = f"{self.name} {precision}"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.predictor(batch)


class TorchEmbedder(Embedder):
    """The PyTorch reference model (``torch_reference``) in eval mode."""

    name = "torch"

    def __init__(self, model: Any, device: str = "cpu", threads: int | None = None, precision: str = "fp32"):
        import torch

        if threads:  # torch may have been imported after Paddle set OMP_NUM_THREADS=1
            torch.set_num_threads(threads)
        self.device = "cuda" if device == "gpu" else "cpu"
        self.model = model.to(self.device).eval()
        self.autocast = precision == "bf16"  # torch.autocast to bfloat16, weights kept in float32
        if self.autocast:
            self.name = f"{self.name} bf16"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode(), torch.autocast(self.device, torch.bfloat16, enabled=self.autocast):
            return self.model(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()


class OnnxEmbedder(Embedder):
    """onnxruntime on an ``.onnx`` model whose single input takes normalised ``[N, 3, 112, 112]``."""

    name = "onnx"

    def __init__(self, path: Path, threads: int, device: str = "cpu", precision: str = "fp32"):
        import onnxruntime as ort

        if precision != "fp32":
            self.name = f"{self.name} {precision}"
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # 3: InsightFace's exports declare output batch 1 and ort warns every batch; 4: a failing run's
        # error is reported once, as this project's one line (ort would also print it as a log line)
        options.log_severity_level = 4
        providers = ["CUDAExecutionProvider"] if device == "gpu" else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # onnxruntime's own exception types (InvalidGraph, Fail, ...)
            raise UserError(path, f"onnxruntime cannot load it ({str(err).splitlines()[0][:200]})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.path = path
        self.run_options = ort.RunOptions()
        self.run_options.log_severity_level = 4
        self(np.zeros((2, *INPUT_SHAPE), np.float32))  # a model that cannot run fails now, before any work

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        try:
            out = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)},
                                   self.run_options)[0]
        except Exception as err:  # onnxruntime's own types (InvalidArgument, Fail, RuntimeException, ...)
            text = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
            raise UserError(self.path, f"onnxruntime failed running the model on a batch of {list(batch.shape)} "
                            f"({text[:240]})") from None
        if not isinstance(out, np.ndarray) or out.dtype.kind not in "fiu":
            found = f"{out.dtype} array" if isinstance(out, np.ndarray) else type(out).__name__
            raise UserError(self.path, f"the model's output is a {found}, expected float embeddings")
        if out.ndim != 2 or len(out) != len(batch):
            raise UserError(self.path, f"the model returned shape {list(out.shape)} for a batch of {len(batch)} "
                            f"images (expected [{len(batch)}, D])")
        return out.astype(np.float32, copy=False)


def make_embedder(source: ModelSource, backend: str, threads: int, device: str = "cpu",
                  cache_dir: str | Path | None = None, precision: str = "fp32",
                  calibration: str | Path | None = None) -> Embedder:
    """Build ``backend`` for ``source`` (``threads`` CPU threads; ``device`` cpu or gpu) at ``precision``
    (``int8`` calibrated on the faces of ``calibration``, a ``.bin`` pack or an image folder)."""
    if backend not in BACKENDS:
        raise UserError(None, f"unknown backend '{backend}' (known: {', '.join(BACKENDS)})")
    if device not in DEVICES:
        raise UserError(None, f"unknown device '{device}' (known: {', '.join(DEVICES)})")
    if precision not in PRECISIONS:
        raise UserError(None, f"unknown precision '{precision}' (known: {', '.join(PRECISIONS)})")
    if precision != "fp32" and precision not in REDUCED[backend]:
        offered = {b: p for b, p in REDUCED.items() if precision in p}
        raise UserError(None, f"--precision {precision} is not available with --backend {backend} "
                        f"(use --backend {' or '.join(offered)})")
    if precision != "fp32" and device != "cpu":
        raise UserError(None, f"--precision {precision} is a CPU precision; use --device cpu")
    if precision == "int8" and calibration is None:
        raise UserError(None, "--precision int8 needs --calibration PACK.bin|FOLDER (aligned faces to calibrate on)")
    if source.kind == "onnx" and backend != "onnx":
        raise UserError(source.path, f"an .onnx model runs only with --backend onnx, not {backend}")
    if backend == "onnx":
        from .export import cached_int8, cached_onnx

        if precision == "int8":
            if source.kind == "onnx":
                raise UserError(source.path, "--precision int8 quantizes a .pth/.pdparams export; give the weights")
            path = cached_int8(source, "onnx", calibration, cache_dir)
        else:
            path = source.path if source.kind == "onnx" else cached_onnx(source, cache_dir)
        return OnnxEmbedder(path, threads, device, precision)
    if backend == "torch":
        from converters.models import torch_model

        return TorchEmbedder(torch_model(source.arch, source.torch_state(), source.num_features), device, threads,
                             precision)
    import paddle

    if backend == "paddle":
        from converters.models import paddle_model

        paddle.set_device("gpu" if device == "gpu" else "cpu")
        return PaddleEmbedder(paddle_model(source.arch, source.paddle_state(), source.num_features))
    from .export import export_paddle_inference

    try:
        if precision == "int8":
            from .export import cached_int8

            prefix = cached_int8(source, backend, calibration, cache_dir)
        else:
            prefix = export_paddle_inference(source, cache_dir, precision)
        return PaddleInferenceEmbedder(prefix, threads, device, precision)
    except RuntimeError as err:  # bf16 on a CPU without AVX-512
        raise UserError(None, f"--precision {precision}: {err}") from None


def reference_backend(backend: str, precision: str, compare: str | None) -> str | None:
    """The backend of the fp32 model a run is compared with: ``compare``, else for a reduced precision the
    evaluated backend itself (a reduced precision is always compared with fp32); None when there is none."""
    return compare or (backend if precision != "fp32" else None)


def make_embedders(source: ModelSource, backend: str, threads: int, device: str = "cpu",
                   cache_dir: str | Path | None = None, precision: str = "fp32",
                   calibration: str | Path | None = None, compare: str | None = None) -> list[Embedder]:
    """The model evaluated at ``precision``, then, if there is one (``reference_backend``), the fp32 model
    it is compared with on the same images."""
    embedders = [make_embedder(source, backend, threads, device, cache_dir, precision, calibration)]
    reference = reference_backend(backend, precision, compare)
    if reference:
        embedders.append(make_embedder(source, reference, threads, device, cache_dir))
    return embedders


def add_precision_options(group: Any, compare_help: str) -> None:
    """``--compare``, ``--precision`` and ``--calibration`` of the evaluation commands, on an argparse group."""
    offered = {p: [b for b, ps in REDUCED.items() if p in ps] for p in PRECISIONS[1:]}
    group.add_argument("--compare", choices=BACKENDS, metavar="BACKEND", help=compare_help)
    group.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help="fp32 (default), " + ", ".join(f"{p} ({', '.join(b)})" for p, b in offered.items())
                       + "; a reduced precision is always compared with fp32 on the same images (the --compare "
                       "backend, default the same backend) and its accuracy guard printed")
    group.add_argument("--calibration", type=Path, metavar="PACK.bin|FOLDER",
                       help="aligned faces to calibrate --precision int8 on")


def check_precision_options(parser: Any, args: Any) -> None:
    """Refuse, through ``parser.error``, ``--calibration`` without ``--precision int8``."""
    if args.calibration is not None and args.precision != "int8":
        parser.error("--calibration: calibrates --precision int8 only")
