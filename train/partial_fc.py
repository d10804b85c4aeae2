"""Partial FC: the class-centre classifier sharded across ranks, with sampling and a distributed softmax.

InsightFace's ``partial_fc_v2.py`` with plain Paddle ops (Paddle's ``margin_cross_entropy`` has no CPU
kernel and ``class_center_sample`` ignores process groups on CPU). One process
needs no distributed initialisation; under ``python -m paddle.distributed.launch`` call
``paddle.distributed.init_parallel_env()`` before building the layer.

Per step, on every rank (W ranks, global batch N = W * B):

1. embeddings [B, D] are all-gathered with a differentiable all-gather (backward: this rank's slice summed
   over ranks, times W) and labels are all-gathered; labels become local column indices or -1;
2. with ``sample_rate < 1`` every positive class of this shard is kept and random negatives fill up to
   ``int(sample_rate * num_local)`` rows; the row index is sorted ascending and labels are remapped;
3. cosines of the L2-normalised embeddings and (sampled) centres, clamped to [-1, 1], go through the margin
   loss and a softmax cross-entropy whose max and sum are all-reduced: loss = mean over the global batch of
   -log(max(p_target, 1e-30)), the same value on every rank. No rank ever builds [N, num_classes] logits.

Using it with ``paddle.optimizer.Momentum`` (a training loop, per rank):

* ``update="dense"`` (InsightFace v2): ``weight`` is a Parameter and ``pfc.parameters()`` returns it; give
  it to the optimizer with the backbone. Rows that were not sampled get a zero gradient but still decay
  and keep moving with their momentum. Do NOT wrap the PartialFC in DataParallel (its gradient is per shard
  and must not be averaged), and leave it out of gradient clipping (InsightFace clips the backbone only).
* ``update="sparse"`` (InsightFace v1, PLSC): ``weight`` and its momentum ``weight_mom`` are buffers, so
  ``pfc.parameters()`` is empty and the optimizer never sees them. After ``loss.backward()`` call
  ``pfc.sparse_step(lr, momentum, weight_decay)`` with the optimizer's current learning rate: only the rows
  used in this step get L2 decay and a momentum step, with Paddle Momentum's formula
  (v = mu * v + g + wd * w; w = w - lr * v).

Checkpoints: ``pfc.state_dict()`` holds this rank's shard (``weight``), ``weight_mom`` in sparse mode, and
``shard_layout`` = [num_classes, world_size, rank, embedding_size]. Save one per rank; ``set_state_dict``
refuses a shard whose layout differs from the current process (``ShardLayoutError``). To resume on a
different world size, load every rank's state and call ``reshard(states, new_world_size)`` (which merges
the shards into the full [num_classes, D] matrix and splits it again); in dense mode the momentum lives in
the optimizer's state and can be resharded the same way by passing it under the key ``weight_mom``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn
from paddle.autograd import PyLayer

from train.distributed import all_gather_concat, all_gather_with_grad, all_reduce_, rank_and_world

UPDATE_MODES = ("dense", "sparse")
ROW_KEYS = ("weight", "weight_mom")  # state entries with one row per local class
LOG_FLOOR = 1e-30  # per-sample loss is -log(max(p, LOG_FLOOR)), at most 69.0776
ScoreSource = Callable[[int], np.ndarray]  # n -> n uniform scores in [0, 1), one per local class


class ShardLayoutError(ValueError):
    """A checkpoint shard does not belong to this process's rank / world size / class count."""


def shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """(class_start, num_local) of ``rank``: contiguous shards, the first C mod W ranks get one more."""
    base, extra = divmod(num_classes, world_size)
    return base * rank + min(rank, extra), base + (1 if rank < extra else 0)


@dataclass(frozen=True)
class SampleInfo:
    """The rows used in the last step: ``index`` [K] sorted local rows (None = all), ``labels`` [N]."""

    index: paddle.Tensor | None
    labels: paddle.Tensor  # local column in the used rows, -1 where the class is not in them


