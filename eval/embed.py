"""Embedding backends behind one interface, and streaming embedding of a verification pack.

Backends (``make_embedder``):

- ``paddle-inference`` (default on CPU): the Paddle model exported once with ``paddle.jit.save`` (cached
  under a temporary folder keyed by the weights' sha256) and run by a Paddle Inference predictor with
  oneDNN and an explicit math-thread count; measured 5-6x faster than dygraph on CPU.
  ``paddle.jit.to_static`` is never combined with
  ``FLAGS_use_mkldnn`` (that segfaults); oneDNN is switched on in the predictor's config only.
- ``paddle``: the Paddle dygraph model (``paddle_models``), also what training evaluates with.
- ``torch``: the PyTorch reference (``torch_reference``) with InsightFace's state_dict layout.
- ``onnx``: onnxruntime on an ``.onnx`` file (normalisation outside the graph, as InsightFace exports);
  for ``.pth``/``.pdparams`` weights the PyTorch reference is exported first as InsightFace's
  ``torch2onnx.py`` does (opset 11, input ``data``, dynamic batch), into the same cache.

Weights are read safely by converters/ (``.pth`` with ``torch.load(weights_only=True)``, ``.pdparams``
with the restricted unpickler) and converted on the fly to whichever framework the backend needs.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import logging
import os
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from converters.binfile import IMAGE_SIZE, BinPack
from converters.errors import UserError
from converters.images import normalize

if TYPE_CHECKING:
    from converters.checkpoint import PaddleWeights

log = logging.getLogger(__name__)

BACKENDS = ("paddle-inference", "paddle", "torch", "onnx")
DEVICES = ("cpu", "gpu")
DEFAULT_BATCH_SIZE = 32
INPUT_SHAPE = (3, IMAGE_SIZE, IMAGE_SIZE)
WEIGHT_SUFFIXES = {".pth": "torch", ".pt": "torch", ".pdparams": "paddle", ".onnx": "onnx"}


# ----------------------------------------------------------------------------------------------- weights
@dataclass
class ModelSource:
    """A user's weights file, read safely, with its architecture; converted lazily per backend."""

    path: Path
    kind: str  # "torch", "paddle" or "onnx"
    arch: str | None  # registry name; None for an .onnx file without --arch
    num_features: int
    sha256: str
    torch_arrays: Any = None  # InsightFace-named numpy arrays
    paddle_weights: PaddleWeights | None = None

    def torch_state(self) -> Any:
        """InsightFace-named arrays (converted from Paddle names if the file is a ``.pdparams``)."""
        if self.torch_arrays is None:
            from converters.mapping import paddle_to_torch

            self.torch_arrays = paddle_to_torch(self.paddle_weights, self.arch, self.num_features, self.path)
        return self.torch_arrays

    def paddle_state(self) -> PaddleWeights:
        """Paddle-named weights (converted from a PyTorch checkpoint if needed)."""
        if self.paddle_weights is None:
            from converters.mapping import torch_to_paddle

            self.paddle_weights = torch_to_paddle(self.torch_arrays, self.arch, self.num_features, self.path)
        return self.paddle_weights

    def release(self) -> None:
        """Drop the arrays once the backend holds its own copy (bounds peak memory)."""
        self.torch_arrays = self.paddle_weights = None
        gc.collect()
        release_free_memory()

    @property
    def label(self) -> str:
        return self.arch or "onnx"


def load_weights(path: str | Path, arch: str | None = None, option: str = "--arch") -> ModelSource:
    """Read ``.pth``/``.pt``, ``.pdparams`` or ``.onnx`` safely and check ``arch`` against what it holds
    (``option`` names where the user gave ``arch``, for the error message)."""
    from converters.arch import detect_arch, resolve_arch
    from converters.checkpoint import read_paddle_weights, read_torch_checkpoint, sha256_file

    path = Path(path)
    kind = WEIGHT_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UserError(path, f"unknown weights format '{path.suffix}' (expected {', '.join(WEIGHT_SUFFIXES)})")
    if not path.is_file():
        raise UserError(path, "no such file" if not path.exists() else "not a file")
    if kind == "onnx":
        return ModelSource(path, kind, arch, _onnx_features(path), sha256_file(path))
    if kind == "torch":
        ckpt = read_torch_checkpoint(path)
        info = resolve_arch(arch, detect_arch({k: v.shape for k, v in ckpt.arrays.items()}, path, "torch"), path,
                            option)
        return ModelSource(path, kind, info.name, info.num_features, sha256_file(path), torch_arrays=ckpt.arrays)
    weights = read_paddle_weights(path)
    info = resolve_arch(arch, detect_arch({k: v.shape for k, v in weights.arrays.items()}, path, "paddle"), path,
                        option)
    return ModelSource(path, kind, info.name, info.num_features, sha256_file(path), paddle_weights=weights)


