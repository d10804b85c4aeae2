"""Training-data throughput against the model it feeds: raw records/s and decoded samples/s through
``paddle.io.DataLoader`` (0, 1 and 2 workers) on a synthetic InsightFace pack of 112x112 JPEGs, and the
r50 training-step throughput (forward, backward, Momentum step, linear + cross-entropy head) on the same
machine, as one table. The pack is generated in a temporary folder and removed afterwards.

    python bench/data.py [--images 20000] [--batch 128] [--r50-batch 16] [--r50-steps 3] [--threads N]

Targets: raw reading >= 20,000 records/s; decoded samples/s >= 4x the r50 training samples/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the project from its root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
from tabulate import tabulate  # noqa: E402
from tqdm import tqdm  # noqa: E402

from converters.errors import run_cli  # noqa: E402
from converters.runtime import library_versions, quiet_paddle_import, set_threads  # noqa: E402

RAW_TARGET = 20_000  # records/s
DECODE_FACTOR = 4  # decoded samples/s must be at least this many times the r50 training samples/s


def make_pack(folder: Path, images: int, per_class: int = 20, seed: int = 0) -> int:
    """Write a synthetic InsightFace pack of ``images`` JPEGs into ``folder``; returns its .rec size."""
    from eval.synthetic import encode_jpeg, identity_image  # the same face-sized images as the eval packs
    from train.data.layout import write_pack

    rng = np.random.default_rng(seed)
    labels = np.arange(images) // per_class
    payloads = (encode_jpeg(identity_image(rng), quality=95) for _ in tqdm(range(images), desc="generate pack", file=sys.stderr))
    write_pack(folder, labels.tolist(), payloads, (112, 112))
    return (folder / "train.rec").stat().st_size


def time_raw_reader(folder: Path) -> tuple[int, float]:
    """Read every image record (header + payload) in the main process: (records, seconds)."""
    from train.data.layout import read_layout
    from train.data.recordio import RecordReader

    reader = RecordReader.open(folder)
    keys = read_layout(reader).image_keys.tolist()
    start = time.perf_counter()
    total = 0
    for key in keys:
        total += len(reader.read_record(key).payload)
    return len(keys), time.perf_counter() - start


def time_loader(folder: Path, kind: str, batch: int, workers: int) -> tuple[int, float, float]:
    """One pass over the pack through paddle.io.DataLoader in a fresh interpreter: (items, seconds to the
    first batch, which includes worker start-up, seconds for the whole pass).

    A fresh process per measurement, because Paddle can deadlock a worker it forks while threads of an
    earlier loader or training step are still live in the parent (seen here: a worker stuck in
    ``paddle::memory::Stat::Update``), and so that no measurement inherits another's state.
    """
    command = [sys.executable, str(Path(__file__).resolve()), "--measure", kind, "--pack", str(folder),
               "--batch", str(batch), "--workers", str(workers)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} loader with {workers} workers failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["items"], result["first"], result["seconds"]


def measure_loader(folder: Path, kind: str, batch: int, workers: int) -> dict:
    """The child side of ``time_loader``: iterate once and report the counts and times."""
    from paddle.io import DataLoader

    from train.data.datasets import RecordDataset

    dataset = raw_dataset(folder) if kind == "raw" else RecordDataset(folder)
    loader = DataLoader(dataset, batch_size=batch, shuffle=False, drop_last=False, num_workers=workers)
    start = time.perf_counter()
    first = None
    items = 0
    for _, labels in loader:
        items += labels.shape[0]
        first = first or time.perf_counter() - start
    return {"items": items, "first": first, "seconds": time.perf_counter() - start}


def raw_dataset(folder: Path):
    """A dataset yielding (payload length, label) per image record: reading and IPC without decoding."""
    from paddle.io import Dataset

    from train.data.datasets import RecordDataset

    class RawRecords(Dataset):
        def __init__(self):
            self.records = RecordDataset(folder)

        def __len__(self) -> int:
            return len(self.records)

        def __getitem__(self, index: int):
            record = self.records.reader.read_record(int(self.records.image_keys[index]))
            return np.int64(len(record.payload)), np.int64(record.header.label)

    return RawRecords()


def time_r50_step(batch: int, steps: int, classes: int = 1000) -> tuple[int, float]:
    """r50 forward + backward + Momentum step with a linear + cross-entropy head: (samples, seconds)."""
    import paddle
    import paddle.nn.functional as F

    from paddle_models import get_model

    rng = np.random.default_rng(0)
    model, head = get_model("r50"), paddle.nn.Linear(512, classes)
    params = model.parameters() + head.parameters()
    optimizer = paddle.optimizer.Momentum(learning_rate=0.1, momentum=0.9, parameters=params,
                                          weight_decay=5e-4)
    images = paddle.to_tensor(rng.uniform(-1, 1, (batch, 3, 112, 112)).astype(np.float32))
    labels = paddle.to_tensor(rng.integers(0, classes, batch).astype(np.int64))
    model.train()

    def step() -> None:
        loss = F.cross_entropy(head(model(images)), labels)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps, time.perf_counter() - start


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/data.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20_000, help="JPEGs in the synthetic pack")
    parser.add_argument("--batch", type=int, default=128, help="DataLoader batch size")
    parser.add_argument("--r50-batch", type=int, default=16, help="batch of the r50 training step")
    parser.add_argument("--r50-steps", type=int, default=3, help="timed r50 steps (after one warm-up)")
    parser.add_argument("--threads", type=int, help="CPU threads for Paddle (default: all cores)")
    parser.add_argument("--measure", choices=("raw", "decoded"), help=argparse.SUPPRESS)  # child process
    parser.add_argument("--pack", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_paddle_import()
    threads = set_threads(args.threads)
    if args.measure:
        print(json.dumps(measure_loader(args.pack, args.measure, args.batch, args.workers)))
        return 0
    rows = []

    def add(what: str, workers: int | str, items: int, seconds: float, first: float | None = None,
            goal: float | None = None, label: str = "") -> float:
        """A table row; loader rates are steady-state (first batch, with worker start-up, excluded)."""
        steady = items / seconds if first is None else (items - args.batch) / (seconds - first)
        rate = f"{steady:,.0f}" if steady >= 100 else f"{steady:.3g}"
        rows.append((what, workers, items, "" if first is None else f"{first:.2f}", f"{seconds:.2f}", rate,
                     label, "" if goal is None else ("yes" if steady >= goal else "NO")))
        return steady

    samples, seconds = time_r50_step(args.r50_batch, args.r50_steps)
    r50 = add(f"r50 train step (batch {args.r50_batch}, {args.r50_steps} steps)", "-", samples, seconds)
    goal = DECODE_FACTOR * r50
    decoded_label = f">= {goal:,.0f} (4x r50)" if goal >= 100 else f">= {goal:.3g} (4x r50)"
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        size = make_pack(Path(tmp), args.images)
        items, seconds = time_raw_reader(Path(tmp))
        add("raw records, RecordReader", "main", items, seconds, goal=RAW_TARGET, label=f">= {RAW_TARGET:,}")
        for workers in (0, 1, 2):
            items, first, seconds = time_loader(Path(tmp), "raw", args.batch, workers)
            add("raw records, DataLoader", workers, items, seconds, first, RAW_TARGET, f">= {RAW_TARGET:,}")
        for workers in (0, 1, 2):
            items, first, seconds = time_loader(Path(tmp), "decoded", args.batch, workers)
            add("decoded samples, DataLoader", workers, items, seconds, first, goal, decoded_label)
    versions = library_versions()
    print(f"# {args.images:,} synthetic 112x112 JPEGs ({size / args.images / 1024:.1f} KiB each), DataLoader "
          f"batch {args.batch}; {os.cpu_count()} CPU cores, {threads} Paddle threads; paddle "
          f"{versions.get('paddle')}, numpy {versions['numpy']}, opencv {versions.get('cv2')}")
    headers = ["measure", "workers", "items", "first batch s", "total s", "items/s", "target", "met"]
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True,
                   colalign=("left", "right", "right", "right", "right", "right", "left", "left")))
    print("items/s of loader rows: steady state, after the first batch (worker start-up in 'first batch s')")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main())
