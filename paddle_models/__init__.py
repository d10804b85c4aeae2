"""Paddle ArcFace backbones with InsightFace's structure and names, and the registry ``get_model``."""

from __future__ import annotations

from paddle import nn

from .iresnet import IRESNET_LAYERS, IResNet
from .mobilefacenet import MBF_VARIANTS, MobileFaceNet

MODEL_NAMES: tuple[str, ...] = (*IRESNET_LAYERS, *MBF_VARIANTS)


def get_model(name: str, dropout: float = 0.0, fp16: bool = False, num_features: int = 512) -> nn.Layer:
    """Build a backbone by registry name (``r18 r34 r50 r100 r200 mbf mbf_large``), as InsightFace does."""
    if name in IRESNET_LAYERS:
        return IResNet(IRESNET_LAYERS[name], dropout=dropout, num_features=num_features, fp16=fp16)
    if name in MBF_VARIANTS:
        blocks, scale = MBF_VARIANTS[name]
        return MobileFaceNet(fp16=fp16, num_features=num_features, blocks=blocks, scale=scale)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")


__all__ = ["MODEL_NAMES", "IResNet", "MobileFaceNet", "get_model"]
