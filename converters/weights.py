"""The one reader of a user's backbone weights file: every entry point that takes weights reads them here.

    weights = read_weights(path, arch=None)    # .pth/.pt or .pdparams
    weights.arch                               # ArchInfo: registry name, embedding size, same-weight names
    weights.torch_state(), weights.paddle_state()

The suffix picks the format (``FORMATS``; ``format=`` overrides it for a file named otherwise). The format's
reader (checkpoint.py: ``torch.load(weights_only=True)`` for PyTorch, the restricted unpickler for Paddle, never
``pickle.load`` or ``paddle.load``) returns the arrays in the naming of the framework that wrote them; the
registered architecture is then recognised from their keys and shapes (``converters.arch``) and checked against
the one the user named, and the arrays are converted to the other framework's naming when first asked for.
Another format (an ``.onnx`` file's initialisers, say) is one more ``FORMATS`` entry and one more reader that
returns arrays in PyTorch's or Paddle's naming; detection and conversion stay as they are.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .arch import ArchInfo, detect_arch, resolve_arch
from .checkpoint import (
    PaddleWeights,
    TorchCheckpoint,
    read_paddle_weights,
    read_torch_checkpoint,
    sha256_file,
)
from .errors import UserError

# suffix -> format; a format's name is also the naming (converters.arch layout) its arrays are read in
FORMATS = {".pth": "torch", ".pt": "torch", ".pdparams": "paddle"}


@dataclass
class WeightsFile:
    """A backbone weights file read safely, with the architecture it holds."""

    path: Path
    format: str  # "torch" (InsightFace's state_dict) or "paddle" (Paddle names and this project's metadata)
    arch: ArchInfo
    torch_arrays: OrderedDict[str, np.ndarray] | None = None  # InsightFace names
    paddle_weights: PaddleWeights | None = None  # Paddle names
    checkpoint: TorchCheckpoint | None = None  # how a PyTorch file stored its state_dict (wrapper, prefix, dtypes)

    @property
    def name(self) -> str:
        return self.arch.name

    @property
    def num_features(self) -> int:
        return self.arch.num_features

    @property
    def meta(self) -> dict[str, Any]:
        """The metadata a ``.pdparams`` written by this project carries (checked), ``{}`` for a PyTorch file."""
        return self.paddle_weights.meta if self.format == "paddle" and self.paddle_weights is not None else {}

    @functools.cached_property
    def sha256(self) -> str:
        return sha256_file(self.path)

    def torch_state(self) -> OrderedDict[str, np.ndarray]:
        """InsightFace-named arrays (mapped from Paddle's names, with the strict key and shape check, for a
        ``.pdparams``)."""
        if self.torch_arrays is None:
            from .mapping import paddle_to_torch

            self.torch_arrays = paddle_to_torch(self.paddle_weights, self.name, self.num_features, self.path)
        return self.torch_arrays

    def paddle_state(self) -> PaddleWeights:
        """Paddle-named weights (mapped from a PyTorch checkpoint if needed)."""
        if self.paddle_weights is None:
            from .mapping import torch_to_paddle

            self.paddle_weights = torch_to_paddle(self.torch_arrays, self.name, self.num_features, self.path)
        return self.paddle_weights

    def release(self) -> None:
        """Drop the arrays (a model built from them holds its own copy)."""
        self.torch_arrays = self.paddle_weights = self.checkpoint = None


def read_weights(path: str | Path, arch: str | None = None, option: str = "--arch",
                 format: str | None = None) -> WeightsFile:
    """Read ``path`` safely and recognise its architecture; ``arch`` (given by the user as ``option``, named
    in the error) must be it or a name with the same weights. ``format`` ("torch" or "paddle") reads a file
    whose suffix is not in ``FORMATS``. Every problem is a one-line ``UserError`` naming the file."""
    path = Path(path)
    kind = format or FORMATS.get(path.suffix.lower())
    if kind not in FORMATS.values():
        raise UserError(path, f"unknown weights format '{path.suffix}' (expected {', '.join(FORMATS)})")
    if kind == "torch":
        checkpoint = read_torch_checkpoint(path)
        arrays = checkpoint.arrays
        weights = WeightsFile(path, kind, _arch(arrays, path, kind, arch, option), torch_arrays=arrays,
                              checkpoint=checkpoint)
    else:
        paddle_weights = read_paddle_weights(path)
        weights = WeightsFile(path, kind, _arch(paddle_weights.arrays, path, kind, arch, option),
                              paddle_weights=paddle_weights)
    return weights


def _arch(arrays: dict[str, np.ndarray], path: Path, layout: str, requested: str | None, option: str) -> ArchInfo:
    detected = detect_arch({k: v.shape for k, v in arrays.items()}, path, layout)
    return resolve_arch(requested, detected, path, option)
