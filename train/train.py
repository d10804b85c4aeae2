"""Train ArcFace/CosFace with Partial FC in Paddle, the way InsightFace's ``train_v2.py`` does.

    python train/train.py CONFIG [--init WEIGHTS] [--resume] [--output DIR] [--max-steps N]
                                 [--device cpu|gpu] [--threads N] [key=value ...]
    python -m paddle.distributed.launch --nproc_per_node N train/train.py CONFIG ...

``CONFIG`` is a name from train/configs/ (``ms1mv3_r50``, ``tiny_rec``, ...) or a path to a config file;
``key=value`` overrides any config key. Every rank writes ``checkpoint_rank<r>.pdckpt`` at each epoch end,
every ``save_every`` steps and when ``--max-steps`` stops the run; ``--resume`` continues exactly where
the last checkpoint was taken (on another number of processes: after ``python -m train.reshard``). Rank 0
writes ``metrics.jsonl``, ``training.log``, ``config.json`` and, at each epoch end and at the end,
``model.pdparams`` and ``model.pt`` (InsightFace's PyTorch state_dict).
Exit codes: 0 finished or stopped at --max-steps, 1 the loss diverged, 2 a problem with the input.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Run as a file, sys.path[0] is this folder, whose modules would shadow others even when the project is
# installed (train/train.py would be imported as `train`); the project root goes there instead, which also
# lets a plain clone run without installing.
if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from converters.cli import ArgumentParser, positive_int, thread_count  # noqa: E402
from converters.errors import UserError, run_cli  # noqa: E402
from train.config import TrainConfig, data_path, dump, ignored_warning, load_config  # noqa: E402

if TYPE_CHECKING:  # Paddle is imported only once setup_device has set the threads
    import numpy as np

    from train.engine import Trainer
    from train.monitor import Monitor

log = logging.getLogger("train")  # train.monitor's: set up by setup_logging


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="train.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="config name in train/configs/ or a config file path")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys")
    parser.add_argument("--init", type=Path, help="start from these backbone weights (.pdparams or PyTorch .pth)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --output")
    parser.add_argument("--output", help="output folder (default: the config's output, else work_dirs/<config>)")
    parser.add_argument("--max-steps", type=positive_int, help="stop after this global step (resumable)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="default cpu")
    parser.add_argument("--threads", type=thread_count,
                        help="CPU threads per process (default: $ARCFACE_THREADS, else all cores; shared out "
                             "between the processes)")
    return parser.parse_args(argv)


def setup_device(device: str, world_size: int, threads: int | None) -> None:
    from converters.runtime import default_threads, set_threads

    # torch is needed only to write model.pt (rank 0) or read a .pth --init, neither thread-bound
    set_threads(threads or max(1, default_threads() // world_size), torch=False)
    import paddle

    if device == "gpu":
        if not paddle.is_compiled_with_cuda():
            raise UserError(None, "--device gpu: this Paddle build has no CUDA support "
                            "(install paddlepaddle-gpu, or use --device cpu)")
        paddle.set_device(f"gpu:{paddle.distributed.ParallelEnv().dev_id}")
    else:
        paddle.set_device("cpu")


class _FreshRun:
    """What a new run (not ``--resume``) creates in its ``--output``, so that a run failing before its
    first checkpoint leaves nothing behind: the files it created, and the folder if it made it.

    Nothing is recorded until the run holds the folder's lock and has found no checkpoint there, so a
    refused second run or a run refused for an existing checkpoint never touches another run's files."""

    def __init__(self):
        self.folder: Path | None = None
        self.made_folder = False
        self.files: list[Path] = []
        self.checkpoint: Path | None = None

    def record(self, folder: Path, made_folder: bool, checkpoint: Path) -> None:
        self.folder, self.made_folder, self.checkpoint = folder, made_folder, checkpoint
        self.files = [folder / name for name in OUTPUT_FILES if not (folder / name).exists()]

    def remove(self) -> None:
        if self.folder is None or (self.checkpoint is not None and self.checkpoint.exists()):
            return
        for path in self.files:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        if self.made_folder:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only if empty


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fresh = _FreshRun()
    try:
        with contextlib.ExitStack() as held:  # the --output lock, released however the run ends
            return run(args, held, fresh)
    except BaseException:
        fresh.remove()  # after the lock is released, so the folder can go too
        raise


