"""What a training run tells people: InsightFace's log lines, ``metrics.jsonl``, VisualDL, a progress bar."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from train.engine import StepResult

log = logging.getLogger("train")


def setup_logging(output: Path, rank: int) -> None:
    """``Training: <time>-<message>`` lines on stdout and in ``output/training.log`` (rank 0); stderr is
    kept for the one-line error."""
    from converters.runtime import StdoutHandler

    log.setLevel(logging.INFO)
    log.handlers.clear()
    log.propagate = False
    if rank != 0:
        log.addHandler(logging.NullHandler())
        return
    fmt = logging.Formatter("Training: %(asctime)s-%(message)s")
    for handler in (StdoutHandler(), logging.FileHandler(output / "training.log", delay=True)):
        handler.setFormatter(fmt)
        log.addHandler(handler)


class Monitor:
    """Every step into ``metrics.jsonl``; every ``frequent`` steps one InsightFace-format line."""

    def __init__(self, output: Path, rank: int, frequent: int, total_batch: int, total_steps: int,
                 start_step: int, max_steps: int | None):
        self.rank, self.frequent, self.total_batch = rank, frequent, total_batch
        self.total_steps, self.start_step = total_steps, start_step
        self.last_step = min(total_steps, max_steps or total_steps)
        self.started = self.last_time = time.perf_counter()
        self.losses: list[float] = []
        self.metrics = open(output / "metrics.jsonl", "a") if rank == 0 else None  # noqa: SIM115 (closed in close())
        self.writer = self._visualdl(output) if rank == 0 else None
        self.bar = self._progress() if rank == 0 and sys.stderr.isatty() else None

    def _visualdl(self, output: Path):
        try:
            from visualdl import LogWriter
        except ImportError:
            return None
        return LogWriter(logdir=str(output / "visualdl"))

    def _progress(self):
        from tqdm import tqdm

        return tqdm(total=self.last_step, initial=self.start_step, unit="step", dynamic_ncols=True, leave=False)

    def step(self, result: StepResult, epoch: int, step_seconds: float, next_lr: float) -> None:
        """Record one iteration; ``next_lr`` is what InsightFace logs (the lr after the schedule's step)."""
        if self.rank != 0:
            return
        self.losses.append(result.loss)
        record: dict[str, Any] = {
            "step": result.step, "epoch": epoch, "loss": result.loss, "lr": result.lr,
            "samples_per_sec": self.total_batch / step_seconds if step_seconds > 0 else None,
            "grad_norm": result.grad_norm, "grad_scale": result.grad_scale}
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        if self.writer is not None:
            self.writer.add_scalar("loss", result.loss, result.step)
            self.writer.add_scalar("learning_rate", result.lr, result.step)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{result.loss:.4f}", lr=f"{result.lr:.5f}")
        if result.step % self.frequent == 0:
            self._line(result, epoch, next_lr)

    def _line(self, result: StepResult, epoch: int, next_lr: float) -> None:
        now = time.perf_counter()
        speed = self.frequent * self.total_batch / (now - self.last_time)
        done = result.step - self.start_step
        required = (now - self.started) / max(done, 1) * max(self.total_steps - result.step - 1, 0) / 3600
        loss = sum(self.losses) / len(self.losses)
        scale = f"   Fp16 Grad Scale: {result.grad_scale:.0f}" if result.grad_scale is not None else ""
        log.info(f"Speed {speed:.2f} samples/sec   Loss {loss:.4f}   LearningRate {next_lr:.6f}   "
                 f"Epoch: {epoch}   Global Step: {result.step}{scale}   Required: {required:.0f} hours")
        self.losses.clear()
        self.last_time = now

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.writer is not None:
            self.writer.close()
