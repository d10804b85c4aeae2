"""The accuracy guard of a reduced-precision model: what bf16 or int8 costs against fp32 on the same images.

For a verification pack, both models' raw embeddings of the same images (and mirrors) give:

- the embedding cosine of every image, min and mean (the flip-summed embeddings, as the protocol uses them);
- each model's accuracy with InsightFace's protocol, and the difference;
- the pairs judged differently at the fp32 model's thresholds: each pair's squared distance under the
  reduced-precision model compared with the fp32 model's threshold of the pair's fold, against the fp32
  model's own decision. This isolates the precision's effect from a threshold that happens to move.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from converters.parity import cosines

from .protocol import Verification, evaluate_flip, kfold, l2_normalize, pair_distances


def decisions_at(embeddings: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``[P]`` "same" decisions of flip-summed ``[2P, D]`` embeddings at given per-fold thresholds (the
    protocol's contiguous folds)."""
    dist = pair_distances(l2_normalize(embeddings))
    out = np.zeros(len(dist), dtype=bool)
    for (_, test), threshold in zip(kfold(len(dist), len(thresholds)), thresholds):
        out[test] = dist[test] < threshold
    return out


@dataclass
class PackGuard:
    name: str
    pairs: int
    cosine_min: float
    cosine_mean: float
    reference: Verification
    reduced: Verification
    differ: int  # pairs judged differently at the reference's thresholds

    @property
    def accuracy_difference(self) -> float:
        return self.reduced.accuracy - self.reference.accuracy

    def to_json(self) -> dict:
        return {"pairs": self.pairs, "cosine_min": self.cosine_min, "cosine_mean": self.cosine_mean,
                "accuracy_fp32": self.reference.accuracy, "accuracy": self.reduced.accuracy,
                "accuracy_difference": self.accuracy_difference, "pairs_judged_differently": self.differ}


def pack_guard(name: str, ref_original: np.ndarray, ref_flipped: np.ndarray, original: np.ndarray,
               flipped: np.ndarray, issame: np.ndarray) -> PackGuard:
    """Compare a reduced-precision model's raw embeddings of a pack with the fp32 model's."""
    ref_sum = np.asarray(ref_original, np.float64) + np.asarray(ref_flipped, np.float64)
    low_sum = np.asarray(original, np.float64) + np.asarray(flipped, np.float64)
    if not np.isfinite(low_sum).all():
        raise ValueError("the reduced-precision embeddings contain NaN or infinite values")
    cos = cosines(ref_sum, low_sum)
    reference = evaluate_flip(ref_original, ref_flipped, issame)
    reduced = evaluate_flip(original, flipped, issame)
    differ = int(np.count_nonzero(decisions_at(low_sum, reference.thresholds) != reference.decisions))
    return PackGuard(name, len(issame), float(cos.min()), float(cos.mean()), reference, reduced, differ)


def guard_table(rows: list[PackGuard], precision: str) -> str:
    """The guard as a table: one row per pack."""
    from tabulate import tabulate

    lines = [[g.name, precision, f"{g.cosine_min:.6f}", f"{g.cosine_mean:.6f}", f"{100 * g.reference.accuracy:.3f}",
              f"{100 * g.reduced.accuracy:.3f}", f"{100 * g.accuracy_difference:+.3f}",
              f"{g.differ}/{g.pairs} ({100 * g.differ / g.pairs:.2f} %)"] for g in rows]
    return tabulate(lines, headers=["pack", "precision", "min cosine", "mean cosine", "fp32 acc %",
                                    "acc %", "difference", "judged differently at fp32 thresholds"],
                    tablefmt="github", disable_numparse=True)
