"""PyTorch twins of everything that has a Paddle version, with InsightFace's exact state_dict layout.

``get_model(name, **kw)`` builds any architecture of the registry (``architectures``), as InsightFace's own
factory does, and mirrors ``paddle_models.get_model``. Importing this package does not import torch;
building a model does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from architectures import spec_of

if TYPE_CHECKING:
    from torch import nn


def _iresnet(spec: Any, num_features: int, dropout: float, fp16: bool) -> nn.Module:
    from .iresnet import IResNet

    return IResNet(spec.blocks, dropout=dropout, num_features=num_features, fp16=fp16)


def _mobilefacenet(spec: Any, num_features: int, dropout: float, fp16: bool) -> nn.Module:
    from .mobilefacenet import MobileFaceNet

    # MobileFaceNet has no dropout, as in InsightFace
    return MobileFaceNet(fp16=fp16, num_features=num_features, blocks=spec.blocks, scale=spec.scale)


def _vit(spec: Any, num_features: int, dropout: float, fp16: bool) -> nn.Module:
    from .vit import vit_from_spec

    # InsightFace's ViT takes neither dropout nor fp16: it autocasts on CUDA by itself
    return vit_from_spec(spec, num_features)


# family -> builder(spec, num_features, dropout, fp16); a new family adds its builder here
BUILDERS: dict[str, Callable[..., Any]] = {"iresnet": _iresnet, "mobilefacenet": _mobilefacenet, "vit": _vit}


def get_model(name: str, dropout: float = 0.0, fp16: bool = False, num_features: int = 512) -> nn.Module:
    """Build a registered InsightFace backbone by name (``r50``, ``mbf``, ``vit_t``, ...)."""
    spec = spec_of(name)
    return BUILDERS[spec.family](spec, num_features, dropout, fp16)


__all__ = ["BUILDERS", "get_model"]