@dataclass
class Job:
    """What the training loop works with, built by ``run`` before the first step."""

    config: TrainConfig
    output: Path
    rank: int
    world_size: int
    checkpoint_file: Path  # this rank's
    trainer: Trainer  # backbone, Partial FC, optimizer, schedule, AMP scaler, global step
    scores: np.random.Generator  # Partial FC's sampling scores, the same stream on every rank
    loader: Any  # resumable DataLoader: loader.batch_sampler.set_position(epoch, batch)
    max_steps: int | None

    def save(self, epoch: int, batch: int) -> None:
        """This rank's checkpoint, to continue at ``batch`` of ``epoch``."""
        from train.checkpoint import TrainingCheckpoint

        TrainingCheckpoint.capture(self.trainer, self.scores, epoch, batch).save(self.checkpoint_file)

    def export(self, final: bool) -> None:
        """Rank 0: model.pdparams and model.pt, at every epoch end (as InsightFace) and when the run stops."""
        from train.weights import export_backbone

        if self.rank == 0:
            step = self.trainer.global_step
            pdparams, pt = export_backbone(self.trainer.backbone, self.output, self.config.network,
                                           self.config.embedding_size, step)
            if final:
                log.info(f"wrote {pdparams} and {pt} (step {step})")

    def check_labels(self, labels) -> None:
        if int(labels.max()) >= self.config.num_classes or int(labels.min()) < 0:
            raise UserError(data_path(self.config), f"label {int(labels.max())} outside [0, num_classes = "
                            f"{self.config.num_classes})")


def run(args: argparse.Namespace, held: contextlib.ExitStack, fresh: _FreshRun) -> int:
    """Check the inputs, build, resume, then train: the order InsightFace's ``train_v2.py`` follows."""
    config, output, world_size = check_inputs(args)
    setup_device(args.device, world_size, args.threads)
    from train.engine import TrainingDiverged
    from train.monitor import Monitor, setup_logging

    rank = init_distributed(world_size)
    checkpoint_file = claim_output(output, rank, args.resume, held, fresh)
    setup_logging(output, rank)
    amp = use_amp(config, args.device)
    note = ignored_warning(config)
    if note:
        log.warning(note)
    loader = make_loader(config, rank, world_size)
    trainer, scores = build(config, args.init, world_size, amp)
    epoch, batch = resume(trainer, scores, checkpoint_file, world_size) if args.resume else (0, 0)
    if rank == 0:
        record_start(config, output, world_size, trainer.global_step)
    job = Job(config, output, rank, world_size, checkpoint_file, trainer, scores, loader, args.max_steps)
    monitor = Monitor(output, rank, config.frequent, config.total_batch(world_size),
                      config.total_step(world_size), trainer.global_step, args.max_steps)
    try:
        return train(job, epoch, batch, monitor, verification(config, trainer.backbone, monitor, rank))
    except TrainingDiverged as err:
        kept = f"the last good checkpoint is {checkpoint_file}" if checkpoint_file.exists() \
            else "no checkpoint was written"
        print(f"error: {output}: {err}; training stopped, {kept}", file=sys.stderr)
        return 1
    finally:
        monitor.close()


def train(job: Job, start_epoch: int, start_batch: int, monitor: Monitor, verify) -> int:
    """The loop: per step the iteration, then logging, verification and checkpointing; at each epoch end a
    checkpoint and model.pdparams / model.pt. Stops after ``--max-steps`` (resumable)."""
    config, trainer = job.config, job.trainer
    if job.max_steps is not None and trainer.global_step >= job.max_steps:
        log.info(f"already at step {trainer.global_step} >= --max-steps {job.max_steps}")
        job.export(final=True)
        return 0
    for epoch in range(start_epoch, config.num_epoch):
        first = start_batch if epoch == start_epoch else 0
        job.loader.batch_sampler.set_position(epoch, first)
        for batch, (images, labels) in enumerate(job.loader, start=first + 1):  # batch: done in this epoch
            job.check_labels(labels)
            started = time.perf_counter()
            result = trainer.train_step(images, labels)
            monitor.step(result, epoch, time.perf_counter() - started, trainer.optimizer.get_lr())
            if verify is not None and result.step % config.verbose == 0:
                verify(result.step)
            stop = job.max_steps is not None and result.step >= job.max_steps
            if stop or (config.save_every and result.step % config.save_every == 0):
                at_end = batch == len(job.loader.batch_sampler)
                job.save(epoch + 1 if at_end else epoch, 0 if at_end else batch)
            if stop:
                log.info(f"stopped at --max-steps {job.max_steps}; resume with --resume")
                job.export(final=True)
                return 0
        job.save(epoch + 1, 0)
        job.export(final=epoch + 1 == config.num_epoch)
    log.info(f"finished: {trainer.global_step} steps")
    return 0


# ------------------------------------------------------------------------------------------ the steps of run
def check_inputs(args: argparse.Namespace) -> tuple[TrainConfig, Path, int]:
    """The config, the output folder and the world size; every problem found before any work starts."""
    from converters.outputs import check_outputs, prepare_output_dir
    from train.checkpoint import checkpoint_path

    overrides = list(args.overrides) + ([f"output={args.output}"] if args.output else [])
    config = load_config(args.config, overrides)
    if args.max_steps is not None and args.max_steps <= 0:
        raise UserError(None, f"--max-steps must be positive, got {args.max_steps}")
    if args.init and args.resume:
        raise UserError(args.init, "--init and --resume together: a resumed run restores its own weights")
    world_size = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    output = prepare_output_dir(config.output)  # a file, read-only, a name too long...
    written = [output / name for name in OUTPUT_FILES] + [checkpoint_path(output, r) for r in range(world_size)]
    check_outputs({"--init": args.init}, {"--output": written}, prepare=False)
    return config, output, world_size


def init_distributed(world_size: int) -> int:
    """This process's rank (the process group is initialised when there are several)."""
    import paddle.distributed as dist

    if world_size == 1:
        return 0
    dist.init_parallel_env()
    return dist.get_rank()


def claim_output(output: Path, rank: int, resume: bool, held: contextlib.ExitStack, fresh: _FreshRun) -> Path:
    """Create and lock ``output`` (one run per folder, each rank its own lock file); returns this rank's
    checkpoint file, which a new run must not find."""
    from converters.outputs import OutputLock, lock_names, output_error, remove_stale_temporaries
    from train.checkpoint import checkpoint_path

    made_folder = not output.exists()
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(output, err) from None
    held.enter_context(OutputLock(output, lock_names(rank)))  # before anything is written into the folder
    remove_stale_temporaries(output)  # half-written files of a killed run
    checkpoint_file = checkpoint_path(output, rank)
    if checkpoint_file.exists() and not resume:
        raise UserError(output, "already holds a training checkpoint: use --resume to continue it, or "
                        "another --output")
    if not resume and rank == 0:
        fresh.record(output, made_folder, checkpoint_file)
    return checkpoint_file


def use_amp(config: TrainConfig, device: str) -> bool:
    """fp16 = True trains with AMP on a GPU; on CPU (no float16 kernels) the run says so and uses float32."""
    amp = config.fp16 and device == "gpu"
    if config.fp16 and not amp:
        log.warning("fp16 = True: AMP needs a GPU (Paddle has no float16 CPU kernels); training in float32")
    if amp and config.pfc_update == "sparse":
        raise UserError(None, "fp16 with pfc_update = 'sparse' is not supported; use pfc_update = 'dense'")
    return amp


