"""PyTorch twin of InsightFace's training iteration (``train_v2.py``, fp32 path; reference §6.2).

Per iteration: global_step += 1; loss = pfc(backbone(images), labels); loss.backward(); every
``gradient_acc`` iterations clip the backbone gradients to total norm ``max_norm``, SGD(momentum 0.9,
coupled weight decay) or AdamW step over [backbone, pfc] parameter groups, zero_grad; then the schedule
steps.
(InsightFace's DDP also rounds backbone gradients to float16 for the all-reduce; a single-process float64
reference has no such rounding, and neither has this project's Paddle loop.)
"""

from __future__ import annotations

from typing import Callable

import torch

from .lr_scheduler import PolynomialLRWarmup


class InsightFaceLoop:
    def __init__(self, backbone: torch.nn.Module, pfc: torch.nn.Module, lr: float, weight_decay: float,
                 warmup_steps: int, total_steps: int, max_norm: float = 5.0, gradient_acc: int = 1,
                 momentum: float = 0.9, optimizer: str = "sgd", betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.backbone, self.pfc = backbone, pfc
        groups = [{"params": [p for p in backbone.parameters() if p.requires_grad]},
                  {"params": list(pfc.parameters())}]
        if optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
        else:  # InsightFace's adamw: torch defaults, decoupled weight decay
            self.optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.scheduler = PolynomialLRWarmup(self.optimizer, warmup_steps, total_steps)
        self.max_norm, self.gradient_acc = max_norm, gradient_acc
        self.global_step = 0

    def train_step(self, images: torch.Tensor, labels: torch.Tensor,
                   on_gradients: Callable[[], None] | None = None) -> float:
        self.global_step += 1
        self.backbone.train()
        self.pfc.train()
        loss = self.pfc(self.backbone(images), labels)
        loss.backward()
        if on_gradients is not None:
            on_gradients()
        if self.global_step % self.gradient_acc == 0:
            torch.nn.utils.clip_grad_norm_(self.backbone.parameters(), max_norm=self.max_norm)
            self.optimizer.step()
            self.optimizer.zero_grad()
        self.scheduler.step()
        return float(loss.detach())
