"""One training iteration as InsightFace's ``train_v2.py`` runs it, in Paddle.

Per iteration (``global_step`` counts iterations from 1):

1. embeddings = backbone(images) (train mode: batch statistics, running statistics per rank);
   loss = PartialFC(embeddings, labels), the mean over the global batch, identical on every rank;
2. backward (AMP on GPU: through a GradScaler with growth interval 100);
3. every ``gradient_acc`` iterations (gradients are summed in between, the loss is not divided):
   backbone gradients averaged over ranks (the Partial FC shard's are not), unscaled under AMP, clipped
   to total L2 norm ``max_norm`` over the backbone only (coefficient max_norm / (norm + 1e-6), at most 1),
   an optimizer step (SGD momentum 0.9 with coupled weight decay on every parameter including the
   Partial FC weight, or AdamW), and for ``pfc_update="sparse"`` Partial FC's own row-wise step;
4. the learning-rate schedule advances every iteration, so iteration 1 runs at the base lr.

A parameter whose ParamAttr learning rate is 0 (iresnet's ``features.weight``) is what torch calls
``requires_grad=False``: it is left out of clipping and never changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import paddle
import paddle.distributed as dist

from train.config import TrainConfig
from train.distributed import rank_and_world
from train.losses import CombinedMarginLoss
from train.lr_scheduler import PolynomialLRWarmup
from train.partial_fc import PartialFC

SGD_MOMENTUM = 0.9  # InsightFace hard-codes it; cfg.momentum is ignored there and here
CLIP_EPS = 1e-6


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; nothing was updated at that step."""


@dataclass
class StepResult:
    step: int
    loss: float
    lr: float  # the learning rate this iteration trained with
    grad_norm: float | None  # backbone gradient norm before clipping (None when no update this iteration)
    grad_scale: float | None  # AMP loss scale (None without AMP)


def frozen(param) -> bool:
    """torch's requires_grad=False, in Paddle terms (see paddle_models/layers.py)."""
    return param.stop_gradient or param.optimize_attr.get("learning_rate", 1.0) == 0.0


class Trainer:
    """Backbone + Partial FC + optimizer + schedule; ``train_step(images, labels)`` is one iteration."""

    def __init__(self, config: TrainConfig, backbone: paddle.nn.Layer, total_steps: int, warmup_steps: int,
                 score_source: Callable[[int], np.ndarray] | None = None, amp: bool = False):
        self.config = config
        self.backbone = backbone
        _, self.world_size = rank_and_world()
        m1, m2, m3 = config.margin_list
        margin = CombinedMarginLoss(config.scale, m1, m2, m3, config.interclass_filtering_threshold,
                                    grad_mode=config.grad_mode)
        self.pfc = PartialFC(margin, config.embedding_size, config.num_classes, config.sample_rate,
                             update=config.pfc_update, score_source=score_source, seed=config.seed)
        self.scheduler = PolynomialLRWarmup(config.lr, warmup_steps, total_steps)
        self.backbone_params = [p for p in backbone.parameters() if not p.stop_gradient]
        self.clipped_params = [p for p in self.backbone_params if not frozen(p)]  # what clipping sees
        params = self.backbone_params + list(self.pfc.parameters())
        if config.optimizer == "sgd":
            self.optimizer = paddle.optimizer.Momentum(learning_rate=self.scheduler, momentum=SGD_MOMENTUM,
                                                       parameters=params, weight_decay=config.weight_decay)
        else:
            self.optimizer = paddle.optimizer.AdamW(learning_rate=self.scheduler, parameters=params,
                                                    weight_decay=config.weight_decay)
        self.amp = amp
        self.scaler = paddle.amp.GradScaler(init_loss_scaling=65536.0, incr_ratio=2.0, decr_ratio=0.5,
                                            incr_every_n_steps=100, decr_every_n_nan_or_inf=1) if amp else None
        self.global_step = 0

    # ------------------------------------------------------------------------------------------ step
    def train_step(self, images: paddle.Tensor, labels: paddle.Tensor,
                   on_gradients: Callable[[], None] | None = None) -> StepResult:
        """One iteration; raises ``TrainingDiverged`` (before any update) if the loss is not finite.

        ``on_gradients`` is called after the backward pass, before anything touches the gradients (the
        parity tests read them there).
        """
        step = self.global_step + 1
        lr = self.optimizer.get_lr()
        self.backbone.train()
        self.pfc.train()
        with paddle.amp.auto_cast(enable=self.amp):
            embeddings = self.backbone(images)
        loss = self.pfc(embeddings.astype("float32") if self.amp else embeddings, labels)
        value = float(loss)
        if not math.isfinite(value):
            self.optimizer.clear_grad()
            raise TrainingDiverged(f"loss is {value} at step {step}")
        (self.scaler.scale(loss) if self.amp else loss).backward()
        if on_gradients is not None:
            on_gradients()

        grad_norm = None
        if step % self.config.gradient_acc == 0:
            self._average_backbone_grads()
            if self.amp:
                self.scaler.unscale_(self.optimizer)
            grad_norm = self.clip_backbone_grads(self.config.max_norm)
            if self.amp:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            if self.pfc.update == "sparse":
                self.pfc.sparse_step(lr, SGD_MOMENTUM, self.config.weight_decay)
            self.optimizer.clear_grad()
        self.scheduler.step()
        self.global_step = step
        scale = float(self.scaler._scale) if self.amp else None
        return StepResult(step, value, lr, grad_norm, scale)

    def clip_backbone_grads(self, max_norm: float) -> float:
        """torch.nn.utils.clip_grad_norm_ over the backbone (frozen parameters excluded); returns the norm."""
        grads = [p.grad for p in self.clipped_params if p.grad is not None]
        if not grads:
            return 0.0
        # accumulate in float64: Paddle's float32 norm of a large tensor is off by ~1% (measured: 318.6 instead
        # of 323.3 for r18's 12.8 M-element fc gradient), and this coefficient scales every backbone update
        # one device-to-host transfer per step, not one per parameter
        norm = math.sqrt(float(paddle.add_n([paddle.sum(paddle.square(g.astype("float64"))) for g in grads])))
        coef = min(max_norm / (norm + CLIP_EPS), 1.0)
        if coef < 1.0:
            for g in grads:
                g.set_value(g * coef)
        return norm

    def _average_backbone_grads(self) -> None:
        """All-reduce (mean) the backbone gradients in one flat buffer, as DDP does; the shard is local."""
        if self.world_size == 1:
            return
        params = [p for p in self.backbone_params if p.grad is not None]
        flat = paddle.concat([p.grad.flatten() for p in params])
        dist.all_reduce(flat)
        flat = flat / self.world_size
        offset = 0
        for p in params:
            n = int(np.prod(p.shape))
            p.grad.set_value(flat[offset:offset + n].reshape(p.shape))
            offset += n