def make_loader(config: TrainConfig, rank: int, world_size: int):
    """This rank's resumable DataLoader over ``rec`` (checked against num_image and the batch size)."""
    from train.data.datasets import SyntheticDataset
    from train.data.loader import make_dataset
    from train.data.resumable import resumable_loader

    dataset = SyntheticDataset(config.num_image, seed=config.seed) if config.rec == "synthetic" \
        else make_dataset(data_path(config))
    if len(dataset) != config.num_image:
        raise UserError(data_path(config), f"holds {len(dataset)} images but the config says "
                        f"num_image = {config.num_image}")
    loader = resumable_loader(dataset, config.batch_size, rank, world_size, config.seed, config.num_workers)
    if config.steps_per_epoch(world_size) == 0 or len(loader.batch_sampler) == 0:
        raise UserError(None, f"batch_size {config.batch_size} x {world_size} processes exceeds the "
                        f"{len(dataset)} images: no complete batch")
    return loader


def build(config: TrainConfig, init: Path | None, world_size: int,
          amp: bool) -> tuple[Trainer, np.random.Generator]:
    """Backbone (from ``--init`` weights if given), Partial FC, optimizer and schedule, with identical
    initial weights on every rank (same seed), and the Partial FC sampling generator."""
    import numpy as np
    import paddle

    from paddle_models import get_model
    from train.engine import Trainer
    from train.weights import init_backbone

    paddle.seed(config.seed)
    backbone = get_model(config.network, dropout=config.dropout, fp16=config.fp16,
                         num_features=config.embedding_size)
    if init:
        init_backbone(backbone, init, config.network, config.embedding_size)
    scores = np.random.default_rng(config.seed)
    trainer = Trainer(config, backbone, config.total_step(world_size), config.warmup_step(world_size),
                      score_source=scores.random, amp=amp)
    return trainer, scores


def resume(trainer: Trainer, scores: np.random.Generator, checkpoint_file: Path,
           world_size: int) -> tuple[int, int]:
    """Restore this rank's checkpoint into ``trainer`` and ``scores``; returns where to continue:
    (epoch, batch)."""
    from train.checkpoint import TrainingCheckpoint

    checkpoint = TrainingCheckpoint.load(checkpoint_file)
    checkpoint.check_resumable(trainer.config, world_size, checkpoint_file)
    checkpoint.restore(trainer, scores, checkpoint_file)
    log.info(f"resumed from {checkpoint_file} at step {checkpoint.step} (epoch {checkpoint.epoch}, "
             f"batch {checkpoint.batch})")
    return checkpoint.epoch, checkpoint.batch


def record_start(config: TrainConfig, output: Path, world_size: int, step: int) -> None:
    """Rank 0: drop metrics of steps after ``step`` (a killed run may have logged them; a new run starts at
    0), write config.json and log the config as InsightFace does."""
    from converters.outputs import atomic_output

    _truncate_metrics(output / "metrics.jsonl", step)
    with atomic_output(output / "config.json") as tmp:
        tmp.write_text(dump(config) + "\n")
    for key, value in config.to_dict().items():
        log.info(": " + key.ljust(25) + str(value))
    log.info(f": {'world_size'.ljust(25)}{world_size}")
    log.info(f": {'total_step'.ljust(25)}{config.total_step(world_size)}")


OUTPUT_FILES = ("model.pdparams", "model.pt", "config.json", "metrics.jsonl", "training.log")


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None  # e.g. the half-written last line of a killed run


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics of steps after the checkpoint (a killed run may have logged them)."""
    from converters.outputs import atomic_output

    if path.exists():
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if (n := _step_of(ln)) is not None and n <= step]
        with atomic_output(path) as tmp:
            tmp.write_text("".join(ln + "\n" for ln in lines))


def verification(config: TrainConfig, backbone, monitor: Monitor, rank: int):
    """The InsightFace verification callback on ``val_targets`` beside the data, or None."""
    if rank != 0 or not config.val_targets:
        return None
    from train.verification import VerificationCallback

    return VerificationCallback(config, backbone, monitor)


if __name__ == "__main__":
    run_cli(lambda: main())
