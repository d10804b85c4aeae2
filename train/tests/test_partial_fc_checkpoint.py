"""PartialFC checkpoints: state_dict round trip, the shard-layout check, and re-sharding for a new world size."""

from __future__ import annotations

from functools import partial

import numpy as np
import paddle
import pytest

from train.losses import ArcFace
from train.partial_fc import PartialFC as _PartialFC
from train.partial_fc import ShardLayoutError, merge_shards, reshard, split_shards

PartialFC = partial(_PartialFC, dtype="float64")  # float64 centres: exact comparisons


def _trained_sparse_pfc(classes: int = 10) -> PartialFC:
    pfc = PartialFC(ArcFace(), 4, classes, sample_rate=0.5, update="sparse")
    rng = np.random.default_rng(0)
    pfc(paddle.to_tensor(rng.normal(size=(3, 4))), paddle.to_tensor([1, 4, 4])).backward()
    pfc.sparse_step(0.1)
    return pfc


def test_state_holds_shard_layout_and_momentum_only_in_sparse_mode():
    assert list(PartialFC(ArcFace(), 4, 10).state_dict()) == ["weight", "shard_layout"]
    state = _trained_sparse_pfc().state_dict()
    assert list(state) == ["weight", "weight_mom", "shard_layout"]
    np.testing.assert_array_equal(state["shard_layout"].numpy(), [10, 1, 0, 4])


def test_saved_and_loaded_state_restores_weight_and_momentum(tmp_path):
    pfc = _trained_sparse_pfc()
    path = tmp_path / "pfc_rank0.pdparams"
    paddle.save(pfc.state_dict(), str(path))
    fresh = PartialFC(ArcFace(), 4, 10, sample_rate=0.5, update="sparse")
    fresh.set_state_dict(paddle.load(str(path)))  # trusted: written by this test
    np.testing.assert_array_equal(fresh.weight.numpy(), pfc.weight.numpy())
    np.testing.assert_array_equal(fresh.weight_mom.numpy(), pfc.weight_mom.numpy())
    assert np.abs(fresh.weight_mom.numpy()).sum() > 0


def test_shard_from_another_world_size_is_refused_with_a_reshard_hint():
    state = split_shards({"weight": np.zeros((10, 4))}, 2)[1]  # rank 1 of 2: classes [5, 10)
    with pytest.raises(ShardLayoutError, match=r"rank 1 of 2 \(classes \[5, 10\) of 10.*rank 0 of 1.*reshard"):
        PartialFC(ArcFace(), 4, 10).set_state_dict(state)


@pytest.mark.parametrize("layout", [[11, 1, 0, 4], [10, 1, 0, 8]])
def test_shard_with_other_class_count_or_dim_is_refused(layout):
    with pytest.raises(ShardLayoutError):
        PartialFC(ArcFace(), 4, 10).set_state_dict({"weight": np.zeros((10, 4)), "shard_layout": np.array(layout)})


def test_state_without_layout_is_refused():
    with pytest.raises(ShardLayoutError, match="no 'shard_layout'"):
        PartialFC(ArcFace(), 4, 10).set_state_dict({"weight": np.zeros((10, 4))})


def test_reshard_from_three_ranks_to_two_and_one_keeps_every_row():
    rng = np.random.default_rng(1)
    full = {"weight": rng.normal(size=(10, 4)), "weight_mom": rng.normal(size=(10, 4))}
    three = split_shards(full, 3)
    assert [s["weight"].shape[0] for s in three] == [4, 3, 3]
    two = reshard(list(reversed(three)), 2)  # any order of the saved shards
    assert [s["shard_layout"].tolist() for s in two] == [[10, 2, 0, 4], [10, 2, 1, 4]]
    np.testing.assert_array_equal(two[1]["weight_mom"], full["weight_mom"][5:])
    (one,) = reshard(two, 1)
    pfc = PartialFC(ArcFace(), 4, 10, update="sparse")
    pfc.set_state_dict(one)
    np.testing.assert_array_equal(pfc.weight.numpy(), full["weight"])
    np.testing.assert_array_equal(pfc.weight_mom.numpy(), full["weight_mom"])


def test_merge_needs_every_rank_of_one_layout():
    shards = split_shards({"weight": np.zeros((10, 4))}, 3)
    with pytest.raises(ShardLayoutError, match="need exactly ranks 0..2"):
        merge_shards(shards[:2])
    with pytest.raises(ShardLayoutError, match="need exactly ranks 0..2"):
        merge_shards([shards[0], shards[0], shards[2]])
    with pytest.raises(ShardLayoutError, match="different class counts"):
        merge_shards([shards[0], *split_shards({"weight": np.zeros((11, 4))}, 3)[1:]])
