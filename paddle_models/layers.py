"""Paddle layer constructors with torch semantics, shared by the backbones.

Each helper builds a Paddle layer whose defaults match the torch layer InsightFace uses, so the model
files read like their PyTorch twins: BN momentum 0.9 (= torch 0.1) and eps 1e-5, per-channel PReLU at
0.25, bias-free convolutions.
"""

from __future__ import annotations

import math

import paddle
from paddle import nn

BN_MOMENTUM = 0.9  # paddle: running = m * running + (1 - m) * batch, i.e. torch momentum 0.1
BN_EPS = 1e-5


def normal_attr(std: float) -> paddle.ParamAttr:
    return paddle.ParamAttr(initializer=nn.initializer.Normal(0.0, std))


def conv2d(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, groups: int = 1,
           std: float | None = None) -> nn.Conv2D:
    """Bias-free Conv2D; weights N(0, std) when ``std`` is given, else Kaiming-normal fan_out (relu)."""
    if std is None:
        std = math.sqrt(2.0 / (cout * kernel * kernel))  # torch kaiming_normal_(mode="fan_out")
    return nn.Conv2D(cin, cout, kernel, stride=stride, padding=padding, groups=groups,
                     weight_attr=normal_attr(std), bias_attr=False)


def batch_norm2d(c: int) -> nn.BatchNorm2D:
    return nn.BatchNorm2D(c, momentum=BN_MOMENTUM, epsilon=BN_EPS,
                          weight_attr=paddle.ParamAttr(initializer=nn.initializer.Constant(1.0)),
                          bias_attr=paddle.ParamAttr(initializer=nn.initializer.Constant(0.0)))


def batch_norm1d(c: int, frozen_weight: bool = False) -> nn.BatchNorm1D:
    """BatchNorm1D; ``frozen_weight`` keeps the scale at 1.0 while the bias still trains.

    Paddle drops the *bias* gradient too when the weight has ``stop_gradient=True`` (or trainable=False,
    or weight_attr=False), so the weight stays in autograd with learning rate 0 and no weight decay.
    """
    weight_attr = paddle.ParamAttr(initializer=nn.initializer.Constant(1.0))
    if frozen_weight:
        weight_attr = paddle.ParamAttr(initializer=nn.initializer.Constant(1.0), learning_rate=0.0,
                                       regularizer=paddle.regularizer.L2Decay(0.0))
    return nn.BatchNorm1D(c, momentum=BN_MOMENTUM, epsilon=BN_EPS, weight_attr=weight_attr,
                          bias_attr=paddle.ParamAttr(initializer=nn.initializer.Constant(0.0)))


def prelu(c: int) -> nn.PReLU:
    return nn.PReLU(num_parameters=c, init=0.25)


def amp_enabled(fp16: bool, x: paddle.Tensor) -> bool:
    """Autocast only where Paddle has float16 kernels (not on CPU), as InsightFace autocasts on CUDA only.

    A value traced by ``paddle.jit.save`` has no device (``x.place`` is None): the traced graph stays float32.
    """
    if not fp16:
        return False
    place = x.place
    return place is not None and not place.is_cpu_place()
