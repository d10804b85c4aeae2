"""PolynomialLRWarmup: the Paddle scheduler gives bit-identical learning rates to the PyTorch twin over
whole schedules, and the values InsightFace's scheduler was verified to give (reference §6.1)."""

from __future__ import annotations

import pytest
import torch

from torch_reference.lr_scheduler import PolynomialLRWarmup as TorchSchedule
from train.lr_scheduler import PolynomialLRWarmup as PaddleSchedule


def lrs(warmup: int, total: int, power: float = 1.0, steps: int | None = None, base: float = 0.1):
    """Learning rate of iterations 1..steps in both frameworks (the loop steps after each iteration)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    torch_schedule = TorchSchedule(optimizer, warmup, total, power)
    paddle_schedule = PaddleSchedule(base, warmup, total, power)
    got_torch, got_paddle = [], []
    for _ in range(steps or total + 3):
        got_torch.append(optimizer.param_groups[0]["lr"])
        got_paddle.append(paddle_schedule())
        optimizer.step()
        torch_schedule.step()
        paddle_schedule.step()
    return got_torch, got_paddle


def test_published_sequences():
    t, p = lrs(0, 10)
    assert p == t
    assert [round(v, 10) for v in p] == [0.1, 0.09, 0.08, 0.07, 0.06, 0.05, 0.04, 0.03, 0.02, 0.01, 0.0, 0.0, 0.0]
    t, p = lrs(3, 10)
    assert p == t
    assert [round(v, 4) for v in p[:6]] == [0.1, 0.0333, 0.0667, 0.1, 0.0857, 0.0714]
    assert p[-3:] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("warmup,total,power", [(0, 101160, 1.0), (1000, 40464, 1.0), (4148, 207400, 2.0),
                                                (2, 7, 1.0)])
def test_whole_schedules_are_bit_identical(warmup, total, power):
    t, p = lrs(warmup, total, power)
    assert p == t  # exact float equality, every step
    assert p[0] == 0.1 and p[total] == 0.0 and max(p) <= 0.1


def test_state_dict_round_trip_continues_identically():
    schedule = PaddleSchedule(0.1, 5, 50)
    for _ in range(17):
        schedule.step()
    state = schedule.state_dict()
    resumed = PaddleSchedule(0.1, 5, 50)
    resumed.set_state_dict(state)
    for _ in range(40):
        assert resumed() == schedule()
        schedule.step()
        resumed.step()
