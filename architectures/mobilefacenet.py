"""The MobileFaceNet family (mbf, mbf_large): blocks per stage and width scale, and their state_dict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._layout import Param, batch_norm, conv2d, linear, prelu


def _conv_block(p: str, cin: int, cout: int, kernel: int = 1, groups: int = 1) -> list[Param]:
    """Conv (no bias) -> BN -> PReLU as ``p.layers.{0,1,2}``."""
    return conv2d(f"{p}.layers.0", cin, cout, kernel, groups) + batch_norm(f"{p}.layers.1", cout) + prelu(
        f"{p}.layers.2", cout)


def _linear_block(p: str, cin: int, cout: int, kernel: int = 1, groups: int = 1) -> list[Param]:
    return conv2d(f"{p}.layers.0", cin, cout, kernel, groups) + batch_norm(f"{p}.layers.1", cout)


def _depthwise(p: str, cin: int, cout: int, groups: int) -> list[Param]:
    """1x1 expand to ``groups`` -> 3x3 depthwise -> 1x1 projection."""
    return (_conv_block(f"{p}.layers.0", cin, groups) + _conv_block(f"{p}.layers.1", groups, groups, 3, groups)
            + _linear_block(f"{p}.layers.2", groups, cout))


def _residual(p: str, c: int, count: int, groups: int) -> list[Param]:
    return [e for i in range(count) for e in _depthwise(f"{p}.layers.{i}", c, c, groups)]


@dataclass(frozen=True)
class MobileFaceNetSpec:
    """InsightFace's MobileFaceNet: residual units per stage (``blocks``) and channel multiplier ``scale``."""

    blocks: tuple[int, int, int, int]
    scale: int

    family: ClassVar[str] = "mobilefacenet"
    embedding_key: ClassVar[str] = "features.layers.3.weight"

    def __post_init__(self) -> None:
        if len(self.blocks) != 4 or any(not isinstance(b, int) or b < 1 for b in self.blocks):
            raise ValueError(f"MobileFaceNet blocks must be four positive ints, got {self.blocks!r}")
        if not isinstance(self.scale, int) or self.scale < 1:
            raise ValueError(f"MobileFaceNet scale must be a positive int, got {self.scale!r}")

    def describe(self) -> str:
        return f"MobileFaceNet blocks {'-'.join(map(str, self.blocks))} scale {self.scale}"

    def weights_signature(self) -> tuple:
        return (self.family, self.blocks, self.scale)

    def layout(self, num_features: int) -> list[Param]:
        c1, c2 = 64 * self.scale, 128 * self.scale
        out = _conv_block("layers.0", 3, c1, 3)
        if self.blocks[0] == 1:
            out += _conv_block("layers.1", c1, c1, 3, groups=64)
        else:
            out += _residual("layers.1", c1, self.blocks[0], 128)
        out += _depthwise("layers.2", c1, c1, 128) + _residual("layers.3", c1, self.blocks[1], 128)
        out += _depthwise("layers.4", c1, c2, 256) + _residual("layers.5", c2, self.blocks[2], 256)
        out += _depthwise("layers.6", c2, c2, 512) + _residual("layers.7", c2, self.blocks[3], 256)
        out += _conv_block("conv_sep", c2, 512)
        out += _linear_block("features.layers.0", 512, 512, 7, groups=512)
        out += linear("features.layers.2", 512, num_features, bias=False)
        return out + batch_norm("features.layers.3", num_features, dims=1)
