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
                dtype: str = "float32", share: bool = False) -> torch.nn.Module:
    """The PyTorch reference ``arch`` in eval mode with ``arrays`` loaded (``strict=True``).

    With ``dtype="float64"`` every BatchNorm and LayerNorm uses its epsilon rounded to float32, as Paddle does.
    With ``share=True`` the parameters are the caller's (writable, contiguous) float32 arrays, not copies: for
    an eval-mode model that is only run forward, without a second copy of every weight.
    """
    import torch

    from torch_reference import get_model

    with torch.device("meta"):
        model = get_model(arch, num_features=num_features)
    # copies, so that training-mode passes never write into the caller's arrays; assign=True keeps
    # each parameter's requires_grad (features.weight stays frozen)
    state = {k: torch.from_numpy(v) if share and v.flags.writeable and v.flags.c_contiguous else torch.tensor(v)
             for k, v in arrays.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model = model.to(getattr(torch, dtype))
    if dtype == "float64":
        for module in model.modules():
            if isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm)):
                module.eps = float(np.float32(module.eps))
    return model.eval()


def paddle_model(arch: str, weights: PaddleWeights, num_features: int = 512,
                 dtype: str = "float32", release: bool = False) -> paddle.nn.Layer:
    """The Paddle ``arch`` in eval mode with ``weights`` loaded; both lists of set_state_dict must be empty.

    The parameters are created uninitialised (``paddle.LazyGuard``) and allocated when their weights are
    set, not first filled at random. With ``release=True`` each array is removed from ``weights.arrays`` once
    the model holds it, so that the arrays and the model never both hold every weight.
    """
    import paddle

    from paddle_models import get_model

    previous = paddle.get_default_dtype()
    paddle.set_default_dtype(dtype)
    try:
        with paddle.LazyGuard():
            model = get_model(arch, num_features=num_features)
    finally:
        paddle.set_default_dtype(previous)
    load_paddle_weights(model, weights, release=release)
    uninitialised = [name for name, p in model.named_parameters() if not p._is_initialized()]
    if uninitialised:
        raise StrictLoadError(f"not loaded: {uninitialised[:3]}")
    model.eval()
    return model


def load_paddle_weights(model: paddle.nn.Layer, weights: PaddleWeights, release: bool = False) -> None:
    """``set_state_dict`` that fails unless every entry is taken (Paddle only warns or stays silent).

    ``release=True`` loads one entry at a time and removes it from ``weights.arrays`` when it is set."""
    dtype = str(model.parameters()[0].dtype).replace("paddle.", "")
    if release:
        targets = model.state_dict()
        missing = [k for k in targets if k not in weights.arrays]
        unexpected = [k for k in weights.arrays if k not in targets]
        wrong = [k for k, t in targets.items() if k in weights.arrays and list(t.shape) != list(weights.arrays[k].shape)]
        if missing or unexpected or wrong:
            raise StrictLoadError(f"missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]}")
        for key, target in targets.items():
            target.set_value(weights.arrays.pop(key).astype(dtype, copy=False))
        return
    state = {k: v.astype(dtype, copy=False) for k, v in weights.arrays.items()}
    missing, unexpected = model.set_state_dict(state)
    if missing or unexpected:
        raise StrictLoadError(f"missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}")
