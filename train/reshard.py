"""Re-shard a training run's checkpoints for another number of processes.

    python -m train.reshard --src RUN --world-size N [--out NEW_RUN]
    python train/reshard.py --src RUN --world-size N [--out NEW_RUN]

--src is a run's output folder holding checkpoint_rank<r>.pdckpt of each of its W processes; it is only
read. --out (default: RUN-<N>ranks beside it), a new folder, receives N checkpoints, and
"python train/train.py CONFIG --resume --output NEW_RUN" on N processes continues the run.

The Partial FC class centres and their optimizer state (SGD momentum, AdamW moments, sparse mode's
weight_mom) are joined in class order and split again for N ranks, row for row. The backbone, its optimizer
state, the sampling generator and the AMP scaler are rank 0's (BatchNorm running statistics are kept per
process; model.pt holds rank 0's). The run continues at the first batch of N processes in its epoch
whose samples the W processes had not all taken (each epoch's order is the same for any W, so at most one
global batch of N processes is trained twice); the step counter and the learning-rate schedule continue
from there with N processes' steps per epoch. Exit codes: 0 done, 2 a problem with the input (one line).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as a file, sys.path[0] is this folder, whose train.py would shadow the `train` package: the project
# root goes there instead (see train/train.py).
if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402

from converters.cli import ArgumentParser, positive_int  # noqa: E402
from converters.errors import UserError, run_cli  # noqa: E402
from train.checkpoint import TrainingCheckpoint, checkpoint_path, processes, resharded_folder  # noqa: E402


def read_run(src: Path) -> list[TrainingCheckpoint]:
    """Every rank's checkpoint of the run in ``src``, checked to be one run at one step (of the ranks
    after 0, only the Partial FC state and its optimizer state)."""
    if not src.is_dir():
        raise UserError(src, "no such folder (expected a training output folder)")
    first_path = checkpoint_path(src, 0)
    if not first_path.is_file():
        raise UserError(first_path, "no such file: --src is not a training output folder with checkpoints")
    run = [TrainingCheckpoint.load(first_path)]
    first = run[0]
    for rank in range(1, first.world_size):
        path = checkpoint_path(src, rank)
        if not path.is_file():
            raise UserError(path, f"no such file: the run had {processes(first.world_size)} and re-sharding "
                            "needs the checkpoint of each")
        ckpt = TrainingCheckpoint.load(path)
        for key in ("world_size", "step", "epoch", "batch", "config"):
            if getattr(ckpt, key) != getattr(first, key):
                shown = "" if key == "config" else f" {getattr(ckpt, key)} (rank 0: {getattr(first, key)})"
                raise UserError(path, f"{key}{shown} differs from {checkpoint_path(src, 0).name}'s: "
                                "checkpoints of different runs or steps")
        # only rank 0's backbone and optimizer state are kept: one copy in memory, not one per rank
        ckpt.backbone = {}
        ckpt.optimizer = {k: v for k, v in ckpt.optimizer.items()
                          if k.startswith("pfc/") or k == "master_weights"}
        run.append(ckpt)
    for rank, ckpt in enumerate(run):
        layout = [int(v) for v in np.asarray(ckpt.pfc.get("shard_layout", [])).ravel().tolist()]
        expected = [int(first.config["num_classes"]), first.world_size, rank,
                    int(first.config["embedding_size"])]
        if layout != expected:
            raise UserError(checkpoint_path(src, rank), f"Partial FC shard_layout {layout}, expected "
                            f"{expected} ([num_classes, world_size, rank, embedding_size])")
    return run


def _row_entries(ckpt: TrainingCheckpoint, rows: int, dim: int) -> dict[tuple[str, str], np.ndarray]:
    """The arrays with one row per class of the rank's shard: the Partial FC weight (and sparse momentum),
    its optimizer accumulators and its AMP master weight, keyed (field, key)."""
    from train.partial_fc import ROW_KEYS

    entries = {("pfc", k): v for k, v in ckpt.pfc.items() if k in ROW_KEYS}
    for key, value in ckpt.optimizer.items():
        if key.startswith("pfc/") and isinstance(value, np.ndarray) and value.shape == (rows, dim):
            entries[("optimizer", key)] = value
    for key, value in ckpt.optimizer.get("master_weights", {}).items():
        if key.startswith("pfc/") and value.shape == (rows, dim):
            entries[("master_weights", key)] = value
    return entries


def _schedule_state(config, world_size: int, step: int, saved: dict) -> dict:
    """The learning-rate schedule of ``config`` on ``world_size`` processes after ``step`` iterations."""
    from train.lr_scheduler import PolynomialLRWarmup

    scheduler = PolynomialLRWarmup(config.lr, config.warmup_step(world_size), config.total_step(world_size),
                                   power=float(saved.get("power", 1.0)))
    for _ in range(step):
        scheduler.step()
    return dict(scheduler.state_dict())


def reshard_run(run: list[TrainingCheckpoint], world_size: int, src: Path) -> list[TrainingCheckpoint]:
    """``run`` (every rank's checkpoint, rank order) as the checkpoints of ``world_size`` ranks."""
    from train.config import FIELD_TYPES, TrainConfig
    from train.partial_fc import shard_range

    first = run[0]
    config = TrainConfig(**{k: v for k, v in first.config.items() if k in FIELD_TYPES})
    classes, dim, old_world = config.num_classes, config.embedding_size, first.world_size
    if classes < world_size:
        raise UserError(None, f"--world-size {world_size}: {classes} classes cannot be split over "
                        f"{processes(world_size)}")
    per_epoch = -(-config.num_image // world_size) // config.batch_size  # the loader's batches per epoch
    if per_epoch == 0 or config.steps_per_epoch(world_size) == 0:
        raise UserError(None, f"--world-size {world_size}: batch_size {config.batch_size} x "
                        f"{processes(world_size)} exceeds the {config.num_image} images: no complete batch")
    rows = []
    for rank, ckpt in enumerate(run):
        entries = _row_entries(ckpt, shard_range(classes, old_world, rank)[1], dim)
        if rank and entries.keys() != rows[0].keys():
            raise UserError(checkpoint_path(src, rank), "its Partial FC state has other entries than "
                            "rank 0's")
        rows.append(entries)
    merged = {key: np.concatenate([entries[key] for entries in rows]) for key in rows[0]}

    epoch, batch = first.epoch, first.batch * old_world // world_size  # samples taken, in new batches
    if batch >= per_epoch:
        epoch, batch = epoch + 1, 0
    step = epoch * per_epoch + batch
    schedule = _schedule_state(config, world_size, step, first.optimizer.get("LR_Scheduler", {}))
    resharded = []
    for rank in range(world_size):
        start, count = shard_range(classes, world_size, rank)
        pfc = {**first.pfc, "shard_layout": np.array([classes, world_size, rank, dim], dtype=np.int64)}
        optimizer = {**first.optimizer, "LR_Scheduler": dict(schedule)}
        targets = {"pfc": pfc, "optimizer": optimizer}
        if "master_weights" in optimizer:
            targets["master_weights"] = optimizer["master_weights"] = dict(optimizer["master_weights"])
        for (field, key), full in merged.items():
            targets[field][key] = np.ascontiguousarray(full[start:start + count])
        resharded.append(TrainingCheckpoint(
            step=step, epoch=epoch, batch=batch, world_size=world_size, config=first.config,
            backbone=first.backbone, pfc=pfc, optimizer=optimizer, rng=first.rng, scaler=first.scaler))
    return resharded


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="reshard.py", description=__doc__.split("\n\n")[0],
                            epilog=__doc__.split("\n\n", 2)[2],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="the run's output folder (its checkpoints)")
    parser.add_argument("--world-size", type=positive_int, required=True, help="the new number of processes")
    parser.add_argument("--out", type=Path, help="new output folder (default: SRC-<N>ranks beside SRC)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from converters.outputs import atomic_directory, check_outputs

    args = parse_args(argv)
    out = args.out if args.out is not None else resharded_folder(args.src, args.world_size)
    check_outputs({"--src": args.src}, {"--out": out}, folders=True)  # before any work: never into the input
    run = read_run(args.src)
    resharded = reshard_run(run, args.world_size, args.src)
    with atomic_directory(out) as tmp:
        for rank, ckpt in enumerate(resharded):
            ckpt.save(checkpoint_path(tmp, rank))
    first, new = run[0], resharded[0]
    print(f"re-sharded step {first.step} (epoch {first.epoch}, batch {first.batch}) of "
          f"{processes(first.world_size)} into {out}: step {new.step} (epoch {new.epoch}, batch {new.batch}) "
          f"of {processes(args.world_size)}; continue with: python train/train.py CONFIG --resume "
          f"--output {out}")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main())
