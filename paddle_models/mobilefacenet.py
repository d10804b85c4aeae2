"""InsightFace MobileFaceNet (``mbf``, ``mbf_large``) in Paddle with the PyTorch twin's sublayer names."""

from __future__ import annotations

import math
from typing import Sequence

import paddle
from paddle import nn

from .layers import amp_enabled, batch_norm1d, batch_norm2d, conv2d, normal_attr, prelu


class ConvBlock(nn.Layer):
    def __init__(self, cin: int, cout: int, kernel=1, stride=1, padding=0, groups: int = 1):
        super().__init__()
        self.layers = nn.Sequential(conv2d(cin, cout, kernel, stride, padding, groups),
                                    batch_norm2d(cout), prelu(cout))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.layers(x)


class LinearBlock(nn.Layer):
    def __init__(self, cin: int, cout: int, kernel=1, stride=1, padding=0, groups: int = 1):
        super().__init__()
        self.layers = nn.Sequential(conv2d(cin, cout, kernel, stride, padding, groups), batch_norm2d(cout))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.layers(x)


class DepthWise(nn.Layer):
    def __init__(self, cin: int, cout: int, residual: bool = False, kernel=3, stride=2, padding=1, groups=1):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(cin, groups, 1, 1, 0),
            ConvBlock(groups, groups, kernel, stride, padding, groups=groups),
            LinearBlock(groups, cout, 1, 1, 0),
        )

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Layer):
    def __init__(self, c: int, num_block: int, groups: int, kernel=3, stride=1, padding=1):
        super().__init__()
        self.layers = nn.Sequential(
            *[DepthWise(c, c, True, kernel, stride, padding, groups) for _ in range(num_block)])

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.layers(x)


class GDC(nn.Layer):
    def __init__(self, num_features: int):
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(512, 512, kernel=7, stride=1, padding=0, groups=512),
            nn.Flatten(),
            # weight stored [in, out]; torch's kaiming fan_out of an [out, in] weight is ``out``
            nn.Linear(512, num_features, weight_attr=normal_attr(math.sqrt(2.0 / num_features)),
                      bias_attr=False),
            batch_norm1d(num_features),  # trainable scale here, unlike iresnet's ``features``
        )

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.layers(x)


class MobileFaceNet(nn.Layer):
    def __init__(self, fp16: bool = False, num_features: int = 512, blocks: Sequence[int] = (1, 4, 6, 2),
                 scale: int = 2):
        super().__init__()
        self.fp16 = fp16
        c1, c2 = 64 * scale, 128 * scale
        self.layers = nn.LayerList()
        self.layers.append(ConvBlock(3, c1, 3, 2, 1))
        if blocks[0] == 1:
            self.layers.append(ConvBlock(c1, c1, 3, 1, 1, groups=64))
        else:
            self.layers.append(Residual(c1, blocks[0], groups=128))
        self.layers.extend([
            DepthWise(c1, c1, False, 3, 2, 1, groups=128),
            Residual(c1, blocks[1], groups=128),
            DepthWise(c1, c2, False, 3, 2, 1, groups=256),
            Residual(c2, blocks[2], groups=256),
            DepthWise(c2, c2, False, 3, 2, 1, groups=512),
            Residual(c2, blocks[3], groups=256),
        ])
        self.conv_sep = ConvBlock(c2, 512, 1, 1, 0)
        self.features = GDC(num_features)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        with paddle.amp.auto_cast(enable=amp_enabled(self.fp16, x)):
            for layer in self.layers:
                x = layer(x)
        x = self.conv_sep(x.astype("float32") if self.fp16 else x)
        return self.features(x)
