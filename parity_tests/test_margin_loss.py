"""Margin losses in float64: Paddle ``train.losses`` == PyTorch twin == numpy reference (values, gradients)."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch

import torch_reference.losses as tl
import train.losses as pl
from parity_tests.workers.numpy_reference import Margin, margin_logits, rel

GATE = 1e-8
MARGINS = {  # name -> (m1, m2, m3)
    "arcface": (1.0, 0.5, 0.0),
    "cosface": (1.0, 0.0, 0.4),
    "combined": (1.0, 0.3, 0.2),
    "plain_softmax": (1.0, 0.0, 0.0),
}


def _case(seed: int = 0, n: int = 12, k: int = 9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cosine = rng.uniform(-0.95, 0.95, size=(n, k))
    labels = rng.integers(0, k, size=n)
    labels[[2, 7]] = -1  # rows whose class lives in other columns
    cosine[0, labels[0]] = -0.99  # theta + m2 > pi: no fallback, cos(theta + m2) used as is
    cosine[1, labels[1]] = 0.9  # a confident target, kept by filtering
    upstream = rng.normal(size=(n, k))
    return cosine, labels, upstream


def _paddle(loss: pl.CombinedMarginLoss, cosine, labels, upstream, label_shape=(-1,)):
    x = paddle.to_tensor(cosine, stop_gradient=False)
    out = loss(x, paddle.to_tensor(labels.reshape(label_shape)))
    out.backward(paddle.to_tensor(upstream))
    return out.numpy(), x.grad.numpy()


def _torch(loss: tl.CombinedMarginLoss, cosine, labels, upstream):
    x = torch.tensor(cosine, requires_grad=True)
    out = loss(x, torch.tensor(labels))
    out.backward(torch.tensor(upstream))
    return out.detach().numpy(), x.grad.numpy()


@pytest.mark.parametrize("grad_mode", ["insightface", "exact"])
@pytest.mark.parametrize("threshold", [0.0, 0.3])
@pytest.mark.parametrize("name", list(MARGINS))
def test_margin_logits_and_gradients_match_torch_and_numpy(name, threshold, grad_mode):
    m1, m2, m3 = MARGINS[name]
    cosine, labels, upstream = _case()
    kw = dict(s=64.0, m1=m1, m2=m2, m3=m3, interclass_filtering_threshold=threshold, grad_mode=grad_mode)
    p_out, p_grad = _paddle(pl.CombinedMarginLoss(**kw), cosine, labels, upstream)
    t_out, t_grad = _torch(tl.CombinedMarginLoss(**kw), cosine, labels, upstream)
    ref_out, slope = margin_logits(cosine, labels, Margin(64.0, m2, m3, threshold, grad_mode))
    ref_grad = upstream * slope
    measured = {
        "paddle out": rel(p_out, ref_out), "torch out": rel(t_out, ref_out),
        "paddle grad": rel(p_grad, ref_grad), "torch grad": rel(t_grad, ref_grad),
        "paddle-torch grad": rel(p_grad, t_grad),
    }
    print(name, threshold, grad_mode, {k: f"{v:.1e}" for k, v in measured.items()}, f"gate {GATE:.0e}")
    assert max(measured.values()) <= GATE, measured


def test_straight_through_and_exact_gradients_differ_only_on_targets():
    cosine, labels, upstream = _case(seed=1)
    ones = np.ones_like(upstream)
    _, st = _paddle(pl.ArcFace(s=64.0, m=0.5), cosine, labels, ones)
    _, exact = _paddle(pl.ArcFace(s=64.0, m=0.5, grad_mode="exact"), cosine, labels, ones)
    np.testing.assert_array_equal(st, np.full_like(st, 64.0))  # s for every entry, targets included
    rows = np.flatnonzero(labels >= 0)
    theta = np.arccos(cosine[rows, labels[rows]])
    np.testing.assert_allclose(exact[rows, labels[rows]], 64.0 * np.sin(theta + 0.5) / np.sin(theta), rtol=1e-12)
    off_target = np.ones_like(exact, dtype=bool)
    off_target[rows, labels[rows]] = False
    np.testing.assert_array_equal(exact[off_target], 64.0)


def test_filtering_zeroes_entries_above_threshold_except_own_target():
    cosine = np.array([[0.5, 0.1, 0.45], [0.5, 0.41, 0.2]])
    labels = np.array([0, -1])
    out, grad = _paddle(pl.CosFace(s=2.0, m=0.0, interclass_filtering_threshold=0.4), cosine, labels, np.ones((2, 3)))
    np.testing.assert_array_equal(out, 2.0 * np.array([[0.5, 0.1, 0.0], [0.0, 0.0, 0.2]]))
    np.testing.assert_array_equal(grad, 2.0 * np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))


def test_labels_as_column_vector_give_the_same_logits():
    cosine, labels, upstream = _case(seed=2)
    flat = _paddle(pl.ArcFace(), cosine, labels, upstream)
    column = _paddle(pl.ArcFace(), cosine, labels, upstream, label_shape=(-1, 1))
    np.testing.assert_array_equal(flat[0], column[0])
    np.testing.assert_array_equal(flat[1], column[1])


def test_presets_equal_combined_margin_settings():
    cosine, labels, upstream = _case(seed=3)
    np.testing.assert_array_equal(
        _paddle(pl.ArcFace(s=32.0, m=0.4), cosine, labels, upstream)[0],
        _paddle(pl.CombinedMarginLoss(32.0, 1.0, 0.4, 0.0), cosine, labels, upstream)[0],
    )
    np.testing.assert_array_equal(
        _paddle(pl.CosFace(s=32.0, m=0.35), cosine, labels, upstream)[0],
        _paddle(pl.CombinedMarginLoss(32.0, 1.0, 0.0, 0.35), cosine, labels, upstream)[0],
    )


@pytest.mark.parametrize("module", [pl, tl], ids=["paddle", "torch"])
@pytest.mark.parametrize("margins", [(0.9, 0.4, 0.0), (1.35, 0.0, 0.0), (0.9, 0.4, 0.15)])
def test_multiplicative_margin_is_refused_with_a_clear_error(module, margins):
    m1, m2, m3 = margins
    with pytest.raises(ValueError, match="m1=.* is not supported"):
        module.CombinedMarginLoss(64.0, m1, m2, m3)


@pytest.mark.parametrize("module", [pl, tl], ids=["paddle", "torch"])
def test_unknown_gradient_mode_is_refused(module):
    with pytest.raises(ValueError, match="grad_mode"):
        module.ArcFace(grad_mode="true")
