"""InsightFace's distributed sampler: a fresh permutation each epoch, padded, strided shards per rank."""

from __future__ import annotations

from typing import Iterator

import numpy as np
from paddle.io import Sampler


class DistributedSampler(Sampler):
    """Indices of rank ``rank`` out of ``num_replicas`` for one epoch (InsightFace's scheme).

    Each epoch the permutation of ``range(length)`` comes from numpy's ``default_rng(seed + epoch)``; it is
    padded by repeating it from the start up to ``ceil(length / num_replicas) * num_replicas`` and rank
    ``r`` takes positions ``r, r + W, r + 2W, ...``. Call ``set_epoch`` before every epoch. (InsightFace
    draws the permutation with ``torch.randperm``; the order here differs, the scheme is the same.)
    """

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0):
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        if length < 1:
            raise ValueError("cannot sample from an empty dataset")
        super().__init__()
        self.length, self.num_replicas, self.rank = length, num_replicas, rank
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.num_samples = -(-length // num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_order(self) -> np.ndarray:
        """The padded order of all ranks for the current epoch, ``[total_size]`` int64."""
        if self.shuffle:
            order = np.random.default_rng(self.seed + self.epoch).permutation(self.length)
        else:
            order = np.arange(self.length)
        return np.resize(order, self.total_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_order()[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples
