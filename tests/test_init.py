"""InsightFace's initialisation in both frameworks: N(0, 0.1) iresnet convs, torch-default fc, Kaiming
fan_out MobileFaceNet, BN (1, 0), PReLU 0.25, and the frozen iresnet features.weight."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import paddle_models
import torch_reference


def torch_params(arch):
    torch.manual_seed(0)
    return {k: v.detach().numpy() for k, v in torch_reference.get_model(arch).state_dict().items()}


def paddle_params(arch):
    import paddle

    paddle.seed(0)
    state = {k: v.numpy() for k, v in paddle_models.get_model(arch).state_dict().items()}
    state["fc.weight"] = state["fc.weight"].T if "fc.weight" in state else None
    return state


@pytest.mark.parametrize("params", [torch_params, paddle_params], ids=["torch", "paddle"])
def test_iresnet_init(params):
    p = params("r18")
    assert abs(p["layer2.1.conv1.weight"].std() - 0.1) < 0.002
    assert abs(p["conv1.weight"].std() - 0.1) < 0.02
    bound = 1 / math.sqrt(25088)
    assert np.abs(p["fc.weight"]).max() <= bound and np.abs(p["fc.weight"]).max() > 0.99 * bound
    assert abs(p["fc.weight"].std() - bound / math.sqrt(3)) < 1e-4  # uniform(-b, b)
    assert np.all(p["layer1.0.bn2.weight"] == 1) and np.all(p["layer1.0.bn2.bias"] == 0)
    prelu = p["layer3.1.prelu.weight"] if "layer3.1.prelu.weight" in p else p["layer3.1.prelu._weight"]
    assert np.all(prelu == np.float32(0.25))
    assert np.all(p["features.weight"] == 1) and np.all(p["features.bias"] == 0)


@pytest.mark.parametrize("params", [torch_params, paddle_params], ids=["torch", "paddle"])
def test_mobilefacenet_kaiming_fan_out_init(params):
    p = params("mbf")
    w = p["layers.3.layers.0.layers.0.layers.0.weight"]  # 1x1 conv 128 -> 128: fan_out = 128
    assert abs(w.std() - math.sqrt(2 / 128)) < 0.003
    dw = p["layers.2.layers.1.layers.0.weight"]  # 3x3 depthwise, 128 out: fan_out = 128 * 9
    assert abs(dw.std() - math.sqrt(2 / (128 * 9))) < 0.002
    head = p["features.layers.2.weight"]  # Linear 512 -> 512: fan_out = 512
    assert abs(head.std() - math.sqrt(2 / 512)) < 0.002


def test_frozen_features_weight_and_dropout_switch():
    model = torch_reference.get_model("r18", dropout=0.4)
    assert model.features.weight.requires_grad is False and model.features.bias.requires_grad
    assert model.dropout.p == 0.4 and paddle_models.get_model("r18", dropout=0.4).dropout.p == 0.4
    layer = paddle_models.get_model("r18").features.weight
    assert layer.optimize_attr["learning_rate"] == 0.0 and not layer.stop_gradient
    assert torch_reference.get_model("r18", fp16=True).fp16 and paddle_models.get_model("mbf", fp16=True).fp16
