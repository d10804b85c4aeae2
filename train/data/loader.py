"""The training loader: dataset chosen from what ``root`` holds, InsightFace's sampler and worker seeding."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import paddle
from paddle.io import BatchSampler, DataLoader, Dataset, get_worker_info

from converters.errors import UserError

from .datasets import ImageFolderDataset, RecordDataset, SyntheticDataset
from .recordio import pack_paths
from .sampler import DistributedSampler
from .transforms import worker_seed


def make_dataset(root: str | Path) -> Dataset:
    """``"synthetic"``: SyntheticDataset; ``train.rec`` + ``train.idx``: RecordDataset; else image folder."""
    if str(root) == "synthetic":
        return SyntheticDataset()
    rec, idx = pack_paths(root)
    if rec.is_file() and idx.is_file():
        return RecordDataset(root)
    if not Path(root).exists():
        raise UserError(root, "no such file or folder (expected a RecordIO pack, an image folder or "
                        "'synthetic')")
    return ImageFolderDataset(root)


@dataclass(frozen=True)
class WorkerInit:
    """``worker_init_fn``: re-seed the worker's copy of the dataset with InsightFace's per-worker seed."""

    seed: int
    rank: int
    num_workers: int

    def __call__(self, worker_id: int) -> None:
        dataset = get_worker_info().dataset
        if hasattr(dataset, "reseed"):
            dataset.reseed(worker_seed(self.seed, self.rank, self.num_workers, worker_id))


def get_dataloader(root: str | Path, batch_size: int, rank: int | None = None, world_size: int | None = None,
                   seed: int = 2048, num_workers: int = 2, drop_last: bool = True,
                   persistent_workers: bool = True) -> DataLoader:
    """A shuffled, sharded loader of ``[B, 3, 112, 112]`` float32 images and ``[B]`` int64 labels.

    ``rank``/``world_size`` default to Paddle's distributed environment. Call
    ``loader.batch_sampler.sampler.set_epoch(epoch)`` before each epoch, as InsightFace does.

    Workers are persistent by default: Paddle forks them once instead of every epoch, because a worker
    forked while threads of the previous epoch's loader or of training are live in the parent can
    deadlock (seen with Paddle 3.3.1 on CPU: the worker stuck in ``paddle::memory::Stat::Update``). Each
    worker's flip stream then runs on across epochs; ``persistent_workers=False`` gives InsightFace's
    behaviour (workers re-created and re-seeded every epoch, so flip streams repeat) at that risk.
    """
    rank = paddle.distributed.get_rank() if rank is None else rank
    world_size = paddle.distributed.get_world_size() if world_size is None else world_size
    dataset = make_dataset(root)
    if num_workers == 0 and hasattr(dataset, "reseed"):
        dataset.reseed(worker_seed(seed, rank, 0, 0))
    sampler = DistributedSampler(len(dataset), world_size, rank, shuffle=True, seed=seed)
    batches = BatchSampler(sampler=sampler, batch_size=batch_size, drop_last=drop_last)
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                      worker_init_fn=WorkerInit(seed, rank, num_workers) if num_workers else None,
                      persistent_workers=persistent_workers and num_workers > 0)
