"""The IJB accuracy guard of a reduced-precision model: what bf16 or int8 costs against fp32 on the same images.

Both models embed the same aligned faces (and mirrors) in the same pass; from their raw outputs and pair
scores the guard gives:

- the embedding cosine of every image between the two models' raw flip-summed features (face + mirror, in
  float64), min and mean;
- each model's TAR at every FAR of the table, and the difference (reduced minus fp32);
- the template pairs judged differently at the fp32 model's score threshold for FAR 1e-4 and 1e-5: the
  threshold is that of the fp32 ROC point the TAR table reads (``sklearn.metrics.roc_curve``'s point whose
  FPR is nearest the FAR, as ``ijb_protocol.tar_at_far`` picks it), a pair is accepted when its score is
  ``>= threshold``, and a pair counts when the reduced-precision score decides differently from the fp32
  one; genuine and impostor pairs separately. A fixed threshold isolates the precision's effect from a
  threshold that happens to move. ROC thresholds are scores of pairs, so the threshold is placed midway
  between that pair's score and the next lower fp32 score: the fp32 decisions are the ROC point's, and the
  pair defining the point is not counted for a rounding-sized change of its own score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from converters.parity import cosines

from .ijb_protocol import FARS, tar_at_far

THRESHOLD_FARS = (1e-4, 1e-5)  # the FARs InsightFace's tables publish


def flip_sum_cosines(ref_raw: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """``[n]`` cosines between two models' raw ``[n, 2, D]`` outputs (face, mirror) of the same images, each
    flip-summed in float64."""
    ref_raw, raw = np.asarray(ref_raw), np.asarray(raw)
    if ref_raw.ndim != 3 or ref_raw.shape[1] != 2 or raw.shape != ref_raw.shape:
        raise ValueError(f"raw outputs [n, 2, D] of the same shape expected, got {ref_raw.shape} and {raw.shape}")
    ref_sum = ref_raw[:, 0].astype(np.float64) + ref_raw[:, 1]
    low_sum = raw[:, 0].astype(np.float64) + raw[:, 1]
    return cosines(ref_sum, low_sum)


def far_threshold(labels: np.ndarray, scores: np.ndarray, far: float) -> tuple[float, float, float]:
    """``(threshold, fpr, tpr)`` of the ROC point of ``scores`` whose FPR is nearest ``far``, the point
    ``tar_at_far`` reads (ties to the largest TPR). ``threshold`` is midway between the lowest score the
    point accepts and the next lower score (the point's own score if there is none), ``inf`` when the point
    accepts no pair."""
    from sklearn.metrics import roc_curve

    scores = np.asarray(scores, dtype=np.float64)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    fpr, tpr, thresholds = np.flipud(fpr), np.flipud(tpr), np.flipud(thresholds)
    index = int(np.argmin(np.abs(fpr - far)))
    threshold = float(thresholds[index])
    if index == len(thresholds) - 1:  # sklearn's extra first point: nothing accepted (inf, or max + 1 before 1.3)
        return math.inf, float(fpr[index]), float(tpr[index])
    below = scores[scores < threshold]
    if len(below):
        threshold = float((threshold + below.max()) / 2)
    return threshold, float(fpr[index]), float(tpr[index])


@dataclass
class Judged:
    """The pairs decided differently at the fp32 model's threshold for ``far``."""

    far: float
    threshold: float  # the fp32 score threshold (inf: the point accepts no pair)
    fpr_fp32: float  # the FPR the fp32 model has at that threshold (the nearest ROC point to ``far``)
    genuine: int
    genuine_differ: int
    impostor: int
    impostor_differ: int

    @property
    def differ(self) -> int:
        return self.genuine_differ + self.impostor_differ

    def to_json(self) -> dict:
        return {"threshold": self.threshold if math.isfinite(self.threshold) else None, "fpr_fp32": self.fpr_fp32,
                "genuine": self.genuine_differ, "impostor": self.impostor_differ, "total": self.differ,
                "genuine_pairs": self.genuine, "impostor_pairs": self.impostor}


@dataclass
class IjbGuard:
    images: int
    cosine_min: float
    cosine_mean: float
    tar_fp32: dict[float, float]
    tar: dict[float, float]
    judged: list[Judged] = field(default_factory=list)

    @property
    def tar_difference(self) -> dict[float, float]:
        """Reduced minus fp32, per FAR (fractions, not percent)."""
        return {far: self.tar[far] - self.tar_fp32[far] for far in self.tar_fp32}

    def to_json(self) -> dict:
        def by_far(values: dict[float, float]) -> dict[str, float]:
            return {f"{far:.0e}": float(v) for far, v in values.items()}

        return {"images": self.images, "cosine_min": self.cosine_min, "cosine_mean": self.cosine_mean,
                "tar_fp32": by_far(self.tar_fp32), "tar": by_far(self.tar),
                "tar_difference": by_far(self.tar_difference),
                "pairs_judged_differently": {f"{j.far:.0e}": j.to_json() for j in self.judged}}


def ijb_guard(labels, ref_scores, scores, image_cosines, fars: Iterable[float] = FARS,
              threshold_fars: Sequence[float] = THRESHOLD_FARS) -> IjbGuard:
    """Compare a reduced-precision model's pair scores (and per-image cosines with the fp32 model, see
    ``flip_sum_cosines``) with the fp32 model's on the same layout. ``labels``: 1 genuine, 0 impostor."""
    labels = np.asarray(labels)
    ref_scores = np.asarray(ref_scores, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    image_cosines = np.asarray(image_cosines, dtype=np.float64)
    if image_cosines.ndim != 1 or len(image_cosines) == 0:
        raise ValueError(f"image cosines must be a non-empty [N] array, got shape {image_cosines.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("the reduced-precision scores contain NaN or infinite values")
    fars = tuple(fars)
    tar_fp32 = tar_at_far(labels, ref_scores, fars)  # validates labels and scores
    tar = tar_at_far(labels, scores, fars)
    genuine = labels == 1
    judged = []
    for far in threshold_fars:
        threshold, fpr, _ = far_threshold(labels, ref_scores, far)
        differ = (ref_scores >= threshold) != (scores >= threshold)
        judged.append(Judged(far, threshold, fpr, int(genuine.sum()), int(np.count_nonzero(differ & genuine)),
                             int((~genuine).sum()), int(np.count_nonzero(differ & ~genuine))))
    return IjbGuard(len(image_cosines), float(image_cosines.min()), float(image_cosines.mean()), tar_fp32, tar,
                    judged)


def guard_text(guard: IjbGuard, label: str, reference: str = "fp32") -> str:
    """The guard as printed: the cosine line, the TAR table of both models with the difference per FAR (in
    percentage points), and the pairs judged differently at the reference's thresholds. ``label`` names the
    reduced-precision model (``int8``), ``reference`` the model it is compared with."""
    from tabulate import tabulate

    tars = tabulate([[f"{far:g}", f"{100 * guard.tar_fp32[far]:.2f}", f"{100 * guard.tar[far]:.2f}",
                      f"{100 * d:+.2f}"] for far, d in guard.tar_difference.items()],
                    headers=["FAR", f"{reference} TAR %", f"{label} TAR %", "difference (points)"],
                    tablefmt="github", disable_numparse=True)
    judged = tabulate([[f"{j.far:g}", f"{j.threshold:.6f}" if math.isfinite(j.threshold) else "none accepted",
                        f"{j.fpr_fp32:.3g}", f"{j.genuine_differ}/{j.genuine}", f"{j.impostor_differ}/{j.impostor}"]
                       for j in guard.judged],
                      headers=[f"{reference} threshold for FAR", "score", f"its {reference} FAR",
                               "genuine judged differently", "impostor judged differently"],
                      tablefmt="github", disable_numparse=True)
    return (f"per-image embedding cosine with {reference} ({guard.images} images, face + mirror): "
            f"min {guard.cosine_min:.6f}, mean {guard.cosine_mean:.6f}\n{tars}\n{judged}")
