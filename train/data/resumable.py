"""A training data stream that can restart at any step of any epoch and give the same batches.

Exact resume needs every random choice of the data pipeline to be a function of where the run is, not
of how it got there. The order of an epoch comes from InsightFace's sampler (``seed + epoch``); the flip
of each sample is drawn from a generator seeded with ``(seed, epoch, index)``, so it does not depend on
the DataLoader worker that decodes it, on the number of workers, or on where a previous run stopped.
(InsightFace draws flips from a per-worker stream instead; the distribution is the same.)

The sampler hands the DataLoader composite keys ``epoch * len(dataset) + index``; the wrapped dataset
splits them again, seeds the flip and returns ``(image, label)`` as the plain dataset does.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from paddle.io import Dataset, Sampler

from .loader import CheckedDataLoader
from .sampler import DistributedSampler


class EpochKeyedDataset(Dataset):
    """``dataset[epoch * len + index]`` with the flip of (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed
        self.length = len(dataset)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int):
        epoch, index = divmod(int(key), self.length)
        if hasattr(self.dataset, "reseed"):
            self.dataset.reseed(flip_seed(self.seed, epoch, index))
        return self.dataset[index]


def flip_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed unique to one sample of one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0])


class ResumableBatches(Sampler):
    """Batches of this rank for one epoch, from batch ``start`` on (``drop_last``, as InsightFace)."""

    def __init__(self, sampler: DistributedSampler, batch_size: int):
        super().__init__()
        self.sampler = sampler
        self.batch_size = batch_size
        self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.start = start

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        order = np.fromiter(iter(self.sampler), dtype=np.int64)
        keys = order + self.sampler.epoch * self.sampler.length
        for b in range(self.start, len(self)):
            yield keys[b * self.batch_size:(b + 1) * self.batch_size].tolist()


def resumable_loader(dataset: Dataset, batch_size: int, rank: int, world_size: int, seed: int,
                     num_workers: int) -> CheckedDataLoader:
    """A DataLoader whose ``batch_sampler.set_position(epoch, start_batch)`` picks where it starts.

    Workers are persistent: Paddle forks them once, before training starts (forking after training
    has run can deadlock with Paddle 3.3.1, see ``loader.get_dataloader``). A sample that cannot be read,
    or a worker that dies, ends the iteration with one ``UserError`` (``loader.CheckedDataLoader``).
    """
    sampler = DistributedSampler(len(dataset), world_size, rank, shuffle=True, seed=seed)
    batches = ResumableBatches(sampler, batch_size)
    return CheckedDataLoader(EpochKeyedDataset(dataset, seed), batch_sampler=batches, num_workers=num_workers,
                             persistent_workers=num_workers > 0)