def _onnx_features(path: Path) -> int:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError, ValueError, ... for a damaged file
        raise UserError(path, f"not a readable ONNX model ({type(err).__name__}: {str(err)[:160]})") from None
    inputs = [i for i in model.graph.input if i.name not in {init.name for init in model.graph.initializer}]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise UserError(path, f"expected one image input and one embedding output, found {len(inputs)} inputs "
                        f"and {len(model.graph.output)} outputs")
    dims = [d.dim_value or d.dim_param for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or tuple(dims[1:]) != INPUT_SHAPE:
        raise UserError(path, f"input '{inputs[0].name}' has shape {dims}, expected [N, 3, 112, 112]")
    out = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    return int(out[-1]) if out and out[-1] else 0


# ------------------------------------------------------------------------------------------- embedders
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
    """A Paddle Inference predictor on an exported ``model.json`` + ``model.pdiparams``."""

    name = "paddle-inference"

    def __init__(self, prefix: Path, threads: int, device: str = "cpu"):
        import paddle.inference as pi

        config = pi.Config(str(prefix) + ".json", str(prefix) + ".pdiparams")
        if device == "gpu":
            config.enable_use_gpu(256, 0)
        else:
            config.disable_gpu()
            config.set_cpu_math_library_num_threads(threads)
            config.enable_mkldnn()  # oneDNN: the fast CPU path (never FLAGS_use_mkldnn with to_static)
        config.disable_glog_info()
        self.predictor = pi.create_predictor(config)
        self.input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self.output_name = self.predictor.get_output_names()[0]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.input.reshape(list(batch.shape))
        self.input.copy_from_cpu(np.ascontiguousarray(batch, dtype=np.float32))
        self.predictor.run()
        return self.predictor.get_output_handle(self.output_name).copy_to_cpu()


class TorchEmbedder(Embedder):
    """The PyTorch reference model (``torch_reference``) in eval mode."""

    name = "torch"

    def __init__(self, model: Any, device: str = "cpu", threads: int | None = None):
        import torch

        if threads:  # torch may have been imported after Paddle set OMP_NUM_THREADS=1
            torch.set_num_threads(threads)
        self.device = "cuda" if device == "gpu" else "cpu"
        self.model = model.to(self.device).eval()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()


class OnnxEmbedder(Embedder):
    """onnxruntime on an ``.onnx`` model whose single input takes normalised ``[N, 3, 112, 112]``."""

    name = "onnx"

    def __init__(self, path: Path, threads: int, device: str = "cpu"):
        import onnxruntime as ort

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


# ------------------------------------------------------------------------------------ export and cache
def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where exported models are cached: ``cache_dir``, or a private folder under the system temp dir."""
    from converters.outputs import output_error

    root = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / f"arcface-bridge-{os.getuid()}"
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(root, err) from None
    if cache_dir is None and (root.stat().st_uid != os.getuid() or root.stat().st_mode & 0o022):
        raise UserError(root, "cache folder is writable by other users; pass --cache-dir")
    return root


def _cached(folder: Path, files: tuple[str, ...], build) -> Path:
    """``folder`` holding ``files``, built once by ``build(tmp_folder)`` and renamed into place."""
    from converters.outputs import output_error

    if all((folder / f).is_file() for f in files):
        return folder
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
        build(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first
            if not all((folder / f).is_file() for f in files):
                raise
    except OSError as err:  # a read-only or full cache folder: one line naming it
        raise output_error(folder, err) from None
    finally:
        if tmp is not None and tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def export_paddle_inference(source: ModelSource, cache_dir: str | Path | None = None) -> Path:
    """``paddle.jit.save`` the Paddle model once per weights file; returns the prefix (``<dir>/model``)."""
    import paddle

    from converters.models import paddle_model

    folder = cache_root(cache_dir) / f"{source.sha256[:32]}-{source.arch}-{source.num_features}-paddle{paddle.__version__}"

    def build(tmp: Path) -> None:
        log.info("exporting %s for Paddle Inference to %s", source.path, folder)
        model = paddle_model(source.arch, source.paddle_state(), source.num_features)
        spec = [paddle.static.InputSpec([None, *INPUT_SHAPE], "float32", "x")]
        paddle.jit.save(model, str(tmp / "model"), input_spec=spec)
        _check_export(tmp, folder, sum(int(np.prod(v.shape)) * 4 for v in model.state_dict().values()))

    return _cached(folder, ("model.json", "model.pdiparams"), build) / "model"


def _check_export(tmp: Path, folder: Path, data_bytes: int) -> None:
    """Refuse an incomplete ``paddle.jit.save``: it ignores failed writes (a full disk leaves a truncated
    ``model.json`` and parameters behind and no error), and a cached broken export would fail every run."""
    import json

    try:
        json.loads((tmp / "model.json").read_text())
        complete = (tmp / "model.pdiparams").stat().st_size >= data_bytes
    except (OSError, ValueError):
        complete = False
    if not complete:
        raise UserError(folder, "cannot write: the exported model is incomplete (no space left on the device?)")


def export_onnx(arrays: Any, arch: str, num_features: int, path: str | Path) -> Path:
    """Export the PyTorch reference as InsightFace's ``torch2onnx.py``: opset 11, input ``data``, dynamic batch."""
    import onnx
    import torch

    from converters.models import torch_model

    model = torch_model(arch, arrays, num_features)
    dummy = torch.from_numpy(normalize(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)))
    torch.onnx.export(model, dummy, str(path), opset_version=11, input_names=["data"],
                      keep_initializers_as_inputs=False, dynamo=False)
    graph = onnx.load(str(path))
    graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "None"  # dynamic batch, as InsightFace
    onnx.save(graph, str(path))
    return Path(path)


