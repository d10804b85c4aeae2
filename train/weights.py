"""Backbone weights in and out of a training run: ``--init`` from converted or PyTorch weights, and the
final ``model.pdparams`` / InsightFace-compatible ``model.pt``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle

from converters.checkpoint import (
    PaddleWeights,
    write_paddle_weights,
    write_torch_state_dict,
)
from converters.errors import UserError
from converters.mapping import FORMAT_VERSION, layout, paddle_to_torch
from converters.models import load_paddle_weights
from converters.weights import read_weights


def read_init_weights(path: str | Path, network: str, embedding_size: int) -> PaddleWeights:
    """``.pdparams`` or a PyTorch ``.pth``/``.pt`` (converted on the fly), checked against the config."""
    if Path(path).suffix.lower() == ".onnx":
        raise UserError(path, "--init takes .pdparams or PyTorch .pth/.pt weights, not an ONNX model")
    source = read_weights(path, network, option="network =")
    if source.num_features != embedding_size:
        raise UserError(path, f"the checkpoint's embedding has {source.num_features} dimensions, "
                        f"the config's embedding_size is {embedding_size}")
    if source.format == "paddle":
        source.torch_state()  # the strict key and shape check of the mapping
    return source.paddle_state()


def init_backbone(backbone: paddle.nn.Layer, path: str | Path, network: str, embedding_size: int) -> None:
    load_paddle_weights(backbone, read_init_weights(path, network, embedding_size))


def backbone_arrays(backbone: paddle.nn.Layer) -> dict[str, np.ndarray]:
    return {k: np.array(v.numpy(), copy=True) for k, v in backbone.state_dict().items()}


def export_backbone(backbone: paddle.nn.Layer, output: Path, network: str, embedding_size: int,
                    iterations: int) -> tuple[Path, Path]:
    """Write ``model.pdparams`` (Paddle) and ``model.pt`` (InsightFace's PyTorch state_dict).

    ``num_batches_tracked`` is set to the number of training iterations, the count a PyTorch BatchNorm
    would have reached in the same run.
    """
    tracked = {e.torch_key: int(iterations) for e in layout(network, embedding_size) if e.paddle_key is None}
    weights = PaddleWeights(backbone_arrays(backbone), {"format": FORMAT_VERSION, "arch": network,
                                                        "num_features": embedding_size,
                                                        "num_batches_tracked": tracked})
    pdparams, pt = output / "model.pdparams", output / "model.pt"
    write_paddle_weights(pdparams, weights)
    write_torch_state_dict(pt, paddle_to_torch(weights, network, embedding_size, pdparams))
    return pdparams, pt
