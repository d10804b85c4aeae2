"""The training loader: dataset chosen from what ``root`` holds, InsightFace's sampler and worker seeding."""

from __future__ import annotations

import json
import logging
import signal
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import paddle
from paddle.io import BatchSampler, DataLoader, Dataset, get_worker_info
from paddle.io.dataloader.collate import default_collate_fn

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


# ------------------------------------------------------------------ errors inside data-loader workers
# Paddle's DataLoader re-raises a worker's exception in a background thread as ``type(message)`` (which
# prints a traceback and leaves the main process to fail later, or wait), and reports a dead worker as
# "Blocking queue is killed". So nothing is allowed to escape a worker: the dataset and the collate
# function below turn any failure into a small marker batch, which ``CheckedDataLoader`` turns back into
# the error in the main process, for any number of workers (0 included).
@dataclass(frozen=True)
class ItemFailure:
    """What went wrong reading one sample: a user error (``path``, ``problem``) or a bug (``text``)."""

    kind: str  # "user" or "bug"
    path: str | None = None
    problem: str = ""

    def as_batch(self) -> list[np.ndarray]:
        """A batch the DataLoader carries like any other: three arrays instead of (images, labels)."""
        text = json.dumps({"kind": self.kind, "path": self.path, "problem": self.problem})
        return [np.zeros(1, np.float32), np.zeros(1, np.int64), np.frombuffer(text.encode(), np.uint8).copy()]

    @staticmethod
    def raise_from(array: Any) -> None:
        info = json.loads(bytes(np.asarray(array.numpy() if hasattr(array, "numpy") else array, np.uint8)))
        if info["kind"] == "user":
            raise UserError(info["path"], info["problem"])
        raise DataLoaderWorkerBug(info["problem"])


class DataLoaderWorkerBug(RuntimeError):
    """An unexpected exception in a data-loader worker (a bug): carries the worker's traceback."""


class GuardedDataset(Dataset):
    """``dataset[key]``, or an ``ItemFailure`` instead of raising (the loader reports it)."""

    def __init__(self, dataset: Dataset, source: str | Path | None = None):
        self.dataset = dataset
        self.source = source

    def __len__(self) -> int:
        return len(self.dataset)

    def reseed(self, seed: int) -> None:
        if hasattr(self.dataset, "reseed"):
            self.dataset.reseed(seed)

    def __getitem__(self, key: int):
        try:
            return self.dataset[key]
        except UserError as err:
            return ItemFailure("user", err.path, err.problem)
        except MemoryError:
            return ItemFailure("user", None if self.source is None else str(self.source),
                               f"sample {int(key) % max(1, len(self))}: out of memory decoding it")
        except Exception:  # a bug: keep the worker's traceback for the report
            return ItemFailure("bug", None, traceback.format_exc())


def guarded_collate(samples: list) -> Any:
    """Paddle's default collation, or the marker batch of the first failed sample."""
    for sample in samples:
        if isinstance(sample, ItemFailure):
            return sample.as_batch()
    try:
        return default_collate_fn(samples)
    except Exception:
        return ItemFailure("bug", None, traceback.format_exc()).as_batch()


class _DropWorkerExitWarning(logging.Filter):
    """Paddle logs 'DataLoader N workers exit unexpectedly' on the root logger; the error line says it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "workers exit unexpectedly" not in str(record.msg)


_ROOT_FILTER = _DropWorkerExitWarning()


class CheckedDataLoader(DataLoader):
    """A ``paddle.io.DataLoader`` whose worker failures end iteration with one ``UserError``.

    A sample that cannot be read raises its own ``UserError`` (naming the pack and record) in the main
    process; a worker that dies (a signal, a crash in native code) raises one naming ``source``. Both
    come within seconds (Paddle checks its workers every 5 s while waiting), never a hang.
    """

    def __init__(self, dataset: Dataset, source: str | Path | None = None, **kwargs):
        source = source if source is not None else describe_source(dataset)
        super().__init__(GuardedDataset(dataset, source), collate_fn=guarded_collate, **kwargs)
        self.source = source
        logging.getLogger().addFilter(_ROOT_FILTER)

    def __iter__(self) -> Iterator[Any]:
        iterator = super().__iter__()
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except SystemError as err:  # "Blocking queue is killed": a worker died or failed
                raise UserError(self.source, _worker_death(iterator, err)) from None
            if isinstance(batch, (list, tuple)) and len(batch) == 3:
                ItemFailure.raise_from(batch[2])
            yield batch


def _worker_death(iterator: Any, err: BaseException) -> str:
    codes = [w.exitcode for w in getattr(iterator, "_workers", []) if w.exitcode not in (None, 0)]
    if not codes:
        return f"a data-loader worker failed ({str(err).splitlines()[0][:160]}); training stopped"
    code = codes[0]
    how = f"killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals() \
        else f"exit code {code}"
    return f"a data-loader worker died ({how}) while reading it; training stopped"


def describe_source(dataset: Any) -> str | None:
    """The file or folder a dataset reads (for error messages), looking through wrappers."""
    for _ in range(4):
        reader = getattr(dataset, "reader", None)
        if reader is not None and getattr(reader, "rec_path", None) is not None:
            return str(reader.rec_path)
        for name in ("root", "path"):
            if getattr(dataset, name, None) is not None:
                return str(getattr(dataset, name))
        dataset = getattr(dataset, "dataset", None)
        if dataset is None:
            break
    return None


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
    return CheckedDataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                             worker_init_fn=WorkerInit(seed, rank, num_workers) if num_workers else None,
                             persistent_workers=persistent_workers and num_workers > 0)