class _DistSoftmaxCrossEntropy(PyLayer):
    """Softmax cross-entropy over columns split across ranks; gradient (P - onehot) / N."""

    @staticmethod
    def forward(ctx, logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        rows = logits.shape[0]
        if logits.shape[1] == 0:  # no columns on this rank (sample_rate 0 and no positives here)
            row_max = paddle.full([rows, 1], -np.inf, dtype=logits.dtype)
        else:
            row_max = logits.max(axis=1, keepdim=True)
        all_reduce_(row_max, "max")
        probs = logits - row_max  # the one [N, K] buffer this function keeps; updated in place below
        probs.exp_()
        row_sum = all_reduce_(probs.sum(axis=1, keepdim=True), "sum")
        probs.divide_(row_sum)
        has_target = (labels >= 0).astype(logits.dtype).unsqueeze(1)
        column = paddle.clip(labels, min=0).unsqueeze(1)
        if logits.shape[1] == 0:
            target = paddle.zeros([rows, 1], dtype=logits.dtype)
        else:
            target = paddle.take_along_axis(probs, column, axis=1) * has_target
        all_reduce_(target, "sum")
        ctx.save_for_backward(probs, column, has_target)
        return -paddle.log(paddle.clip(target, min=LOG_FLOOR)).mean()

    @staticmethod
    def backward(ctx, grad: paddle.Tensor):
        probs, column, has_target = ctx.saved_tensor()
        if probs.shape[1] > 0:
            probs = paddle.put_along_axis(probs, column, -has_target, axis=1, reduce="add")
        return probs.multiply_(grad / probs.shape[0]), None


def dist_softmax_cross_entropy(logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
    """Scalar mean cross-entropy of scaled logits [N, K_local] with local labels [N] (-1 = other rank)."""
    return _DistSoftmaxCrossEntropy.apply(logits, labels.reshape([-1]).astype("int64"))


class PartialFC(nn.Layer):
    """Sharded class centres + sampling + margin + distributed softmax: forward(emb [B, D], labels [B]).

    ``score_source(n)`` gives the n uniform sampling scores (default: numpy ``default_rng(seed)``, the same
    stream on every rank, as InsightFace's identically seeded CPU RNG); ``dtype`` of the centres defaults
    to Paddle's default dtype.
    """

    def __init__(
        self,
        margin_loss: nn.Layer,
        embedding_size: int,
        num_classes: int,
        sample_rate: float = 1.0,
        update: str = "dense",
        *,
        score_source: ScoreSource | None = None,
        seed: int = 0,
        dtype: str | None = None,
    ):
        super().__init__()
        if update not in UPDATE_MODES:
            raise ValueError(f"PartialFC: update={update!r}, expected one of {UPDATE_MODES}")
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"PartialFC: sample_rate={sample_rate} must be in [0, 1]")
        self.rank, self.world_size = rank_and_world()
        if num_classes < self.world_size:
            raise ValueError(f"PartialFC: {num_classes} classes cannot be split over {self.world_size} ranks")
        self.margin_loss = margin_loss
        self.embedding_size = int(embedding_size)
        self.num_classes = int(num_classes)
        self.sample_rate = float(sample_rate)
        self.update = update
        self.class_start, self.num_local = shard_range(self.num_classes, self.world_size, self.rank)
        self.num_sample = int(self.sample_rate * self.num_local)
        self.score_source: ScoreSource = score_source or np.random.default_rng(seed).random

        init = nn.initializer.Normal(mean=0.0, std=0.01)
        shape = [self.num_local, self.embedding_size]
        if update == "dense":
            self.weight = self.create_parameter(shape, dtype=dtype, default_initializer=init)
        else:
            centres = self.create_parameter(shape, dtype=dtype, default_initializer=init).detach()
            self.register_buffer("weight", centres)
            self.register_buffer("weight_mom", paddle.zeros(shape, dtype=self.weight.dtype))
        layout = [self.num_classes, self.world_size, self.rank, self.embedding_size]
        self.register_buffer("shard_layout", paddle.to_tensor(layout, dtype="int64"))
        self._last: SampleInfo | None = None
        self._sampled: paddle.Tensor | None = None  # sparse mode: the leaf whose .grad sparse_step uses

    def extra_repr(self) -> str:
        return (
            f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, "
            f"rank={self.rank}/{self.world_size}, classes=[{self.class_start}, "
            f"{self.class_start + self.num_local}), sample_rate={self.sample_rate}, update={self.update}"
        )

    @property
    def last_sample(self) -> SampleInfo | None:
        """Rows and remapped labels of the last forward (for tests and logging)."""
        return self._last

    def forward(self, embeddings: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        """Embeddings [B, D] and int labels [B] or [B, 1] (global class ids) -> scalar loss (global mean)."""
        labels = labels.reshape([-1]).astype("int64")
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"PartialFC: embeddings {embeddings.shape}, expected [B, {self.embedding_size}]")
        if labels.shape[0] != embeddings.shape[0]:
            raise ValueError(f"PartialFC: {labels.shape[0]} labels for {embeddings.shape[0]} embeddings")
        if embeddings.dtype != self.weight.dtype:
            embeddings = embeddings.astype(self.weight.dtype)
        self._check_equal_batches(embeddings.shape[0])

        embeddings = all_gather_with_grad(embeddings)
        labels = all_gather_concat(labels)
        in_shard = (labels >= self.class_start) & (labels < self.class_start + self.num_local)
        labels = paddle.where(in_shard, labels - self.class_start, paddle.full_like(labels, -1))

        weight, labels = self._select_rows(labels)
        # normalize(e) . normalize(w)^T, with the centre norms applied to the [N, K] product instead of
        # materialising a normalised copy of the [K, D] centres (about 2x faster, less memory); same
        # x / max(|x|, 1e-12) as F.normalize
        inv_norm = 1.0 / paddle.clip(paddle.sqrt((weight * weight).sum(axis=1)), min=1e-12)
        cosine = paddle.matmul(F.normalize(embeddings, axis=1, epsilon=1e-12), weight, transpose_y=True)
        cosine = (cosine * inv_norm).clip(-1.0, 1.0)
        logits = self.margin_loss(cosine, labels) if cosine.shape[1] > 0 else cosine
        return dist_softmax_cross_entropy(logits, labels)

    def _check_equal_batches(self, batch: int) -> None:
        if self.world_size == 1:
            return
        sizes = all_gather_concat(paddle.to_tensor([batch], dtype="int64")).numpy()
        if sizes.min() != sizes.max():
            raise ValueError(f"PartialFC: every rank needs the same batch size, got {sizes.tolist()}")

    def _select_rows(self, labels: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        """The centre rows this step uses and the labels as columns in them."""
        index = None
        if self.sample_rate < 1.0:
            with paddle.no_grad():
                index = self._sample_index(labels)
                position = paddle.searchsorted(index, paddle.clip(labels, min=0))
                labels = paddle.where(labels >= 0, position, labels)
        self._last = SampleInfo(index, labels)
        rows = self.weight if index is None else paddle.gather(self.weight, index)
        if self.update == "sparse":  # a leaf of its own: sparse_step reads its gradient
            rows = rows.detach()
            rows.stop_gradient = False
            self._sampled = rows
        return rows, labels

    def _sample_index(self, labels: paddle.Tensor) -> paddle.Tensor:
        """Sorted local rows: all positives, plus random negatives up to num_sample."""
        positives = paddle.unique(paddle.masked_select(labels, labels >= 0))
        if self.num_sample < positives.shape[0]:
            return positives
        scores = np.asarray(self.score_source(self.num_local), dtype=np.float64)
        if scores.shape != (self.num_local,):
            raise ValueError(f"PartialFC: score_source returned shape {scores.shape}, want ({self.num_local},)")
        if self.num_sample == 0:  # sample_rate 0 and no positive on this shard: no rows at all
            return paddle.zeros([0], dtype="int64")
        scores[positives.numpy()] = 2.0
        top = paddle.topk(paddle.to_tensor(scores), self.num_sample).indices
        return paddle.sort(top)

    def shard_grad(self) -> paddle.Tensor | None:
        """Gradient of the last backward w.r.t. this rank's centres [num_local, D]; zeros in unused rows."""
        if self.update == "dense":
            return self.weight.grad
        if self._sampled is None:
            return None
        if self._sampled.shape[0] == 0:  # no rows used on this rank
            return paddle.zeros_like(self.weight)
        if self._last.index is None or self._sampled.grad is None:
            return self._sampled.grad
        return paddle.scatter(paddle.zeros_like(self.weight), self._last.index, self._sampled.grad)

    @paddle.no_grad()
    def sparse_step(self, learning_rate: float, momentum: float = 0.9, weight_decay: float = 5e-4) -> None:
        """Sparse mode: Momentum with L2 decay on the rows used by the last forward/backward only."""
        if self.update != "sparse":
            raise RuntimeError("PartialFC.sparse_step: update='dense' weights are stepped by the optimizer")
        if self._sampled is None or (self._sampled.grad is None and self._sampled.shape[0] > 0):
            raise RuntimeError("PartialFC.sparse_step: no gradient; call forward and backward first")
        index = self._last.index
        if index is not None and index.shape[0] == 0:  # this rank used no rows in the last step
            self._sampled = None
            return
        rows = self._sampled.detach()
        velocity = self.weight_mom if index is None else paddle.gather(self.weight_mom, index)
        velocity = momentum * velocity + self._sampled.grad + weight_decay * rows
        rows = rows - learning_rate * velocity
        if index is None:
            paddle.assign(rows, self.weight)
            paddle.assign(velocity, self.weight_mom)
        else:
            self.weight.scatter_(index, rows, overwrite=True)
            self.weight_mom.scatter_(index, velocity, overwrite=True)
        self._sampled = None

    def set_state_dict(self, state_dict: Mapping[str, Any], use_structured_name: bool = True):
        """Load this rank's shard; ``ShardLayoutError`` if it was saved for another rank or world size."""
        if "shard_layout" not in state_dict:
            raise ShardLayoutError("PartialFC state has no 'shard_layout' entry; not a PartialFC shard")
        saved = [int(v) for v in _as_numpy(state_dict["shard_layout"]).tolist()]
        current = [int(v) for v in self.shard_layout.numpy().tolist()]
        if saved != current:
            classes, world, rank, dim = saved
            start, count = shard_range(classes, world, rank)
            raise ShardLayoutError(
                f"PartialFC shard saved for rank {rank} of {world} (classes [{start}, {start + count}) of "
                f"{classes}, dim {dim}), but this process is rank {self.rank} of {self.world_size} (classes "
                f"[{self.class_start}, {self.class_start + self.num_local}) of {self.num_classes}, dim "
                f"{self.embedding_size}); re-shard with train.partial_fc.reshard(all_rank_states, "
                f"{self.world_size})"
            )
        return super().set_state_dict(state_dict, use_structured_name=use_structured_name)


def _as_numpy(value: Any) -> np.ndarray:
    return value.numpy() if isinstance(value, paddle.Tensor) else np.asarray(value)


def merge_shards(states: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Every rank's PartialFC state (any order) -> {"weight": [C, D], "weight_mom"?: [C, D]} in class order."""
    if not states:
        raise ShardLayoutError("merge_shards: no shard states given")
    layouts = [_as_numpy(s["shard_layout"]).astype(np.int64) for s in states]
    classes, world, _, dim = (int(v) for v in layouts[0])
    ranks = sorted(int(layout[2]) for layout in layouts)
    if any(int(lo[0]) != classes or int(lo[1]) != world or int(lo[3]) != dim for lo in layouts):
        raise ShardLayoutError("merge_shards: shards come from different class counts, world sizes or dims")
    if ranks != list(range(world)):
        raise ShardLayoutError(f"merge_shards: need exactly ranks 0..{world - 1} once each, got {ranks}")
    by_rank = {int(layout[2]): state for layout, state in zip(layouts, states)}
    keys = [k for k in ROW_KEYS if all(k in s for s in states)]
    merged = {}
    for key in keys:
        parts = []
        for rank in range(world):
            part = _as_numpy(by_rank[rank][key])
            if part.shape != (shard_range(classes, world, rank)[1], dim):
                raise ShardLayoutError(f"merge_shards: rank {rank} {key} has shape {part.shape}")
            parts.append(part)
        merged[key] = np.concatenate(parts, axis=0)
    return merged


def split_shards(merged: Mapping[str, np.ndarray], world_size: int) -> list[dict[str, np.ndarray]]:
    """Full {"weight": [C, D], ...} -> one PartialFC state per rank of ``world_size`` (for set_state_dict)."""
    classes, dim = merged["weight"].shape
    if classes < world_size:
        raise ShardLayoutError(f"split_shards: {classes} classes cannot be split over {world_size} ranks")
    states = []
    for rank in range(world_size):
        start, count = shard_range(classes, world_size, rank)
        state = {k: np.ascontiguousarray(v[start : start + count]) for k, v in merged.items() if k in ROW_KEYS}
        state["shard_layout"] = np.array([classes, world_size, rank, dim], dtype=np.int64)
        states.append(state)
    return states


def reshard(states: Sequence[Mapping[str, Any]], world_size: int) -> list[dict[str, np.ndarray]]:
    """Shard states saved on W ranks -> states for ``world_size`` ranks (merge, then split)."""
    return split_shards(merge_shards(states), world_size)


__all__ = [
    "LOG_FLOOR",
    "UPDATE_MODES",
    "PartialFC",
    "SampleInfo",
    "ShardLayoutError",
    "dist_softmax_cross_entropy",
    "merge_shards",
    "reshard",
    "shard_range",
    "split_shards",
]
