"""Independent float64 numpy implementation of insightface_arcface.md §2-§3: forward and analytic gradients.

Shared by the parity tests and their worker scripts; it imports neither framework. Everything is for
one process that sees the global batch and the full class matrix; ``columns`` selects the class rows a
(possibly multi-rank, sampled) Partial FC step uses, so the global softmax runs over exactly those.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOG_FLOOR = 1e-30


@dataclass(frozen=True)
class Margin:
    """Margin settings: s * cos(theta + m2) - s * m3 on the target, filtering threshold t (0 = off)."""

    s: float = 64.0
    m2: float = 0.5
    m3: float = 0.0
    t: float = 0.0
    grad_mode: str = "insightface"


def rel(actual: np.ndarray, reference: np.ndarray) -> float:
    """Relative difference ||a - r|| / ||r|| (the project's float64 parity metric)."""
    reference = np.asarray(reference, dtype=np.float64)
    scale = np.linalg.norm(reference)
    return float(np.linalg.norm(np.asarray(actual, dtype=np.float64) - reference) / (scale if scale else 1.0))


def margin_logits(cosine: np.ndarray, labels: np.ndarray, margin: Margin) -> tuple[np.ndarray, np.ndarray]:
    """Cosines [N, K], column labels [N] (-1 = none) -> (scaled logits [N, K], d logits / d cosine [N, K])."""
    n = cosine.shape[0]
    rows = np.flatnonzero(labels >= 0)
    cols = labels[rows]
    keep = np.ones_like(cosine)
    if margin.t > 0:
        keep = (cosine <= margin.t).astype(np.float64)
        keep[rows, cols] = 1.0
    z = cosine * keep
    slope = keep.copy()
    theta = np.arccos(z[rows, cols])
    z[rows, cols] = np.cos(theta + margin.m2) - margin.m3
    if margin.grad_mode == "exact" and margin.m2 != 0.0:
        slope[rows, cols] = np.sin(theta + margin.m2) / np.sin(theta)
    assert z.shape[0] == n
    return margin.s * z, margin.s * slope


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean of -log(max(p_target, 1e-30)) over rows, and its gradient (P - onehot) / N (clamp ignored)."""
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(shifted)
    p /= p.sum(axis=1, keepdims=True)
    rows = np.flatnonzero(labels >= 0)
    target = np.zeros(n)
    target[rows] = p[rows, labels[rows]]
    loss = float(-np.log(np.maximum(target, LOG_FLOOR)).mean())
    grad = p.copy()
    grad[rows, labels[rows]] -= 1.0
    return loss, grad / n


def _normalize_with_grad(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    norm = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x / norm, norm


def _normalize_backward(unit: np.ndarray, norm: np.ndarray, grad_unit: np.ndarray) -> np.ndarray:
    # d(x/|x|)^T g = (g - u (u . g)) / |x|
    return (grad_unit - unit * (unit * grad_unit).sum(axis=1, keepdims=True)) / norm


def partial_fc(
    embeddings: np.ndarray, weight: np.ndarray, labels: np.ndarray, margin: Margin, columns: np.ndarray | None = None
) -> tuple[float, np.ndarray, np.ndarray]:
    """Global batch [N, D], all centres [C, D], global labels [N], used class ids (sorted; None = all).

    Returns (loss, d loss / d embeddings [N, D], d loss / d weight [C, D] with zero rows where unused).
    """
    if columns is None:
        columns = np.arange(weight.shape[0])
    position = {int(c): i for i, c in enumerate(columns)}
    col_labels = np.array([position.get(int(y), -1) for y in labels], dtype=np.int64)
    e_unit, e_norm = _normalize_with_grad(embeddings)
    w_unit, w_norm = _normalize_with_grad(weight[columns])
    raw = e_unit @ w_unit.T
    cosine = np.clip(raw, -1.0, 1.0)
    logits, slope = margin_logits(cosine, col_labels, margin)
    loss, grad_logits = softmax_cross_entropy(logits, col_labels)
    grad_cos = grad_logits * slope * ((raw >= -1.0) & (raw <= 1.0))
    grad_emb = _normalize_backward(e_unit, e_norm, grad_cos @ w_unit)
    grad_w = np.zeros_like(weight)
    grad_w[columns] = _normalize_backward(w_unit, w_norm, grad_cos.T @ e_unit)
    return loss, grad_emb, grad_w


def shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """(class_start, num_local) of ``rank`` under contiguous sharding, first C mod W ranks one more."""
    base, extra = divmod(num_classes, world_size)
    return base * rank + min(rank, extra), base + int(rank < extra)


def sample_rows(local_labels: np.ndarray, scores: np.ndarray | None, num_sample: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted rows used on one shard (positives + top-scored negatives) and the remapped labels (§3.2.5).

    ``scores`` [num_local] are consumed only when num_sample >= number of positives, as in InsightFace.
    """
    positives = np.unique(local_labels[local_labels >= 0])
    if num_sample < positives.size:
        index = positives
    else:
        ranked = np.array(scores, dtype=np.float64)
        ranked[positives] = 2.0
        index = np.sort(np.argsort(-ranked, kind="stable")[:num_sample])
    remapped = np.where(local_labels >= 0, np.searchsorted(index, np.maximum(local_labels, 0)), -1)
    return index, remapped


def used_columns(
    labels: np.ndarray, num_classes: int, world_size: int, sample_rate: float, scores: list[np.ndarray] | None
) -> np.ndarray | None:
    """Global class ids a W-rank step uses (union of every shard's sampled rows); None when not sampling."""
    if sample_rate >= 1.0:
        return None
    used = []
    for rank in range(world_size):
        start, count = shard_range(num_classes, world_size, rank)
        local = np.where((labels >= start) & (labels < start + count), labels - start, -1)
        index, _ = sample_rows(local, None if scores is None else scores[rank], int(sample_rate * count))
        used.append(index + start)
    return np.concatenate(used)
