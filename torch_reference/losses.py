"""PyTorch twin of ``train.losses``: InsightFace's margin losses, used as the parity reference.

Written from insightface_arcface.md §2. Like current InsightFace, the ArcFace margin is applied by
in-place arccos / +m2 / cos edits under ``torch.no_grad`` (a straight-through gradient: s for every
entry); ``grad_mode="exact"`` instead keeps arccos and cos in autograd (InsightFace before 2022-12).
Differences from arcface_torch, shared with the Paddle version: m2 > 0 together with m3 > 0 applies
both margins (arcface_torch would ignore m2), and any m1 != 1 raises ``ValueError`` (arcface_torch
raises only for m3 = 0 and otherwise ignores m1).
"""

from __future__ import annotations

import torch
from torch import nn

GRAD_MODES = ("insightface", "exact")


class CombinedMarginLoss(nn.Module):
    """Margined, scaled logits from cosines [N, K] and column labels [N] or [N, 1] (-1 = not here)."""

    def __init__(
        self,
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        interclass_filtering_threshold: float = 0.0,
        grad_mode: str = "insightface",
    ):
        super().__init__()
        if m1 != 1.0:
            raise ValueError(f"CombinedMarginLoss: m1={m1} is not supported (multiplicative margin)")
        if grad_mode not in GRAD_MODES:
            raise ValueError(f"CombinedMarginLoss: grad_mode={grad_mode!r}, expected one of {GRAD_MODES}")
        self.s, self.m2, self.m3 = float(s), float(m2), float(m3)
        self.interclass_filtering_threshold = float(interclass_filtering_threshold)
        self.grad_mode = grad_mode

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[N, K] cosines, [N] labels -> [N, K] scaled margined logits (the input is not modified)."""
        labels = labels.reshape(-1)
        rows = torch.where(labels != -1)[0]
        cols = labels[rows]
        if self.interclass_filtering_threshold > 0:
            with torch.no_grad():
                dirty = (logits > self.interclass_filtering_threshold).to(logits.dtype)
                dirty[rows, cols] = 0.0  # a row's own target is never filtered
            logits = logits * (1.0 - dirty)
        else:
            logits = logits.clone()  # the in-place margin edits below must not touch the caller's tensor

        if self.m2 != 0.0:
            if self.grad_mode == "insightface":
                with torch.no_grad():  # invisible to autograd: straight-through
                    logits.arccos_()
                    logits[rows, cols] += self.m2
                    logits.cos_()
            else:
                logits[rows, cols] = torch.cos(torch.arccos(logits[rows, cols]) + self.m2)
        if self.m3 != 0.0:
            logits[rows, cols] -= self.m3
        return logits * self.s


class ArcFace(CombinedMarginLoss):
    """ArcFace preset: (m1, m2, m3) = (1, m, 0)."""

    def __init__(self, s: float = 64.0, m: float = 0.5, **kwargs):
        super().__init__(s=s, m1=1.0, m2=m, m3=0.0, **kwargs)


class CosFace(CombinedMarginLoss):
    """CosFace preset: (m1, m2, m3) = (1, 0, m)."""

    def __init__(self, s: float = 64.0, m: float = 0.4, **kwargs):
        super().__init__(s=s, m1=1.0, m2=0.0, m3=m, **kwargs)


__all__ = ["GRAD_MODES", "ArcFace", "CombinedMarginLoss", "CosFace"]
