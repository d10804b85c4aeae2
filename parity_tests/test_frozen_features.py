"""iresnet's ``features`` BatchNorm1d: scale frozen at 1.0, bias trained. Paddle loses the bias gradient
if the scale is frozen with stop_gradient/trainable=False; ours keeps it (learning rate 0, no decay)."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def r18_pair():
    from converters.demo import demo_state_dict
    from converters.mapping import torch_to_paddle
    from converters.models import paddle_model, torch_model

    arrays = demo_state_dict("r18", seed=4, batches=1)
    return (torch_model("r18", arrays, dtype="float64"),
            paddle_model("r18", torch_to_paddle(arrays, "r18", 512, "mem"), dtype="float64"))


def test_features_bias_gradient_and_sgd_step_equal_torch_in_float64(r18_pair):
    ref, out = r18_pair
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (3, 3, 112, 112))
    proj = rng.normal(size=(512,))
    ref.train()
    out.train()

    t_emb = ref(torch.from_numpy(x))
    (t_emb ** 2 @ torch.from_numpy(proj)).sum().backward()
    p_emb = out(paddle.to_tensor(x))
    (p_emb ** 2 @ paddle.to_tensor(proj)).sum().backward()

    assert ref.features.weight.requires_grad is False and ref.features.weight.grad is None
    assert out.features.bias.grad is not None  # the Paddle pitfall: this would be None
    assert rel(out.features.bias.grad.numpy(), ref.features.bias.grad.numpy()) <= 1e-8
    assert rel(out.fc.weight.grad.numpy().T, ref.fc.weight.grad.numpy()) <= 1e-8
    assert rel(out.conv1.weight.grad.numpy(), ref.conv1.weight.grad.numpy()) <= 1e-8

    # one SGD-momentum step with coupled weight decay in both frameworks
    t_opt = torch.optim.SGD([p for p in ref.parameters() if p.requires_grad], lr=0.1, momentum=0.9,
                            weight_decay=5e-4)
    p_opt = paddle.optimizer.Momentum(learning_rate=0.1, momentum=0.9, parameters=out.parameters(),
                                      weight_decay=5e-4)
    t_opt.step()
    p_opt.step()
    assert np.all(out.features.weight.numpy() == 1.0)  # frozen: learning rate 0 and no decay
    assert rel(out.features.bias.numpy(), ref.features.bias.detach().numpy()) <= 1e-8
    assert rel(out.layer2[0].prelu._weight.numpy(), ref.layer2[0].prelu.weight.detach().numpy()) <= 1e-8
    assert not np.allclose(ref.features.bias.detach().numpy(), 0.0)


def test_paddle_batch_norm_epsilon_is_float32_even_in_float64():
    """Why the float64 reference rounds eps: Paddle's BN attribute is a float32."""
    from converters.models import PADDLE_BN_EPS

    x = np.random.default_rng(2).normal(0, 1e-3, size=(6, 3))  # tiny variance makes eps matter
    bn = paddle.nn.BatchNorm1D(3, epsilon=1e-5)
    bn.train()
    paddle.set_default_dtype("float64")
    try:
        bn64 = paddle.nn.BatchNorm1D(3, epsilon=1e-5)
    finally:
        paddle.set_default_dtype("float32")
    bn64.train()
    y = bn64(paddle.to_tensor(x)).numpy()
    expect = (x - x.mean(0)) / np.sqrt(x.var(0) + PADDLE_BN_EPS)
    assert np.max(np.abs(y - expect)) < 1e-13
    assert np.max(np.abs(y - (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5))) > 1e-10


def test_stop_gradient_on_the_scale_would_silently_drop_the_bias_gradient():
    """The trap this design avoids, pinned so a Paddle upgrade that fixes it is noticed."""
    layer = paddle.nn.BatchNorm1D(4)
    layer.weight.stop_gradient = True
    layer.train()
    y = layer(paddle.to_tensor(np.random.default_rng(1).normal(size=(5, 4)).astype("float32")))
    (y * y).sum().backward()
    assert layer.bias.grad is None
