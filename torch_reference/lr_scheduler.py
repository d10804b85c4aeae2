"""PyTorch twin of InsightFace's ``PolynomialLRWarmup`` (reference §6.1), written from its description."""

from __future__ import annotations

from torch.optim.lr_scheduler import LRScheduler


class PolynomialLRWarmup(LRScheduler):
    """lr = b*l/w during warmup, then each step multiplies the previous lr by the polynomial ratio."""

    def __init__(self, optimizer, warmup_iters: int, total_iters: int = 5, power: float = 1.0, last_epoch: int = -1):
        # set before the base class takes its initial step, which calls get_lr
        self.warmup_iters = warmup_iters
        self.total_iters = total_iters
        self.power = power
        super().__init__(optimizer, last_epoch=last_epoch)

    def get_lr(self) -> list[float]:
        step = self.last_epoch
        current = [group["lr"] for group in self.optimizer.param_groups]
        if step == 0 or step > self.total_iters:
            return current
        if step <= self.warmup_iters:
            return [base * step / self.warmup_iters for base in self.base_lrs]
        w, t = self.warmup_iters, self.total_iters
        ratio = ((1.0 - (step - w) / (t - w)) / (1.0 - (step - 1 - w) / (t - w))) ** self.power
        return [lr * ratio for lr in current]
