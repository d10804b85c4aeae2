"""InsightFace MobileFaceNet (``mbf``, ``mbf_large``) in PyTorch with InsightFace's state_dict layout.

Written from a description of InsightFace's architecture (not its code). Input ``[N, 3, 112, 112]`` float32 RGB in
[-1, 1]; output the un-normalised embedding ``[N, num_features]``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class ConvBlock(nn.Module):
    """Conv (no bias) -> BN -> per-channel PReLU, as ``layers.{0,1,2}``."""

    def __init__(self, cin: int, cout: int, kernel=1, stride=1, padding=0, groups: int = 1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(num_parameters=cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LinearBlock(nn.Module):
    """Conv (no bias) -> BN, without activation."""

    def __init__(self, cin: int, cout: int, kernel=1, stride=1, padding=0, groups: int = 1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """1x1 expand to ``groups`` channels -> kxk depthwise -> 1x1 linear projection (+ x if residual)."""

    def __init__(self, cin: int, cout: int, residual: bool = False, kernel=3, stride=2, padding=1, groups=1):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(cin, groups, 1, 1, 0),
            ConvBlock(groups, groups, kernel, stride, padding, groups=groups),
            LinearBlock(groups, cout, 1, 1, 0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Module):
    """``num_block`` residual DepthWise units at constant width."""

    def __init__(self, c: int, num_block: int, groups: int, kernel=3, stride=1, padding=1):
        super().__init__()
        self.layers = nn.Sequential(
            *[DepthWise(c, c, True, kernel, stride, padding, groups) for _ in range(num_block)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise conv head: 7x7 depthwise LinearBlock -> flatten -> Linear (no bias) -> BN1d."""

    def __init__(self, num_features: int):
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(512, 512, kernel=7, stride=1, padding=0, groups=512),
            nn.Flatten(),
            nn.Linear(512, num_features, bias=False),
            nn.BatchNorm1d(num_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MobileFaceNet(nn.Module):
    def __init__(
        self,
        fp16: bool = False,
        num_features: int = 512,
        blocks: Sequence[int] = (1, 4, 6, 2),
        scale: int = 2,
    ):
        super().__init__()
        self.fp16 = fp16
        c1, c2 = 64 * scale, 128 * scale
        self.layers = nn.ModuleList()
        self.layers.append(ConvBlock(3, c1, 3, 2, 1))
        if blocks[0] == 1:
            self.layers.append(ConvBlock(c1, c1, 3, 1, 1, groups=64))
        else:
            self.layers.append(Residual(c1, blocks[0], groups=128))
        self.layers.extend(
            [
                DepthWise(c1, c1, False, 3, 2, 1, groups=128),
                Residual(c1, blocks[1], groups=128),
                DepthWise(c1, c2, False, 3, 2, 1, groups=256),
                Residual(c2, blocks[2], groups=256),
                DepthWise(c2, c2, False, 3, 2, 1, groups=512),
                Residual(c2, blocks[3], groups=256),
            ]
        )
        self.conv_sep = ConvBlock(c2, 512, 1, 1, 0)
        self.features = GDC(num_features)
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if not m.weight.is_meta:  # nothing to initialise on the meta device (see iresnet.py)
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", enabled=self.fp16 and x.is_cuda):
            for layer in self.layers:
                x = layer(x)
        x = self.conv_sep(x.float() if self.fp16 else x)
        return self.features(x)

