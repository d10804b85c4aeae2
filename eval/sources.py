"""The model a user evaluates: a weights file read by ``converters.weights`` (``.pth``/``.pt``,
``.pdparams``), or an ``.onnx`` model checked here, converted lazily to whichever framework a backend needs."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from converters.errors import UserError
from converters.export import INPUT_SHAPE  # what every model takes: [N, 3, 112, 112] RGB in [-1, 1]
from converters.weights import FORMATS

if TYPE_CHECKING:
    from converters.checkpoint import PaddleWeights
    from converters.weights import WeightsFile

WEIGHT_SUFFIXES = {**FORMATS, ".onnx": "onnx"}


@dataclass
class ModelSource:
    """A user's model file with its architecture; ``weights`` holds the arrays until ``release``."""

    path: Path
    kind: str  # "torch", "paddle" or "onnx"
    arch: str | None  # registry name; None for an .onnx file without --arch
    num_features: int
    sha256: str
    weights: WeightsFile | None = None  # None for an .onnx file

    def torch_state(self) -> Any:
        """InsightFace-named arrays (converted from Paddle names if the file is a ``.pdparams``)."""
        return self.weights.torch_state()

    def paddle_state(self) -> PaddleWeights:
        """Paddle-named weights (converted from a PyTorch checkpoint if needed)."""
        return self.weights.paddle_state()

    @property
    def meta(self) -> dict[str, Any]:
        """This project's metadata in a ``.pdparams`` (e.g. the ``source_sha256`` it was converted from)."""
        return self.weights.meta if self.weights is not None else {}

    def release(self) -> None:
        """Drop the arrays once the backends hold their own copies (bounds peak memory)."""
        from .memory import release_free_memory

        if self.weights is not None:
            self.weights.release()
        gc.collect()
        release_free_memory()

    @property
    def label(self) -> str:
        return self.arch or "onnx"


def load_weights(path: str | Path, arch: str | None = None, option: str = "--arch") -> ModelSource:
    """Read ``.pth``/``.pt``, ``.pdparams`` or ``.onnx`` safely and check ``arch`` against what it holds
    (``option`` names where the user gave ``arch``, for the error message)."""
    from converters.checkpoint import sha256_file
    from converters.weights import read_weights

    path = Path(path)
    kind = WEIGHT_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UserError(path, f"unknown weights format '{path.suffix}' (expected {', '.join(WEIGHT_SUFFIXES)})")
    if not path.is_file():
        raise UserError(path, "no such file" if not path.exists() else "not a file")
    if kind == "onnx":
        return ModelSource(path, kind, arch, _onnx_features(path), sha256_file(path))
    weights = read_weights(path, arch, option)
    return ModelSource(path, kind, weights.name, weights.num_features, weights.sha256, weights)


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
