"""Float32 drift between the Paddle training loop and InsightFace's PyTorch loop over 20 steps.

    python bench/train_drift.py [--arch r18] [--steps 20] [--batch 8] [--sample-rate 1.0]

Both start from the same converted weights and see the same batches and sampled classes; in float64 the
two agree to ~1e-14 per step (parity_tests/test_training_step.py). In float32 each framework rounds
differently and train-mode BatchNorm amplifies it, so the runs drift apart; this prints how far, per step:
the loss, the worst parameter (relative L2 over the tensor) and the Partial FC weight. A second table
puts the drift in context: each framework's float32 gradients of the first step against a float64
PyTorch computation of the same step. Both frameworks are ~1e-3 off on the early layers (train-mode
BatchNorm backward is ill-conditioned on small batches), so float32 runs cannot stay closer than that.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="r18")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--sample-rate", type=float, default=1.0)
    args = parser.parse_args()
    from converters.runtime import set_threads

    set_threads(None)
    import paddle
    import torch
    from tabulate import tabulate

    from converters.demo import demo_state_dict
    from converters.mapping import torch_to_paddle, trainable_pairs
    from converters.models import paddle_model, torch_model
    from torch_reference.losses import CombinedMarginLoss
    from torch_reference.partial_fc import PartialFC
    from torch_reference.training import InsightFaceLoop
    from train.config import TrainConfig
    from train.engine import Trainer

    arrays = demo_state_dict(args.arch, seed=5, batches=1)
    config = TrainConfig(network=args.arch, num_classes=args.classes, num_image=10**6, batch_size=args.batch,
                         rec="synthetic", sample_rate=args.sample_rate, lr=0.1, weight_decay=5e-4)
    trainer = Trainer(config, paddle_model(args.arch, torch_to_paddle(arrays, args.arch, 512, "demo")),
                      total_steps=args.steps * 2, warmup_steps=2, score_source=np.random.default_rng(1).random)
    pfc = PartialFC(CombinedMarginLoss(64.0, 1.0, 0.5, 0.0), 512, args.classes, args.sample_rate,
                    score_source=np.random.default_rng(1).random)
    with torch.no_grad():
        pfc.weight.copy_(torch.from_numpy(trainer.pfc.weight.numpy()))
    loop = InsightFaceLoop(torch_model(args.arch, arrays), pfc, lr=0.1, weight_decay=5e-4, warmup_steps=2,
                           total_steps=args.steps * 2)
    pairs = trainable_pairs(args.arch)
    data = np.random.default_rng(0)
    rows = []
    for step in range(1, args.steps + 1):
        x = data.uniform(-1, 1, (args.batch, 3, 112, 112)).astype("float32")
        y = data.integers(0, args.classes, args.batch)
        p_loss = trainer.train_step(paddle.to_tensor(x), paddle.to_tensor(y)).loss
        t_loss = loop.train_step(torch.from_numpy(x), torch.from_numpy(y))
        p_state, t_state = trainer.backbone.state_dict(), loop.backbone.state_dict()
        worst = max(((rel(to_torch(p_state[pk].numpy()), t_state[tk].numpy()), tk) for tk, pk, to_torch in pairs))
        rows.append([step, f"{t_loss:.5f}", f"{abs(p_loss - t_loss) / abs(t_loss):.1e}", f"{worst[0]:.1e}",
                     worst[1], f"{rel(trainer.pfc.weight.numpy(), loop.pfc.weight.detach().numpy()):.1e}"])
        print(f"step {step}", file=sys.stderr, flush=True)
    print(tabulate(rows, headers=["step", "PyTorch loss", "loss rel diff", "worst weight rel diff", "at",
                                  "Partial FC weight rel diff"], tablefmt="github", disable_numparse=True))
    print()
    print(first_step_gradient_error(args, arrays, pairs))
    print(f"\n{args.arch}, float32, batch {args.batch}, {args.classes} classes, sample rate {args.sample_rate}, "
          f"SGD lr 0.1 (warmup 2) momentum 0.9 wd 5e-4, seeded random images")


def first_step_gradient_error(args, arrays, pairs) -> str:
    """Float32 gradients of both frameworks against float64 PyTorch on one batch, as a table."""
    import paddle
    import torch
    from tabulate import tabulate

    from converters.mapping import torch_to_paddle
    from converters.models import paddle_model, torch_model
    from torch_reference.losses import CombinedMarginLoss
    from torch_reference.partial_fc import PartialFC
    from train.losses import ArcFace
    from train.partial_fc import PartialFC as PaddlePartialFC

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (args.batch, 3, 112, 112))
    y = rng.integers(0, args.classes, args.batch)
    centres = rng.normal(0, 0.01, (args.classes, 512))

    def torch_grads(dtype: str) -> dict[str, np.ndarray]:
        model = torch_model(args.arch, arrays, dtype=dtype).train()
        pfc = PartialFC(CombinedMarginLoss(64.0, 1.0, 0.5, 0.0), 512, args.classes).to(getattr(torch, dtype))
        with torch.no_grad():
            pfc.weight.copy_(torch.from_numpy(centres))
        pfc(model(torch.from_numpy(x).to(getattr(torch, dtype))), torch.from_numpy(y)).backward()
        return {k: p.grad.double().numpy() for k, p in model.named_parameters() if p.grad is not None}

    model = paddle_model(args.arch, torch_to_paddle(arrays, args.arch, 512, "demo"))
    model.train()
    pfc = PaddlePartialFC(ArcFace(), 512, args.classes)
    pfc.weight.set_value(centres.astype("float32"))
    pfc(model(paddle.to_tensor(x.astype("float32"))), paddle.to_tensor(y)).backward()
    params = dict(model.named_parameters())
    paddle32 = {tk: to_torch(params[pk].grad.numpy()) for tk, pk, to_torch in pairs}
    torch64, torch32 = torch_grads("float64"), torch_grads("float32")
    errors = [(tk, rel(torch32[tk], torch64[tk]), rel(paddle32[tk], torch64[tk])) for tk, _, _ in pairs
              if np.linalg.norm(torch64[tk]) > 1e-10]  # gradients zero in theory are left out
    rows = [["median over parameters", f"{np.median([e[1] for e in errors]):.1e}",
             f"{np.median([e[2] for e in errors]):.1e}"]]
    for key in ("conv1.weight", "layer1.0.conv1.weight", "layer4.1.conv2.weight", "fc.weight"):
        rows += [[key, f"{rel(torch32[key], torch64[key]):.1e}", f"{rel(paddle32[key], torch64[key]):.1e}"]
                 for _ in [0] if key in torch32]
    worst_t, worst_p = max(errors, key=lambda e: e[1]), max(errors, key=lambda e: e[2])
    rows += [[f"worst (PyTorch: {worst_t[0]})", f"{worst_t[1]:.1e}", ""],
             [f"worst (Paddle: {worst_p[0]})", "", f"{worst_p[2]:.1e}"]]
    return tabulate(rows, headers=["first-step gradient, rel. error vs float64 PyTorch", "PyTorch float32",
                                   "Paddle float32"], tablefmt="github", disable_numparse=True)


if __name__ == "__main__":
    main()
