"""Build a PyTorch reference or Paddle backbone holding given weights, strictly."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np

from .checkpoint import PaddleWeights

if TYPE_CHECKING:
    import paddle
    import torch


class StrictLoadError(RuntimeError):
    """A model did not take every entry (a bug in the mapping, not a user error)."""


# Paddle's batch_norm and layer_norm take epsilon as a float32 attribute, also in float64: 1e-5 becomes
# 9.99999974737875e-06. Float32 torch rounds it the same way; a float64 torch reference must use the
# rounded value too, or BN outputs differ by ~1e-11 relative and train-mode gradients by ~1e-8 (measured).
PADDLE_BN_EPS = float(np.float32(1e-5))


def torch_model(arch: str, arrays: Mapping[str, np.ndarray], num_features: int = 512,
                dtype: str = "float32") -> torch.nn.Module:
    """The PyTorch reference ``arch`` in eval mode with ``arrays`` loaded (``strict=True``).

    With ``dtype="float64"`` every BatchNorm and LayerNorm uses its epsilon rounded to float32, as Paddle does.
    """
    import torch

    from torch_reference import get_model

    with torch.device("meta"):
        model = get_model(arch, num_features=num_features)
    # copies, so that training-mode passes never write into the caller's arrays; assign=True keeps
    # each parameter's requires_grad (features.weight stays frozen)
    state = {k: torch.tensor(v) for k, v in arrays.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model = model.to(getattr(torch, dtype))
    if dtype == "float64":
        for module in model.modules():
            if isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm)):
                module.eps = float(np.float32(module.eps))
    return model.eval()


def paddle_model(arch: str, weights: PaddleWeights, num_features: int = 512,
                 dtype: str = "float32") -> paddle.nn.Layer:
    """The Paddle ``arch`` in eval mode with ``weights`` loaded; both lists of set_state_dict must be empty."""
    import paddle

    from paddle_models import get_model

    previous = paddle.get_default_dtype()
    paddle.set_default_dtype(dtype)
    try:
        model = get_model(arch, num_features=num_features)
    finally:
        paddle.set_default_dtype(previous)
    load_paddle_weights(model, weights)
    model.eval()
    return model


def load_paddle_weights(model: paddle.nn.Layer, weights: PaddleWeights) -> None:
    """``set_state_dict`` that fails unless every entry is taken (Paddle only warns or stays silent)."""
    dtype = str(model.parameters()[0].dtype).replace("paddle.", "")
    state = {k: v.astype(dtype, copy=False) for k, v in weights.arrays.items()}
    missing, unexpected = model.set_state_dict(state)
    if missing or unexpected:
        raise StrictLoadError(f"missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}")
