"""Rank helpers and the differentiable all-gather that model-parallel Partial FC needs (Paddle).

Everything here works without any distributed initialisation: then the world has one rank and the
collectives are identities. Under ``python -m paddle.distributed.launch`` (gloo on CPU, NCCL on GPU)
the caller must have run ``paddle.distributed.init_parallel_env()`` first.

Only collectives that gloo implements are used (``all_gather``, ``all_reduce``); gloo has no
``reduce_scatter`` or ``alltoall``.
"""

from __future__ import annotations

import paddle
import paddle.distributed as dist
from paddle.autograd import PyLayer


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when nothing is initialised."""
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def all_gather_concat(tensor: paddle.Tensor) -> paddle.Tensor:
    """Concatenate every rank's ``tensor`` along axis 0 in rank order, no gradient: [W*B, ...]."""
    _, world = rank_and_world()
    if world == 1:
        return tensor
    parts: list[paddle.Tensor] = []
    dist.all_gather(parts, tensor)
    return paddle.concat(parts, axis=0)


def all_reduce_(tensor: paddle.Tensor, op: str = "sum") -> paddle.Tensor:
    """In-place all-reduce (``"sum"`` or ``"max"``) over the default group; identity on one rank."""
    _, world = rank_and_world()
    if world > 1:
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor


class _AllGatherScaled(PyLayer):
    """Forward: all-gather along axis 0. Backward: sum this rank's slice over all ranks, times W."""

    @staticmethod
    def forward(ctx, tensor: paddle.Tensor) -> paddle.Tensor:
        ctx.rows = tensor.shape[0]
        return all_gather_concat(tensor)

    @staticmethod
    def backward(ctx, grad: paddle.Tensor) -> paddle.Tensor:
        rank, world = rank_and_world()
        grad = all_reduce_(grad.clone(), "sum")  # gloo has no reduce_scatter: all-reduce, then slice
        start = rank * ctx.rows
        return grad[start : start + ctx.rows] * float(world)


def all_gather_with_grad(tensor: paddle.Tensor) -> paddle.Tensor:
    """Differentiable all-gather [B, ...] -> [W*B, ...] with InsightFace's backward.

    The gradient of this rank's rows is summed over all ranks and multiplied by W, so that after the
    backbone's DataParallel averaging over W the backbone sees the gradient of the global-batch loss.
    Every rank must pass the same shape. On one rank this is the identity (gradient factor 1 = W).
    """
    _, world = rank_and_world()
    if world == 1:
        return tensor
    return _AllGatherScaled.apply(tensor)


__all__ = ["all_gather_concat", "all_gather_with_grad", "all_reduce_", "rank_and_world"]
