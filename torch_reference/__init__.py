"""PyTorch twins of everything that has a Paddle version, with InsightFace's exact state_dict layout.

``get_model(name, **kw)`` mirrors ``paddle_models.get_model`` and InsightFace's own factory. Importing this
package does not import torch (the registry is plain data in ``specs``); building a model does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .specs import IRESNET_LAYERS, MBF_VARIANTS, MODEL_NAMES

if TYPE_CHECKING:
    from torch import nn


def get_model(name: str, dropout: float = 0.0, fp16: bool = False, num_features: int = 512) -> nn.Module:
    """Build an InsightFace backbone by registry name (``r18 r34 r50 r100 r200 mbf mbf_large``)."""
    if name in IRESNET_LAYERS:
        from .iresnet import IResNet

        return IResNet(IRESNET_LAYERS[name], dropout=dropout, num_features=num_features, fp16=fp16)
    if name in MBF_VARIANTS:
        from .mobilefacenet import MobileFaceNet

        blocks, scale = MBF_VARIANTS[name]  # MobileFaceNet has no dropout, as in InsightFace
        return MobileFaceNet(fp16=fp16, num_features=num_features, blocks=blocks, scale=scale)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")


def __getattr__(name: str) -> Any:  # the model classes, imported (with torch) on first use
    if name == "IResNet":
        from .iresnet import IResNet

        return IResNet
    if name == "MobileFaceNet":
        from .mobilefacenet import MobileFaceNet

        return MobileFaceNet
    raise AttributeError(name)


__all__ = ["IRESNET_LAYERS", "MBF_VARIANTS", "MODEL_NAMES", "IResNet", "MobileFaceNet", "get_model"]