def cached_onnx(source: ModelSource, cache_dir: str | Path | None = None) -> Path:
    """The ``.onnx`` export of a ``.pth``/``.pdparams`` source, made once per weights file."""
    import torch

    folder = cache_root(cache_dir) / f"{source.sha256[:32]}-{source.arch}-{source.num_features}-torch{torch.__version__}"

    def build(tmp: Path) -> None:
        log.info("exporting %s to ONNX in %s", source.path, folder)
        export_onnx(source.torch_state(), source.arch, source.num_features, tmp / "model.onnx")

    return _cached(folder, ("model.onnx",), build) / "model.onnx"


def make_embedder(source: ModelSource, backend: str, threads: int, device: str = "cpu",
                  cache_dir: str | Path | None = None) -> Embedder:
    """Build ``backend`` for ``source`` (``threads`` CPU threads; ``device`` cpu or gpu)."""
    if backend not in BACKENDS:
        raise UserError(None, f"unknown backend '{backend}' (known: {', '.join(BACKENDS)})")
    if device not in DEVICES:
        raise UserError(None, f"unknown device '{device}' (known: {', '.join(DEVICES)})")
    if source.kind == "onnx" and backend != "onnx":
        raise UserError(source.path, f"an .onnx model runs only with --backend onnx, not {backend}")
    if backend == "onnx":
        path = source.path if source.kind == "onnx" else cached_onnx(source, cache_dir)
        return OnnxEmbedder(path, threads, device)
    if backend == "torch":
        from converters.models import torch_model

        return TorchEmbedder(torch_model(source.arch, source.torch_state(), source.num_features), device, threads)
    import paddle

    if backend == "paddle":
        from converters.models import paddle_model

        paddle.set_device("gpu" if device == "gpu" else "cpu")
        return PaddleEmbedder(paddle_model(source.arch, source.paddle_state(), source.num_features))
    return PaddleInferenceEmbedder(export_paddle_inference(source, cache_dir), threads, device)


# ---------------------------------------------------------------------------------------------- packs
def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    A forward pass frees hundreds of MB of activations that glibc would otherwise keep in its arenas;
    trimming after each batch lowered the steady RSS of r50 + Paddle Inference by about 160 MB.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, looked up once (None where there is no glibc)."""
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL("libc.so.6").malloc_trim
    return None


@dataclass
class PackEmbeddings:
    """Raw embeddings of a pack: ``[2P, D]`` float32 of the images and of their mirror images."""

    original: np.ndarray
    flipped: np.ndarray | None
    model_seconds: float  # time inside the backend
    decode_seconds: float  # JPEG decoding and normalisation
    backend: str


def embed_pack(pack: BinPack, embedder: Embedder, batch_size: int = DEFAULT_BATCH_SIZE, flip: bool = True,
               progress: bool = True) -> PackEmbeddings:
    """Embed every image of ``pack`` (and its mirror image) decoding one batch at a time.

    Memory stays bounded by one batch of float images; results do not depend on ``batch_size`` beyond
    float round-off, since the models run in eval mode (BatchNorm uses running statistics).
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise UserError(None, f"--batch-size must be at least 1, not {batch_size}")
    original: np.ndarray | None = None
    flipped: np.ndarray | None = None
    model_s = decode_s = 0.0
    bar = tqdm(total=len(pack), desc=f"{pack.name} [{embedder.name}]", unit="img", disable=not progress,
               leave=False, dynamic_ncols=True)
    with bar:
        t0 = time.perf_counter()
        for start, images in pack.iter_batches(batch_size):
            x = normalize(images)
            x_flip = np.ascontiguousarray(x[..., ::-1]) if flip else None
            t1 = time.perf_counter()
            out = embedder(x)
            out_flip = embedder(x_flip) if flip else None
            t2 = time.perf_counter()
            if out.ndim != 2 or len(out) != len(x):
                raise UserError(None, f"the {embedder.name} model returned shape {list(out.shape)} for a batch "
                                f"of {len(x)} images (expected [{len(x)}, D])")
            if original is None:
                original = np.zeros((len(pack), out.shape[1]), dtype=np.float32)
                flipped = np.zeros_like(original) if flip else None
            original[start:start + len(out)] = out
            if flip:
                flipped[start:start + len(out)] = out_flip
            decode_s += t1 - t0
            model_s += t2 - t1
            bar.update(len(images))
            release_free_memory()
            t0 = time.perf_counter()
    return PackEmbeddings(original, flipped, model_s, decode_s, embedder.name)
