"""Paddle ArcFace backbones with InsightFace's structure and names, built by registry name (``get_model``)."""

from __future__ import annotations

from typing import Any, Callable

from paddle import nn

from architectures import spec_of

from .iresnet import IResNet
from .mobilefacenet import MobileFaceNet
from .vit import vit_from_spec


def _iresnet(spec: Any, num_features: int, dropout: float, fp16: bool) -> nn.Layer:
    return IResNet(spec.blocks, dropout=dropout, num_features=num_features, fp16=fp16)


def _mobilefacenet(spec: Any, num_features: int, dropout: float, fp16: bool) -> nn.Layer:
    return MobileFaceNet(fp16=fp16, num_features=num_features, blocks=spec.blocks, scale=spec.scale)


def _vit(spec: Any, num_features: int, dropout: float, fp16: bool) -> nn.Layer:
    return vit_from_spec(spec, num_features)


# family -> builder(spec, num_features, dropout, fp16); a new family adds its builder here
BUILDERS: dict[str, Callable[..., nn.Layer]] = {"iresnet": _iresnet, "mobilefacenet": _mobilefacenet, "vit": _vit}


def get_model(name: str, dropout: float = 0.0, fp16: bool = False, num_features: int = 512) -> nn.Layer:
    """Build a registered backbone by name (``r50``, ``mbf``, ``vit_t``, ...), as InsightFace does."""
    spec = spec_of(name)
    return BUILDERS[spec.family](spec, num_features, dropout, fp16)


__all__ = ["BUILDERS", "IResNet", "MobileFaceNet", "get_model"]
