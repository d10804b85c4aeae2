"""Partial FC on one process, float64: Paddle == PyTorch twin == numpy reference (loss, gradients, sampling).

Also the two update modes against PyTorch optimisers: "dense" (InsightFace v2, every row decays) with
``paddle.optimizer.Momentum`` vs ``torch.optim.SGD`` on the whole shard, and "sparse" (v1 / PLSC, only
sampled rows move) via ``PartialFC.sparse_step`` vs ``torch.optim.SGD`` on the sampled rows.
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch

import torch_reference.losses as tl
import torch_reference.partial_fc as tp
import train.losses as pl
import train.partial_fc as pp
from parity_tests.workers.numpy_reference import Margin, partial_fc, rel, sample_rows

GATE = 1e-8
MARGINS = {"arcface": (0.5, 0.0), "cosface": (0.0, 0.4), "combined": (0.3, 0.2), "plain_softmax": (0.0, 0.0)}
N, D, C = 10, 16, 23


def _batch(seed: int, n: int = N) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings near their class centre (so margins and filtering matter), labels, centres, scores."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0.0, 0.01, size=(C, D))
    labels = rng.choice(C, size=n, replace=True)
    labels[1] = labels[0]  # a repeated class
    emb = 2.0 * weight[labels] / np.linalg.norm(weight[labels], axis=1, keepdims=True) + rng.normal(size=(n, D))
    scores = rng.random(C)
    return emb, labels, weight, scores


def _paddle_pfc(margin: Margin, sample_rate: float, update: str, weight: np.ndarray, scores: np.ndarray):
    loss = pl.CombinedMarginLoss(margin.s, 1.0, margin.m2, margin.m3, margin.t, margin.grad_mode)
    pfc = pp.PartialFC(loss, D, C, sample_rate, update, score_source=lambda n: scores[:n].copy(), dtype="float64")
    pfc.weight.set_value(weight)
    return pfc


def _torch_pfc(margin: Margin, sample_rate: float, weight: np.ndarray, scores: np.ndarray):
    loss = tl.CombinedMarginLoss(margin.s, 1.0, margin.m2, margin.m3, margin.t, margin.grad_mode)
    pfc = tp.PartialFC(loss, D, C, sample_rate=sample_rate, score_source=lambda n: scores[:n].copy()).double()
    with torch.no_grad():
        pfc.weight.copy_(torch.from_numpy(weight))
    return pfc


def _run_paddle(pfc: pp.PartialFC, emb: np.ndarray, labels: np.ndarray):
    x = paddle.to_tensor(emb, stop_gradient=False)
    loss = pfc(x, paddle.to_tensor(labels))
    loss.backward()
    return float(loss), x.grad.numpy(), pfc.shard_grad().numpy()


def _run_torch(pfc: tp.PartialFC, emb: np.ndarray, labels: np.ndarray):
    x = torch.tensor(emb, requires_grad=True)
    loss = pfc(x, torch.tensor(labels))
    loss.backward()
    return loss.item(), x.grad.numpy(), pfc.weight.grad.numpy()


@pytest.mark.parametrize("sample_rate", [1.0, 0.4, 0.0])
@pytest.mark.parametrize("grad_mode", ["insightface", "exact"])
@pytest.mark.parametrize("threshold", [0.0, 0.2])
@pytest.mark.parametrize("name", list(MARGINS))
def test_loss_and_gradients_match_torch_twin_and_numpy(name, threshold, grad_mode, sample_rate):
    emb, labels, weight, scores = _batch(seed=len(name))
    margin = Margin(64.0, *MARGINS[name], threshold, grad_mode)
    update = "sparse" if grad_mode == "exact" else "dense"  # the gradient does not depend on the update mode
    p_pfc = _paddle_pfc(margin, sample_rate, update, weight, scores)
    t_pfc = _torch_pfc(margin, sample_rate, weight, scores)
    p_loss, p_demb, p_dw = _run_paddle(p_pfc, emb, labels)
    t_loss, t_demb, t_dw = _run_torch(t_pfc, emb, labels)

    columns = None
    if sample_rate < 1.0:
        columns, remapped = sample_rows(labels, scores, int(sample_rate * C))
        np.testing.assert_array_equal(p_pfc.last_sample.index.numpy(), columns)
        np.testing.assert_array_equal(t_pfc.weight_index.numpy(), columns)
        np.testing.assert_array_equal(p_pfc.last_sample.labels.numpy(), remapped)
        np.testing.assert_array_equal(t_pfc.local_labels.numpy(), remapped)
    r_loss, r_demb, r_dw = partial_fc(emb, weight, labels, margin, columns)
    measured = {
        "paddle loss": rel(p_loss, r_loss), "torch loss": rel(t_loss, r_loss),
        "paddle d_emb": rel(p_demb, r_demb), "torch d_emb": rel(t_demb, r_demb),
        "paddle d_W": rel(p_dw, r_dw), "torch d_W": rel(t_dw, r_dw), "paddle-torch d_W": rel(p_dw, t_dw),
    }
    print(name, threshold, grad_mode, sample_rate, f"loss {p_loss:.6f}", {k: f"{v:.1e}" for k, v in measured.items()})
    assert max(measured.values()) <= GATE, measured
    if columns is not None:  # unused centres get exactly zero gradient
        unused = np.setdiff1d(np.arange(C), columns)
        assert not p_dw[unused].any() and not t_dw[unused].any()


def test_sampling_example_of_the_reference():
    # insightface_arcface.md §3.2: 20 classes, rate 0.3, labels {7, 3, 7, 15, 0} -> rows [0, 3, 4, 7, 15, 18]
    scores = np.full(20, 0.1)
    scores[[4, 18]] = 0.9
    index, remapped = sample_rows(np.array([7, 3, 7, 15, 0]), scores, 6)
    np.testing.assert_array_equal(index, [0, 3, 4, 7, 15, 18])
    np.testing.assert_array_equal(remapped, [3, 1, 3, 4, 0])
    emb = np.random.default_rng(0).normal(size=(5, 4))
    p_pfc = pp.PartialFC(pl.ArcFace(), 4, 20, 0.3, score_source=lambda n: scores.copy(), dtype="float64")
    p_pfc(paddle.to_tensor(emb), paddle.to_tensor([7, 3, 7, 15, 0]))
    t_pfc = tp.PartialFC(tl.ArcFace(), 4, 20, 0.3, score_source=lambda n: scores.copy()).double()
    t_pfc(torch.tensor(emb), torch.tensor([7, 3, 7, 15, 0]))
    for got in (p_pfc.last_sample.index.numpy(), t_pfc.weight_index.numpy()):
        np.testing.assert_array_equal(got, [0, 3, 4, 7, 15, 18])
    for got in (p_pfc.last_sample.labels.numpy(), t_pfc.local_labels.numpy()):
        np.testing.assert_array_equal(got, [3, 1, 3, 4, 0])


def _torch_sgd_sparse_steps(weight, batches, scores, lr, mu, wd):
    """InsightFace v1 semantics with torch: SGD on a Parameter holding only the sampled rows."""
    t_pfc = _torch_pfc(Margin(), 0.4, weight, scores)
    full, mom = weight.copy(), np.zeros_like(weight)
    for emb, labels in batches:
        with torch.no_grad():
            t_pfc.weight.copy_(torch.from_numpy(full))
        t_pfc.weight.grad = None
        t_pfc(torch.tensor(emb), torch.tensor(labels)).backward()
        index = t_pfc.weight_index.numpy()
        rows = torch.nn.Parameter(torch.from_numpy(full[index].copy()))
        rows.grad = t_pfc.weight.grad[index].clone()
        sgd = torch.optim.SGD([rows], lr=lr, momentum=mu, weight_decay=wd)
        sgd.state[rows]["momentum_buffer"] = torch.from_numpy(mom[index].copy())
        sgd.step()
        full[index] = rows.detach().numpy()
        mom[index] = sgd.state[rows]["momentum_buffer"].numpy()
    return full, mom


def test_sparse_update_moves_only_sampled_rows_like_torch_sgd_on_the_sample():
    emb, labels, weight, scores = _batch(seed=5)
    emb2, labels2, _, _ = _batch(seed=6)
    lr, mu, wd = 0.1, 0.9, 5e-4
    pfc = _paddle_pfc(Margin(), 0.4, "sparse", weight, scores)
    assert pfc.parameters() == []  # the optimiser must not see the centres in sparse mode
    touched = []
    for e, y in ((emb, labels), (emb2, labels2)):
        pfc(paddle.to_tensor(e), paddle.to_tensor(y)).backward()
        touched.append(pfc.last_sample.index.numpy())
        pfc.sparse_step(lr, mu, wd)
    ref_w, ref_mom = _torch_sgd_sparse_steps(weight, [(emb, labels), (emb2, labels2)], scores, lr, mu, wd)
    measured = {"weight": rel(pfc.weight.numpy(), ref_w), "momentum": rel(pfc.weight_mom.numpy(), ref_mom)}
    print("sparse step vs torch SGD on sampled rows", {k: f"{v:.1e}" for k, v in measured.items()})
    assert max(measured.values()) <= GATE
    untouched = np.setdiff1d(np.arange(C), np.concatenate(touched))
    assert untouched.size > 0
    np.testing.assert_array_equal(pfc.weight.numpy()[untouched], weight[untouched])


def test_dense_update_with_paddle_momentum_matches_torch_sgd_and_decays_every_row():
    emb, labels, weight, scores = _batch(seed=7)
    # Paddle's Momentum holds lr, momentum and decay in float32 (lr 0.1 alone gives 1.3e-8 relative after
    # two steps), so this float64 comparison uses values that float32 represents exactly
    lr, mu, wd = 0.125, 0.875, 2.0**-11
    pfc = _paddle_pfc(Margin(), 0.4, "dense", weight, scores)
    opt = paddle.optimizer.Momentum(lr, momentum=mu, parameters=pfc.parameters(), weight_decay=wd)
    t_pfc = _torch_pfc(Margin(), 0.4, weight, scores)
    sgd = torch.optim.SGD(t_pfc.parameters(), lr=lr, momentum=mu, weight_decay=wd)
    for _ in range(2):
        pfc(paddle.to_tensor(emb), paddle.to_tensor(labels)).backward()
        opt.step()
        opt.clear_grad()
        t_pfc(torch.tensor(emb), torch.tensor(labels)).backward()
        sgd.step()
        sgd.zero_grad()
    measured = rel(pfc.weight.numpy(), t_pfc.weight.detach().numpy())
    print(f"dense: paddle Momentum vs torch SGD after 2 steps rel {measured:.1e}")
    assert measured <= GATE
    unused = np.setdiff1d(np.arange(C), pfc.last_sample.index.numpy())
    assert np.all(pfc.weight.numpy()[unused] != weight[unused])  # decayed although never sampled
