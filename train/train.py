"""Train ArcFace/CosFace with Partial FC in Paddle, the way InsightFace's ``train_v2.py`` does.

    python train/train.py CONFIG [--init WEIGHTS] [--resume] [--output DIR] [--max-steps N]
                                 [--device cpu|gpu] [--threads N] [key=value ...]
    python -m paddle.distributed.launch --nproc_per_node N train/train.py CONFIG ...

``CONFIG`` is a name from train/configs/ (``ms1mv3_r50``, ``tiny_rec``, ...) or a path to a config file;
``key=value`` overrides any config key. Every rank writes ``checkpoint_rank<r>.pdckpt`` at each epoch end,
every ``save_every`` steps and when ``--max-steps`` stops the run; ``--resume`` continues exactly where
the last checkpoint was taken. Rank 0 writes ``metrics.jsonl``, ``training.log``, ``config.json`` and, at
each epoch end and at the end, ``model.pdparams`` and ``model.pt`` (InsightFace's PyTorch state_dict).
Exit codes: 0 finished or stopped at --max-steps, 1 the loss diverged, 2 a problem with the input.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

# Run as a file, sys.path[0] is this folder, whose modules would shadow others even when the project is
# installed (train/train.py would be imported as `train`); the project root goes there instead, which also
# lets a plain clone run without installing.
if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from converters.cli import ArgumentParser, positive_int, thread_count  # noqa: E402
from converters.errors import UserError, run_cli  # noqa: E402


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
    parser.add_argument("--threads", type=thread_count, help="CPU threads per process (default: cores / processes)")
    return parser.parse_args(argv)


def setup_device(device: str, world_size: int, threads: int | None) -> None:
    from converters.runtime import set_threads

    # torch is needed only to write model.pt (rank 0) or read a .pth --init, neither thread-bound
    set_threads(threads or max(1, (os.cpu_count() or 1) // world_size), torch=False)
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
            return _main(args, held, fresh)
    except BaseException:
        fresh.remove()  # after the lock is released, so the folder can go too
        raise


def _main(args: argparse.Namespace, held: contextlib.ExitStack, fresh: _FreshRun) -> int:
    from converters.outputs import (
        OutputLock,
        atomic_output,
        check_outputs,
        lock_names,
        output_error,
        prepare_output_dir,
        remove_stale_temporaries,
    )
    from train.checkpoint import (
        RESUME_CONFIG_KEYS,
        check_state_shapes,
        checkpoint_path,
        load_checkpoint,
        optimizer_state,
        restore_optimizer_state,
        save_checkpoint,
    )
    from train.config import dump, load_config

    overrides = list(args.overrides) + ([f"output={args.output}"] if args.output else [])
    config = load_config(args.config, overrides)
    if args.max_steps is not None and args.max_steps <= 0:
        raise UserError(None, f"--max-steps must be positive, got {args.max_steps}")
    if args.init and args.resume:
        raise UserError(args.init, "--init and --resume together: a resumed run restores its own weights")
    world_size = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    output = prepare_output_dir(config.output)  # before any work: a file, read-only, a name too long...
    written = [output / name for name in OUTPUT_FILES] + [checkpoint_path(output, r) for r in range(world_size)]
    check_outputs({"--init": args.init}, {"--output": written}, prepare=False)
    setup_device(args.device, world_size, args.threads)

    import numpy as np
    import paddle
    import paddle.distributed as dist

    from paddle_models import get_model
    from train.data.datasets import SyntheticDataset
    from train.data.loader import make_dataset
    from train.data.resumable import resumable_loader
    from train.engine import Trainer, TrainingDiverged
    from train.monitor import Monitor, log, setup_logging
    from train.weights import backbone_arrays, export_backbone, init_backbone

    if world_size > 1:
        dist.init_parallel_env()
    rank = dist.get_rank() if world_size > 1 else 0
    made_folder = not output.exists()
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(output, err) from None
    # one run per folder: taken before anything is written into it (each rank locks its own file)
    held.enter_context(OutputLock(output, lock_names(rank)))
    remove_stale_temporaries(output)  # half-written files of a killed run
    ckpt_file = checkpoint_path(output, rank)
    if ckpt_file.exists() and not args.resume:
        raise UserError(output, "already holds a training checkpoint: use --resume to continue it, or "
                        "another --output")
    if not args.resume and rank == 0:
        fresh.record(output, made_folder, ckpt_file)
    setup_logging(output, rank)
    amp = config.fp16 and args.device == "gpu"
    if config.fp16 and not amp:
        log.warning("fp16 = True: AMP needs a GPU (Paddle has no float16 CPU kernels); training in float32")
    if amp and config.pfc_update == "sparse":
        raise UserError(None, "fp16 with pfc_update = 'sparse' is not supported; use pfc_update = 'dense'")

    # data
    from train.config import data_path

    dataset = SyntheticDataset(config.num_image, seed=config.seed) if config.rec == "synthetic" \
        else make_dataset(data_path(config))
    if len(dataset) != config.num_image:
        raise UserError(data_path(config), f"holds {len(dataset)} images but the config says "
                        f"num_image = {config.num_image}")
    loader = resumable_loader(dataset, config.batch_size, rank, world_size, config.seed, config.num_workers)
    steps_per_epoch = config.steps_per_epoch(world_size)
    if steps_per_epoch == 0 or len(loader.batch_sampler) == 0:
        raise UserError(None, f"batch_size {config.batch_size} x {world_size} processes exceeds the "
                        f"{len(dataset)} images: no complete batch")
    total_steps, warmup_steps = config.total_step(world_size), config.warmup_step(world_size)

    # model, classifier, optimizer (identical initial weights on every rank: same seed)
    paddle.seed(config.seed)
    backbone = get_model(config.network, dropout=config.dropout, fp16=config.fp16,
                         num_features=config.embedding_size)
    if args.init:
        init_backbone(backbone, args.init, config.network, config.embedding_size)
    scores = np.random.default_rng(config.seed)  # Partial FC's sampling scores, the same on every rank
    trainer = Trainer(config, backbone, total_steps, warmup_steps, score_source=scores.random, amp=amp)
    named = {**{f"backbone/{k}": p for k, p in backbone.named_parameters()},
             **{f"pfc/{k}": p for k, p in trainer.pfc.named_parameters()}}

    start_epoch, start_batch = 0, 0
    if args.resume:
        state = load_checkpoint(ckpt_file)
        if state["world_size"] != world_size:
            raise UserError(ckpt_file, f"written by {state['world_size']} processes, resumed with {world_size}; "
                            "re-shard the Partial FC (train.partial_fc.reshard) or use the same world size")
        for key in RESUME_CONFIG_KEYS:
            if state["config"][key] != getattr(config, key):
                raise UserError(ckpt_file, f"{key} = {state['config'][key]!r} in the checkpoint, "
                                f"{getattr(config, key)!r} now")
        from converters.checkpoint import PaddleWeights
        from converters.models import load_paddle_weights
        check_state_shapes(ckpt_file, "backbone", state["backbone"], backbone)
        check_state_shapes(ckpt_file, "pfc", state["pfc"], trainer.pfc)
        load_paddle_weights(backbone, PaddleWeights(state["backbone"]))
        trainer.pfc.set_state_dict(state["pfc"])
        restore_optimizer_state(trainer.optimizer, named, state["optimizer"], ckpt_file)  # and the schedule
        scores.bit_generator.state = state["rng"]["pfc_scores"]
        if trainer.scaler is not None and state.get("scaler"):
            trainer.scaler.load_state_dict(state["scaler"])
        trainer.global_step = state["step"]
        start_epoch, start_batch = state["epoch"], state["batch"]
        log.info(f"resumed from {ckpt_file} at step {trainer.global_step} (epoch {start_epoch}, batch {start_batch})")
        _truncate_metrics(output / "metrics.jsonl", trainer.global_step)
    elif rank == 0:
        _truncate_metrics(output / "metrics.jsonl", 0)  # a new run: no steps of an earlier, unsaved one
    if rank == 0:
        with atomic_output(output / "config.json") as tmp:
            tmp.write_text(dump(config) + "\n")
        for key, value in config.to_dict().items():
            log.info(": " + key.ljust(25) + str(value))
        log.info(f": {'world_size'.ljust(25)}{world_size}")
        log.info(f": {'total_step'.ljust(25)}{total_steps}")

    def save(epoch: int, batch: int) -> None:
        save_checkpoint(ckpt_file, {
            "step": trainer.global_step, "epoch": epoch, "batch": batch, "world_size": world_size,
            "config": config.to_dict(), "backbone": backbone_arrays(backbone), "pfc": trainer.pfc.state_dict(),
            "optimizer": optimizer_state(trainer.optimizer, named),
            "rng": {"pfc_scores": scores.bit_generator.state},
            "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None})

    def export(final: bool) -> None:
        """model.pdparams and model.pt: at every epoch end (as InsightFace) and when the run stops."""
        if rank == 0:
            iterations = trainer.global_step
            pdparams, pt = export_backbone(backbone, output, config.network, config.embedding_size, iterations)
            if final:
                log.info(f"wrote {pdparams} and {pt} (step {iterations})")

    monitor = Monitor(output, rank, config.frequent, config.total_batch(world_size), total_steps,
                      trainer.global_step, args.max_steps)
    verify = _verification(config, backbone, monitor, rank)
    try:
        if args.max_steps is not None and trainer.global_step >= args.max_steps:
            log.info(f"already at step {trainer.global_step} >= --max-steps {args.max_steps}")
            export(final=True)
            return 0
        for epoch in range(start_epoch, config.num_epoch):
            loader.batch_sampler.set_position(epoch, start_batch if epoch == start_epoch else 0)
            batch = start_batch if epoch == start_epoch else 0
            for images, labels in loader:
                if int(labels.max()) >= config.num_classes or int(labels.min()) < 0:
                    raise UserError(data_path(config), f"label {int(labels.max())} outside [0, num_classes = "
                                    f"{config.num_classes})")
                started = time.perf_counter()
                try:
                    result = trainer.train_step(images, labels)
                except TrainingDiverged as err:
                    kept = f"the last good checkpoint is {ckpt_file}" if ckpt_file.exists() else "no checkpoint was written"
                    print(f"error: {output}: {err}; training stopped, {kept}", file=sys.stderr)
                    return 1
                batch += 1
                monitor.step(result, epoch, time.perf_counter() - started, trainer.optimizer.get_lr())
                if verify is not None and result.step % config.verbose == 0:
                    verify(result.step)
                stop = args.max_steps is not None and result.step >= args.max_steps
                if stop or (config.save_every and result.step % config.save_every == 0):
                    at_end = batch == len(loader.batch_sampler)
                    save(epoch + 1 if at_end else epoch, 0 if at_end else batch)
                if stop:
                    log.info(f"stopped at --max-steps {args.max_steps}; resume with --resume")
                    export(final=True)
                    return 0
            save(epoch + 1, 0)
            export(final=epoch + 1 == config.num_epoch)
        log.info(f"finished: {trainer.global_step} steps")
        return 0
    finally:
        monitor.close()


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


def _verification(config, backbone, monitor, rank):
    """The InsightFace verification callback on ``val_targets`` beside the data, or None."""
    if rank != 0 or not config.val_targets:
        return None
    from train.verification import VerificationCallback

    return VerificationCallback(config, backbone, monitor)


if __name__ == "__main__":
    run_cli(lambda: main())
