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


class LinearPReLU(nn.Layer):
    """A trained ``nn.PReLU`` rewritten as ``alpha * x + (1 - alpha) * relu(x)``: equal to PReLU for every
    ``x`` (``x`` when ``x > 0``, ``alpha * x`` otherwise; in float32 within one rounding of the sum), built
    from the multiply, add and relu operators only.

    This is how a backbone is exported for Paddle Inference's oneDNN bfloat16. In paddlepaddle 3.3.1 the
    bf16 placement pass runs ``prelu`` in bfloat16 but leaves its ``alpha`` weight in float32, and the
    bf16 kernel reads those float32 bytes as bfloat16: a slope of 0.25 becomes 0 and trained per-channel
    slopes become arbitrary values, so deep iresnets and MobileFaceNets return NaN embeddings. Multiply,
    add and relu take their weights through the pass's quantize operators and stay exact.
    """

    def __init__(self, prelu_layer: nn.PReLU):
        super().__init__()
        if prelu_layer._data_format != "NCHW":
            raise ValueError(f"LinearPReLU: data format {prelu_layer._data_format}, expected NCHW")
        alpha = prelu_layer._weight.detach().astype("float32").flatten()
        self.alpha = self.create_parameter(alpha.shape, dtype="float32")
        self.alpha.set_value(alpha)
        self.rest = self.create_parameter(alpha.shape, dtype="float32")
        self.rest.set_value(1.0 - alpha)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        # one slope broadcasts as it is; per-channel slopes along axis 1
        shape = [1, -1] + [1] * (x.ndim - 2) if self.alpha.shape[0] > 1 else [-1]
        return self.alpha.reshape(shape) * x + self.rest.reshape(shape) * nn.functional.relu(x)


def prelu_as_linear(model: nn.Layer) -> list[tuple[nn.Layer, str, nn.PReLU]]:
    """Replace every ``nn.PReLU`` sublayer of ``model`` by its ``LinearPReLU``, in place; returns what was
    replaced as ``(parent, name, layer)`` for ``restore_prelu``."""
    swapped = []
    for parent in list(model.sublayers(include_self=True)):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.PReLU):
                setattr(parent, name, LinearPReLU(child))
                swapped.append((parent, name, child))
    return swapped


def restore_prelu(swapped: list[tuple[nn.Layer, str, nn.PReLU]]) -> None:
    """Undo ``prelu_as_linear``."""
    for parent, name, layer in reversed(swapped):
        setattr(parent, name, layer)


def amp_enabled(fp16: bool, x: paddle.Tensor) -> bool:
    """Autocast only where Paddle has float16 kernels (not on CPU), as InsightFace autocasts on CUDA only.

    A value traced by ``paddle.jit.save`` has no device (``x.place`` is None): the traced graph stays float32.
    """
    if not fp16:
        return False
    place = x.place
    return place is not None and not place.is_cpu_place()
