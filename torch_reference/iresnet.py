"""InsightFace iresnet (ArcFace backbones r18 ... r2060) in PyTorch.

Written from a description of InsightFace's architecture (not its code) so that
``state_dict()`` has exactly InsightFace's keys, order, shapes and dtypes: a checkpoint saved by
InsightFace's ``arcface_torch`` loads here with ``strict=True`` and the other way round.

Input: ``[N, 3, 112, 112]`` float32 RGB normalised to [-1, 1] outside the network.
Output: the un-normalised embedding ``[N, num_features]``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

STAGE_WIDTHS = (64, 128, 256, 512)
FC_SCALE = 7 * 7  # spatial size of the last feature map


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus the (downsampled) input."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        # registration order is the state_dict order
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)  # the shortcut takes raw x
        out += identity  # in place, no activation after the sum (as InsightFace)
        return out


class IResNet(nn.Module):
    """ArcFace iresnet backbone with InsightFace's module names."""

    fc_scale = FC_SCALE

    def __init__(
        self,
        layers: Sequence[int],
        dropout: float = 0.0,
        num_features: int = 512,
        fp16: bool = False,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        self.fp16 = fp16
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(STAGE_WIDTHS[0], layers[0], stride=2)
        self.layer2 = self._make_layer(STAGE_WIDTHS[1], layers[1], stride=2)
        self.layer3 = self._make_layer(STAGE_WIDTHS[2], layers[2], stride=2)
        self.layer4 = self._make_layer(STAGE_WIDTHS[3], layers[3], stride=2)
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(512 * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False  # frozen at 1.0; its bias is trained

        for m in self.modules():
            # a model built on the meta device (to read its layout) has no values to initialise; skipping
            # normal_ there also avoids importing torch._dynamo, which meta normal_ does (~2.5 s)
            if isinstance(m, nn.Conv2d) and not m.weight.is_meta:
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1.0)
                nn.init.constant_(m.bias, 0.0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, IBasicBlock):
                    nn.init.constant_(m.bn2.weight, 0.0)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(planes, eps=1e-5),
        )
        layers = [IBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # InsightFace autocasts the convolutional body on CUDA only; fc and features stay float32.
        with torch.autocast("cuda", enabled=self.fp16 and x.is_cuda):
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = self.bn2(x)
            x = torch.flatten(x, 1)
            x = self.dropout(x)
        x = self.fc(x.float() if self.fp16 else x)
        return self.features(x)

