"""Training-step throughput on CPU: Paddle (train/engine.py) against the PyTorch reference loop in the same
run, with a breakdown of where each framework's step time goes.

    python bench/train.py [--archs r18,r50] [--batch 32] [--steps 3] [--classes 1000] [--threads N]

A step is InsightFace's iteration: backbone forward, Partial FC (sample rate 1.0, ArcFace) forward and
backward, backbone backward, clipping and an SGD-momentum step. The breakdown times the same work in
separate phases: backbone forward, classifier forward+backward (on detached embeddings), backbone
backward, optimizer (clip + step).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


PHASES = ("backbone forward", "classifier fwd+bwd", "backbone backward", "optimizer")


def measure(step, phases, steps: int) -> tuple[float, dict[str, float]]:
    """Median seconds of ``steps`` whole steps, and of each phase over ``steps`` phase-timed steps."""
    full = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        full.append(time.perf_counter() - start)
    timed = [phases() for _ in range(steps)]
    return statistics.median(full), {name: statistics.median(t[i] for t in timed) for i, name in enumerate(PHASES)}


def paddle_side(arch: str, batch: int, classes: int, steps: int):
    import paddle

    from paddle_models import get_model
    from train.config import TrainConfig
    from train.engine import Trainer

    config = TrainConfig(network=arch, num_classes=classes, num_image=10**6, batch_size=batch, rec="synthetic")
    paddle.seed(0)
    trainer = Trainer(config, get_model(arch), total_steps=10**6, warmup_steps=0)
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.uniform(-1, 1, (batch, 3, 112, 112)).astype("float32"))
    y = paddle.to_tensor(rng.integers(0, classes, batch))
    trainer.train_step(x, y)  # warm-up

    def phases():
        t0 = time.perf_counter()
        emb = trainer.backbone(x)
        t1 = time.perf_counter()
        detached = emb.detach()
        detached.stop_gradient = False
        trainer.pfc(detached, y).backward()
        t2 = time.perf_counter()
        emb.backward(detached.grad)
        t3 = time.perf_counter()
        trainer.clip_backbone_grads(5.0)
        trainer.optimizer.step()
        trainer.optimizer.clear_grad()
        return t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3

    return measure(lambda: trainer.train_step(x, y), phases, steps)


def torch_side(arch: str, batch: int, classes: int, steps: int):
    import torch

    import torch_reference
    from torch_reference.losses import CombinedMarginLoss
    from torch_reference.partial_fc import PartialFC
    from torch_reference.training import InsightFaceLoop

    torch.manual_seed(0)
    backbone = torch_reference.get_model(arch)
    pfc = PartialFC(CombinedMarginLoss(64.0, 1.0, 0.5, 0.0), 512, classes)
    loop = InsightFaceLoop(backbone, pfc, lr=0.1, weight_decay=5e-4, warmup_steps=0, total_steps=10**6)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(-1, 1, (batch, 3, 112, 112)).astype("float32"))
    y = torch.from_numpy(rng.integers(0, classes, batch))
    loop.train_step(x, y)  # warm-up

    def phases():
        t0 = time.perf_counter()
        emb = backbone(x)
        t1 = time.perf_counter()
        detached = emb.detach().requires_grad_()
        pfc(detached, y).backward()
        t2 = time.perf_counter()
        emb.backward(detached.grad)
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(backbone.parameters(), 5.0)
        loop.optimizer.step()
        loop.optimizer.zero_grad()
        return t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3

    return measure(lambda: loop.train_step(x, y), phases, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="r18,r50")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    from converters.runtime import set_threads

    threads = set_threads(args.threads)
    from tabulate import tabulate

    rows, breakdown = [], []
    for arch in args.archs.split(","):
        p_step, p_phases = paddle_side(arch, args.batch, args.classes, args.steps)
        t_step, t_phases = torch_side(arch, args.batch, args.classes, args.steps)
        rows.append([arch, args.batch, f"{args.batch / p_step:.2f}", f"{args.batch / t_step:.2f}",
                     f"{p_step:.2f}", f"{t_step:.2f}", f"{p_step / t_step:.2f}"])
        for phase in p_phases:
            breakdown.append([arch, phase, f"{p_phases[phase]:.3f}", f"{t_phases[phase]:.3f}",
                              f"{p_phases[phase] / t_phases[phase]:.1f}"])
        print(f"{arch} done", file=sys.stderr, flush=True)
    print(tabulate(rows, headers=["arch", "batch", "Paddle samples/s", "PyTorch samples/s", "Paddle s/step",
                                  "PyTorch s/step", "Paddle / PyTorch time"], tablefmt="github"))
    print()
    print(tabulate(breakdown, headers=["arch", "phase", "Paddle s", "PyTorch s", "ratio"], tablefmt="github"))
    print(f"\n{threads} threads, {args.classes} classes, median of {args.steps} steps after one warm-up step")


if __name__ == "__main__":
    main()
