"""InsightFace's ``PolynomialLRWarmup`` as a Paddle learning-rate scheduler.

With ``l`` the scheduler's step counter, ``w`` warmup steps, ``t`` total steps and ``b`` the base lr:

* l = 0 (construction) and l > t: the lr is left as it is;
* 1 <= l <= w: lr = b * l / w;
* l > w: lr_l = lr_{l-1} * [(1 - (l-w)/(t-w)) / (1 - (l-1-w)/(t-w))] ** power, which reaches 0 at l = t.

The loop steps the scheduler after every iteration, so iteration 1 trains at the full base lr even with
warmup (an InsightFace quirk kept on purpose) and the lr is exactly 0 from step t on. The recurrence is
evaluated in the same order as InsightFace's, in Python floats, so the values are bit-identical.
"""

from __future__ import annotations

from paddle.optimizer.lr import LRScheduler


def decay_factor(step: int, warmup: int, total: int, power: float) -> float:
    """The ratio lr_l / lr_{l-1} after warmup."""
    return ((1.0 - (step - warmup) / (total - warmup)) / (1.0 - (step - 1 - warmup) / (total - warmup))) ** power


class PolynomialLRWarmup(LRScheduler):
    """Linear warmup then polynomial decay to 0 at ``total_iters`` (power 1.0 = InsightFace's default)."""

    def __init__(self, learning_rate: float, warmup_iters: int, total_iters: int, power: float = 1.0,
                 last_epoch: int = -1):
        if total_iters <= warmup_iters:
            raise ValueError(f"total_iters ({total_iters}) must exceed warmup_iters ({warmup_iters})")
        self.warmup_iters = int(warmup_iters)
        self.total_iters = int(total_iters)
        self.power = float(power)
        super().__init__(learning_rate, last_epoch)

    def get_lr(self) -> float:
        step = self.last_epoch
        if step == 0 or step > self.total_iters:
            return self.last_lr if step > 0 else self.base_lr
        if step <= self.warmup_iters:
            return self.base_lr * step / self.warmup_iters
        return self.last_lr * decay_factor(step, self.warmup_iters, self.total_iters, self.power)

    def state_keys(self) -> None:
        self.keys = ["last_epoch", "last_lr", "warmup_iters", "total_iters", "power"]
