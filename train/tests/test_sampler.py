"""The distributed sampler: per-epoch shuffles from seed + epoch, padding, strided shards per rank."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from train.data.sampler import DistributedSampler


def shards(length: int, world: int, seed: int, epoch: int) -> list[list[int]]:
    out = []
    for rank in range(world):
        sampler = DistributedSampler(length, world, rank, seed=seed)
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


@pytest.mark.parametrize("length, world", [(12, 4), (1000, 8), (7, 1)])
def test_shards_cover_every_index_exactly_once_per_epoch(length, world):
    for epoch in range(3):
        parts = shards(length, world, seed=2048, epoch=epoch)
        assert [len(p) for p in parts] == [length // world] * world
        assert sorted(i for p in parts for i in p) == list(range(length))


@pytest.mark.parametrize("length, world", [(10, 4), (1001, 8), (3, 5)])
def test_padding_repeats_the_start_of_the_permutation(length, world):
    per_rank = -(-length // world)
    parts = shards(length, world, seed=1, epoch=0)
    counts = Counter(i for p in parts for i in p)
    assert [len(p) for p in parts] == [per_rank] * world
    assert set(counts) == set(range(length))
    order = np.random.default_rng(1).permutation(length)
    padded = np.resize(order, per_rank * world)
    assert [counts[i] for i in range(length)] == [int((padded == i).sum()) for i in range(length)]
    assert sum(counts.values()) - length == per_rank * world - length


def test_rank_takes_strided_positions_of_the_epoch_permutation():
    order = np.random.default_rng(2048 + 3).permutation(20)
    assert shards(20, 4, seed=2048, epoch=3) == [order[r::4].tolist() for r in range(4)]


def test_epochs_reshuffle_and_a_seed_repeats():
    assert shards(50, 2, seed=0, epoch=0) != shards(50, 2, seed=0, epoch=1)
    assert shards(50, 2, seed=0, epoch=1) == shards(50, 2, seed=0, epoch=1)
    assert shards(50, 2, seed=1, epoch=0) == shards(50, 2, seed=0, epoch=1)  # seed + epoch, as InsightFace


def test_unshuffled_sampler_strides_the_identity_order():
    assert list(DistributedSampler(7, 3, 1, shuffle=False)) == [1, 4, 0]


@pytest.mark.parametrize("kwargs", [{"num_replicas": 2, "rank": 2}, {"num_replicas": 0, "rank": 0},
                                    {"num_replicas": 1, "rank": -1}])
def test_invalid_rank_is_refused(kwargs):
    with pytest.raises(ValueError):
        DistributedSampler(10, **kwargs)
