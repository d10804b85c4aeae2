"""InsightFace iresnet (r18 ... r2060) in Paddle with the same sublayer names as PyTorch.

Parameter names differ from torch only where Paddle's layers name them differently (BN ``_mean`` /
``_variance``, PReLU ``_weight``) and the ``fc`` weight is stored ``[in, out]``; converters/ maps them.
Input ``[N, 3, 112, 112]`` float32 RGB in [-1, 1]; output the un-normalised embedding.
"""

from __future__ import annotations

import math
from typing import Sequence

import paddle
from paddle import nn

from .layers import amp_enabled, batch_norm1d, batch_norm2d, conv2d, prelu

STAGE_WIDTHS = (64, 128, 256, 512)
FC_SCALE = 7 * 7
CONV_STD = 0.1  # InsightFace initialises every iresnet conv with N(0, 0.1)


class IBasicBlock(nn.Layer):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Layer | None = None):
        super().__init__()
        self.bn1 = batch_norm2d(inplanes)
        self.conv1 = conv2d(inplanes, planes, 3, 1, 1, std=CONV_STD)
        self.bn2 = batch_norm2d(planes)
        self.prelu = prelu(planes)
        self.conv2 = conv2d(planes, planes, 3, stride, 1, std=CONV_STD)
        self.bn3 = batch_norm2d(planes)
        self.downsample = downsample

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Layer):
    fc_scale = FC_SCALE

    def __init__(self, layers: Sequence[int], dropout: float = 0.0, num_features: int = 512,
                 fp16: bool = False, zero_init_residual: bool = False):
        super().__init__()
        self.fp16 = fp16
        self.inplanes = 64
        self.conv1 = conv2d(3, 64, 3, 1, 1, std=CONV_STD)
        self.bn1 = batch_norm2d(64)
        self.prelu = prelu(64)
        self.layer1 = self._make_layer(STAGE_WIDTHS[0], layers[0])
        self.layer2 = self._make_layer(STAGE_WIDTHS[1], layers[1])
        self.layer3 = self._make_layer(STAGE_WIDTHS[2], layers[2])
        self.layer4 = self._make_layer(STAGE_WIDTHS[3], layers[3])
        self.bn2 = batch_norm2d(512)
        self.dropout = nn.Dropout(p=dropout)
        fan_in = 512 * self.fc_scale
        bound = 1.0 / math.sqrt(fan_in)  # torch's default Linear init, which InsightFace keeps
        uniform = paddle.ParamAttr(initializer=nn.initializer.Uniform(-bound, bound))
        self.fc = nn.Linear(fan_in, num_features, weight_attr=uniform,
                            bias_attr=paddle.ParamAttr(initializer=nn.initializer.Uniform(-bound, bound)))
        self.features = batch_norm1d(num_features, frozen_weight=True)
        if zero_init_residual:
            for sub in self.sublayers():
                if isinstance(sub, IBasicBlock):
                    sub.bn2.weight.set_value(paddle.zeros_like(sub.bn2.weight))

    def _make_layer(self, planes: int, blocks: int, stride: int = 2) -> nn.Sequential:
        downsample = nn.Sequential(conv2d(self.inplanes, planes, 1, stride, 0, std=CONV_STD),
                                   batch_norm2d(planes))
        layers = [IBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        with paddle.amp.auto_cast(enable=amp_enabled(self.fp16, x)):
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = self.bn2(x)
            x = paddle.flatten(x, 1)
            x = self.dropout(x)
        x = self.fc(x.astype("float32") if self.fp16 else x)
        return self.features(x)
