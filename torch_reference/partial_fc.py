"""PyTorch twin of ``train.partial_fc``: InsightFace's Partial FC v2 semantics, the parity reference.

Written from insightface_arcface.md §3: contiguous class shards, a custom autograd all-gather whose
backward reduces each rank's slice onto its owner and multiplies by W, label localisation, sampling
(rand scores, positives forced to 2.0, top-k, sorted, searchsorted remap), normalised cosine logits
clamped to [-1, 1], the margin, and ``DistCrossEntropy`` (all-reduced max and sum, per-sample
-log(max(p, 1e-30)), backward (P - onehot) / N times the upstream gradient). Works on one process
without ``torch.distributed`` and under a gloo process group. The random scores come from
``score_source(num_local)`` so tests can give both frameworks the same numbers.

Two deliberate differences from arcface_torch, both also in the Paddle version: a rank with no columns
(sample_rate 0 and no positives in its shard) contributes nothing instead of failing, and the batch
size may change between calls (it must only be equal on every rank).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class AllGatherFunc(torch.autograd.Function):
    """Forward: all-gather [B, ...] into [W*B, ...]. Backward: each slice reduced onto its owner, times W."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        _, world = rank_and_world()
        parts = [torch.zeros_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        rank, world = rank_and_world()
        slices = [s.contiguous() for s in grad.chunk(world, dim=0)]
        for owner, part in enumerate(slices):
            dist.reduce(part, owner, op=dist.ReduceOp.SUM)
        return slices[rank] * world


class DistCrossEntropyFunc(torch.autograd.Function):
    """Softmax cross-entropy with columns split across ranks (all-reduced max and sum)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _, world = rank_and_world()
        rows = logits.size(0)
        if logits.size(1) > 0:
            row_max = logits.max(dim=1, keepdim=True).values
        else:
            row_max = torch.full((rows, 1), -float("inf"), dtype=logits.dtype)
        if world > 1:
            dist.all_reduce(row_max, dist.ReduceOp.MAX)
        softmax = torch.exp(logits - row_max)
        total = softmax.sum(dim=1, keepdim=True)
        if world > 1:
            dist.all_reduce(total, dist.ReduceOp.SUM)
        softmax.div_(total)
        positive = torch.where(labels != -1)[0]
        target = torch.zeros(rows, 1, dtype=logits.dtype)
        target[positive] = softmax[positive, labels[positive]].unsqueeze(1)
        if world > 1:
            dist.all_reduce(target, dist.ReduceOp.SUM)
        ctx.save_for_backward(positive, softmax, labels)
        return target.clamp_min_(1e-30).log_().mean() * -1

    @staticmethod
    def backward(ctx, loss_grad: torch.Tensor):
        positive, softmax, labels = ctx.saved_tensors
        grad = softmax.clone()
        grad[positive, labels[positive]] -= 1.0
        return grad * (loss_grad.item() / softmax.size(0)), None


class PartialFC(nn.Module):
    """Sharded class centres [num_local, D] with sampling; forward(emb [B, D], labels [B]) -> loss."""

    def __init__(
        self,
        margin_loss: nn.Module,
        embedding_size: int,
        num_classes: int,
        sample_rate: float = 1.0,
        score_source: Callable[[int], np.ndarray] | None = None,
    ):
        super().__init__()
        self.rank, self.world_size = rank_and_world()
        base, extra = divmod(num_classes, self.world_size)
        self.num_local = base + int(self.rank < extra)
        self.class_start = base * self.rank + min(self.rank, extra)
        self.num_sample = int(sample_rate * self.num_local)
        self.sample_rate = sample_rate
        self.margin_softmax = margin_loss
        self.score_source = score_source or (lambda n: torch.rand(n).numpy())
        self.weight = nn.Parameter(torch.normal(0, 0.01, (self.num_local, embedding_size)))
        self.weight_index: torch.Tensor | None = None
        self.local_labels: torch.Tensor | None = None

    def sample(self, labels: torch.Tensor) -> torch.Tensor:
        """Rows to use (sorted); remaps ``labels`` in place to columns of those rows."""
        with torch.no_grad():
            positive = torch.unique(labels[labels != -1], sorted=True)
            if self.num_sample >= positive.size(0):
                scores = torch.from_numpy(np.array(self.score_source(self.num_local), dtype=np.float64))
                scores[positive] = 2.0
                index = torch.topk(scores, k=self.num_sample)[1].sort()[0]
            else:
                index = positive
            self.weight_index = index
            rows = labels != -1
            labels[rows] = torch.searchsorted(index, labels[rows])
        return self.weight[index]

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.reshape(-1).long()
        if self.world_size > 1:
            embeddings = AllGatherFunc.apply(embeddings)
            parts = [torch.zeros_like(labels) for _ in range(self.world_size)]
            dist.all_gather(parts, labels)
            labels = torch.cat(parts)
        labels = labels.view(-1, 1)
        outside = (labels < self.class_start) | (labels >= self.class_start + self.num_local)
        labels = labels - self.class_start
        labels[outside] = -1
        labels = labels.view(-1)
        weight = self.sample(labels) if self.sample_rate < 1 else self.weight
        self.local_labels = labels
        logits = F.linear(F.normalize(embeddings), F.normalize(weight)).clamp(-1, 1)
        if logits.size(1) > 0:
            logits = self.margin_softmax(logits, labels)
        return DistCrossEntropyFunc.apply(logits, labels)


__all__ = ["AllGatherFunc", "DistCrossEntropyFunc", "PartialFC", "rank_and_world"]
