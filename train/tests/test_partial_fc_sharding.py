"""PartialFC on one process: sharding arithmetic, argument checks, sampling rules, the two update modes."""

from __future__ import annotations

from functools import partial

import numpy as np
import paddle
import pytest

from train.losses import ArcFace, CosFace
from train.partial_fc import PartialFC as _PartialFC
from train.partial_fc import shard_range

PartialFC = partial(_PartialFC, dtype="float64")  # float64 centres: exact comparisons


def _inputs(seed: int = 0, n: int = 6, d: int = 8, classes: int = 20):
    rng = np.random.default_rng(seed)
    return paddle.to_tensor(rng.normal(size=(n, d))), paddle.to_tensor(rng.integers(0, classes, size=n))


def test_shards_are_contiguous_and_first_ranks_get_the_remainder():
    assert [shard_range(11, 2, r) for r in range(2)] == [(0, 6), (6, 5)]
    assert [shard_range(93431, 8, r)[1] for r in range(8)] == [11679] * 7 + [11678]
    for classes, world in [(10, 3), (7, 7), (100003, 16)]:
        ranges = [shard_range(classes, world, r) for r in range(world)]
        assert ranges[0][0] == 0 and sum(count for _, count in ranges) == classes
        assert all(a[0] + a[1] == b[0] for a, b in zip(ranges, ranges[1:]))


def test_one_process_owns_every_class_with_small_normal_init():
    paddle.seed(1)
    pfc = PartialFC(ArcFace(), 64, 3000, sample_rate=0.3)
    assert (pfc.rank, pfc.world_size, pfc.class_start, pfc.num_local) == (0, 1, 0, 3000)
    assert pfc.weight.shape == [3000, 64] and pfc.num_sample == 900
    assert abs(float(pfc.weight.numpy().std()) - 0.01) < 0.0005
    assert PartialFC(ArcFace(), 4, 20, sample_rate=0.3).num_sample == 6  # int() truncation, as InsightFace


@pytest.mark.parametrize("kwargs", [dict(sample_rate=1.5), dict(sample_rate=-0.1), dict(update="lazy")])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError, match="sample_rate|update"):
        PartialFC(ArcFace(), 8, 20, **kwargs)


def test_wrong_input_shapes_are_refused():
    pfc = PartialFC(ArcFace(), 8, 20)
    emb, labels = _inputs()
    with pytest.raises(ValueError, match="expected \\[B, 8\\]"):
        pfc(paddle.zeros([6, 7]), labels)
    with pytest.raises(ValueError, match="5 labels for 6 embeddings"):
        pfc(emb, labels[:5])


def test_labels_of_shape_b_by_1_give_the_same_loss():
    pfc = PartialFC(CosFace(), 8, 20)
    emb, labels = _inputs()
    assert float(pfc(emb, labels)) == float(pfc(emb, labels.reshape([-1, 1])))


def test_sample_rate_zero_keeps_only_the_positive_classes_and_draws_no_scores():
    calls = []
    pfc = PartialFC(ArcFace(), 8, 20, sample_rate=0.0, score_source=lambda n: calls.append(n) or np.zeros(n))
    emb, labels = _inputs()
    pfc(emb, labels)
    np.testing.assert_array_equal(pfc.last_sample.index.numpy(), np.unique(labels.numpy()))
    assert calls == []


def test_more_positives_than_num_sample_keeps_every_positive():
    pfc = PartialFC(ArcFace(), 8, 20, sample_rate=0.1, score_source=lambda n: np.zeros(n))
    emb, labels = _inputs(n=6)
    pfc(emb, paddle.to_tensor([0, 3, 5, 9, 12, 19]))
    np.testing.assert_array_equal(pfc.last_sample.index.numpy(), [0, 3, 5, 9, 12, 19])
    np.testing.assert_array_equal(pfc.last_sample.labels.numpy(), [0, 1, 2, 3, 4, 5])


def test_score_source_of_wrong_length_is_refused():
    pfc = PartialFC(ArcFace(), 8, 20, sample_rate=0.5, score_source=lambda n: np.zeros(n - 1))
    with pytest.raises(ValueError, match="score_source returned shape"):
        pfc(*_inputs())


def test_default_scores_are_reproducible_from_the_seed():
    emb, labels = _inputs()
    picks = []
    for seed in (3, 3, 4):
        pfc = PartialFC(ArcFace(), 8, 200, sample_rate=0.1, seed=seed)
        pfc(emb, labels)
        picks.append(pfc.last_sample.index.numpy())
    np.testing.assert_array_equal(picks[0], picks[1])
    assert not np.array_equal(picks[0], picks[2])


def test_sparse_and_dense_modes_give_the_same_shard_gradient():
    emb, labels = _inputs(seed=2)
    grads = []
    for update in ("dense", "sparse"):
        pfc = PartialFC(ArcFace(), 8, 20, sample_rate=0.5, update=update, score_source=lambda n: np.linspace(0, 1, n))
        pfc.weight.set_value(np.random.default_rng(5).normal(0, 0.01, size=(20, 8)))
        pfc(emb, labels).backward()
        grads.append(pfc.shard_grad().numpy())
    np.testing.assert_array_equal(grads[0], grads[1])
    assert np.count_nonzero(np.abs(grads[0]).sum(axis=1)) == 10  # exactly the sampled rows


def test_sparse_step_applies_momentum_and_decay_to_used_rows_only():
    lr, mu, wd = 0.1, 0.9, 5e-4
    pfc = PartialFC(ArcFace(), 8, 20, sample_rate=0.25, update="sparse", score_source=lambda n: np.linspace(0, 1, n))
    start = pfc.weight.numpy().copy()
    emb, labels = _inputs(seed=3)
    for _ in range(2):
        pfc(emb, labels).backward()
        index, grad = pfc.last_sample.index.numpy(), pfc.shard_grad().numpy()[pfc.last_sample.index.numpy()]
        before, mom = pfc.weight.numpy().copy(), pfc.weight_mom.numpy().copy()
        pfc.sparse_step(lr, mu, wd)
        velocity = mu * mom[index] + grad + wd * before[index]
        np.testing.assert_allclose(pfc.weight_mom.numpy()[index], velocity, rtol=1e-13, atol=0)
        np.testing.assert_allclose(pfc.weight.numpy()[index], before[index] - lr * velocity, rtol=1e-13, atol=0)
    unused = np.setdiff1d(np.arange(20), index)
    np.testing.assert_array_equal(pfc.weight.numpy()[unused], start[unused])
    assert not pfc.weight_mom.numpy()[unused].any()


def test_sparse_step_misuse_is_refused():
    with pytest.raises(RuntimeError, match="stepped by the optimizer"):
        PartialFC(ArcFace(), 8, 20).sparse_step(0.1)
    with pytest.raises(RuntimeError, match="call forward and backward first"):
        PartialFC(ArcFace(), 8, 20, update="sparse").sparse_step(0.1)


def test_float32_loss_agrees_with_float64():
    emb, labels = _inputs(seed=4)
    weight = np.random.default_rng(6).normal(0, 0.01, size=(20, 8))
    losses = []
    for dtype in ("float64", "float32"):
        pfc = _PartialFC(ArcFace(), 8, 20, dtype=dtype)
        pfc.weight.set_value(weight.astype(dtype))
        losses.append(float(pfc(emb.astype(dtype), labels)))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
