"""Margin losses for face recognition (ArcFace, CosFace, combined) with plain Paddle ops.

``CombinedMarginLoss`` takes cosine logits ``[N, K]`` (already clamped to [-1, 1]) and labels ``[N]``
or ``[N, 1]`` holding a column index, or -1 when the sample's class is not among these K columns
(another rank's shard, or not sampled), and returns the margined logits times ``s``. The softmax
cross-entropy is applied afterwards (``train.partial_fc``), as in InsightFace's ``losses.py``.

Margins on the target column of each row with a label, with theta = arccos(cosine):

* ArcFace (m1 = 1, m2, m3 = 0): cos(theta + m2).
* CosFace (m1 = 1, m2 = 0, m3): cos(theta) - m3.
* Combined (m1 = 1, m2 > 0, m3 > 0): cos(theta + m2) - m3, the combined margin of the ArcFace paper.
  InsightFace's arcface_torch would silently ignore m2 here (its CosFace branch); this project applies
  both margins, in the Paddle code and in the PyTorch twin alike.
* m1 != 1 (SphereFace-style multiplicative margin) is not supported and raises ``ValueError``, also
  with m3 > 0 where arcface_torch would ignore m1 silently.

Gradient modes of the ArcFace part (the CosFace subtraction has derivative 1 either way):

* ``"insightface"`` (default): straight-through, as current InsightFace (since 2022-12): d out / d x = s
  for every entry, the target included.
* ``"exact"``: the true derivative s * sin(theta + m2) / sin(theta) on the target, as Paddle's GPU
  ``margin_cross_entropy`` and InsightFace before 2022-12. At |x| = 1 the true derivative is infinite;
  sin(theta) is floored at 1e-12 there so that a clamped entry (whose clamp gradient is 0) gives 0,
  not NaN.

Inter-class filtering (threshold t > 0): every entry with cosine > t, except the target of a row with a
label, is set to exactly 0 by a constant mask (zero gradient there).
"""

from __future__ import annotations

import paddle
from paddle import nn

GRAD_MODES = ("insightface", "exact")
_SIN_FLOOR = 1e-12


class CombinedMarginLoss(nn.Layer):
    """Margined, scaled logits s * z from cosines [N, K] and column labels [N] (-1 = not here)."""

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
            raise ValueError(
                f"CombinedMarginLoss: m1={m1} is not supported (multiplicative SphereFace margin); "
                "use m1=1.0 with m2 (ArcFace, additive angular) and/or m3 (CosFace, additive cosine)"
            )
        if grad_mode not in GRAD_MODES:
            raise ValueError(f"CombinedMarginLoss: grad_mode={grad_mode!r}, expected one of {GRAD_MODES}")
        if not s > 0:
            raise ValueError(f"CombinedMarginLoss: scale s={s} must be positive")
        if not 0.0 <= interclass_filtering_threshold < 1.0:
            raise ValueError(
                f"CombinedMarginLoss: interclass_filtering_threshold={interclass_filtering_threshold} "
                "must be in [0, 1) (0 = off)"
            )
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        self.interclass_filtering_threshold = float(interclass_filtering_threshold)
        self.grad_mode = grad_mode

    def extra_repr(self) -> str:
        return (
            f"s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}, "
            f"interclass_filtering_threshold={self.interclass_filtering_threshold}, grad_mode={self.grad_mode}"
        )

    def forward(self, logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        """[N, K] cosines in [-1, 1], [N] or [N, 1] int labels (-1 = none here) -> [N, K] scaled logits."""
        labels = labels.reshape([-1]).astype("int64")
        has_target = (labels >= 0).unsqueeze(1)  # [N, 1]
        column = paddle.clip(labels, min=0).unsqueeze(1)  # a valid index for every row; masked below

        if self.interclass_filtering_threshold > 0:
            with paddle.no_grad():
                dirty = (logits > self.interclass_filtering_threshold).astype(logits.dtype)
                at_target = paddle.take_along_axis(dirty, column, axis=1)
                exempt = paddle.where(has_target, paddle.zeros_like(at_target), at_target)
                keep = 1.0 - paddle.put_along_axis(dirty, column, exempt, axis=1)
            logits = logits * keep

        if self.m2 == 0.0 and self.m3 == 0.0:
            return logits * self.s

        target = paddle.take_along_axis(logits, column, axis=1)  # [N, 1]
        if self.m2 != 0.0:
            cosine = paddle.where(has_target, target, paddle.zeros_like(target)).detach()
            theta = paddle.acos(cosine)
            value = paddle.cos(theta + self.m2)
            if self.grad_mode == "insightface":
                slope = paddle.ones_like(value)
            else:
                slope = paddle.sin(theta + self.m2) / paddle.clip(paddle.sin(theta), min=_SIN_FLOOR)
            # forward: value; backward: slope * upstream (target - target.detach() is exactly 0)
            margined = value + slope * (target - target.detach())
        else:
            margined = target
        margined = margined - self.m3
        margined = paddle.where(has_target, margined, target)
        return paddle.put_along_axis(logits, column, margined, axis=1) * self.s


class ArcFace(CombinedMarginLoss):
    """ArcFace: s * cos(theta + m) on the target, straight-through gradient by default."""

    def __init__(self, s: float = 64.0, m: float = 0.5, **kwargs):
        super().__init__(s=s, m1=1.0, m2=m, m3=0.0, **kwargs)


class CosFace(CombinedMarginLoss):
    """CosFace: s * (cos(theta) - m) on the target."""

    def __init__(self, s: float = 64.0, m: float = 0.4, **kwargs):
        super().__init__(s=s, m1=1.0, m2=0.0, m3=m, **kwargs)


__all__ = ["GRAD_MODES", "ArcFace", "CombinedMarginLoss", "CosFace"]
