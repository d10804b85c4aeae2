"""InsightFace's 10-fold verification protocol (``eval/verification.py`` of arcface_torch), re-implemented.

The protocol, as arcface_torch's ``eval/verification.py`` runs it:

- Pairs are rows (0, 1), (2, 3), ... of the L2-normalised embeddings; the distance is the *squared*
  Euclidean distance (``2 - 2 cos``, in [0, 4]); a pair is predicted "same" iff ``dist < threshold``.
- Folds are sklearn ``KFold(n_splits=10, shuffle=False)``: contiguous blocks in file order, the first
  ``P % 10`` folds one pair larger.
- Accuracy: for each fold, the threshold of ``arange(0, 4, 0.01)`` with the best accuracy on the other
  nine folds (the *first* maximum) is applied to the fold; the result is the mean and the population
  standard deviation (ddof 0) of the 10 fold accuracies. TPR/FPR with an empty denominator are 0.
- With flipped images: embedding = original + flipped (a sum, in float64), then L2-normalised;
  XNorm = the mean L2 norm of all raw original and flipped embeddings.

VAL@FAR=1e-3: InsightFace interpolates the training folds' FAR curve with scipy's
``interp1d(kind='slinear')``; the curve repeats values (it is a step function), which current scipy
rejects, so that code crashes. Here the threshold of a fold is the *largest* threshold
of ``arange(0, 4, 0.001)`` whose training-fold FAR is <= 1e-3; as in InsightFace it is 0 when the
training FAR never reaches 1e-3. InsightFace divides by zero when a fold has no same (or no different)
pairs; here that VAL (or FAR) is 0, as for TPR/FPR.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NFOLDS = 10
ROC_THRESHOLDS = np.arange(0, 4, 0.01)  # 400 values, as InsightFace's evaluate()
VAL_THRESHOLDS = np.arange(0, 4, 0.001)  # 4000 values
FAR_TARGET = 1e-3
TAR_FARS = (1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class Verification:
    """Everything the protocol computes for one pack (accuracies are fractions, not percent)."""

    accuracy: float
    accuracy_std: float
    fold_accuracies: np.ndarray  # [10]
    thresholds: np.ndarray  # [10] best threshold of each fold (chosen on the other nine)
    val: float
    val_std: float
    far: float
    tpr: np.ndarray  # [400] ROC: mean over folds of the test-fold TPR at each threshold
    fpr: np.ndarray  # [400]
    decisions: np.ndarray  # [P] bool: pair predicted "same" at its fold's threshold
    pairs: int
    accuracy_noflip: float | None = None
    accuracy_noflip_std: float | None = None
    xnorm: float | None = None

    @property
    def threshold_mean(self) -> float:
        return float(np.mean(self.thresholds))

    def tar_at_far(self, far: float) -> float:
        """TAR of the ROC at the largest threshold whose mean FPR is <= ``far`` (0 if none)."""
        ok = self.fpr <= far
        return float(self.tpr[ok].max()) if ok.any() else 0.0

    def to_json(self) -> dict:
        """The ``--json`` record of one target."""
        return {
            "accuracy": float(self.accuracy),
            "accuracy_std": float(self.accuracy_std),
            "fold_accuracies": [float(v) for v in self.fold_accuracies],
            "thresholds": [float(v) for v in self.thresholds],
            "threshold_mean": self.threshold_mean,
            "accuracy_noflip": None if self.accuracy_noflip is None else float(self.accuracy_noflip),
            "xnorm": None if self.xnorm is None else float(self.xnorm),
            "val": float(self.val),
            "val_std": float(self.val_std),
            "far": float(self.far),
            "tar_at_far": {f"{far:.0e}".replace("e-0", "e-"): self.tar_at_far(far) for far in TAR_FARS},
            "pairs": int(self.pairs),
        }


def kfold(n: int, nfolds: int = NFOLDS) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, test)`` index arrays of ``nfolds`` contiguous folds, as ``KFold(nfolds, shuffle=False)``."""
    if n < nfolds:
        raise ValueError(f"{n} pairs cannot be split into {nfolds} folds")
    sizes = np.full(nfolds, n // nfolds)
    sizes[: n % nfolds] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    indices = np.arange(n)
    return [(np.concatenate([indices[:a], indices[b:]]), indices[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm, in float64; rows of (near-)zero norm are left unscaled, as sklearn does."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms < 10 * np.finfo(np.float64).eps] = 1.0
    return x / norms[:, None]


def pair_distances(normed: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance ``[P]`` between rows ``2i`` and ``2i + 1`` of ``[2P, D]``."""
    return np.sum(np.square(np.subtract(normed[0::2], normed[1::2])), axis=1)


def _below(dist: np.ndarray, same: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Per threshold: how many same pairs and how many different pairs have ``dist < threshold``."""
    pos, neg = np.sort(dist[same]), np.sort(dist[~same])
    # searchsorted(side="left") = number of sorted values strictly less than each threshold
    return (np.searchsorted(pos, thresholds, side="left"), np.searchsorted(neg, thresholds, side="left"),
            len(pos), len(neg))


def _rate(count: np.ndarray, total: int) -> np.ndarray:
    return count / total if total else np.zeros(np.shape(count))


def _check(dist: np.ndarray, issame: np.ndarray, nfolds: int) -> tuple[np.ndarray, np.ndarray]:
    dist = np.asarray(dist, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool)
    if dist.ndim != 1 or issame.shape != dist.shape:
        raise ValueError(f"{dist.shape[0] if dist.ndim else 0} pair distances for {issame.size} issame flags")
    if not np.isfinite(dist).all():
        raise ValueError("embeddings contain NaN or infinite values")
    if len(dist) < nfolds:
        raise ValueError(f"{len(dist)} pairs cannot be split into {nfolds} folds")
    return dist, issame


def evaluate_distances(dist: np.ndarray, issame: np.ndarray, nfolds: int = NFOLDS) -> Verification:
    """The protocol on squared pair distances ``[P]`` (of L2-normalised embeddings) and labels ``[P]``."""
    dist, issame = _check(dist, issame, nfolds)
    folds = kfold(len(dist), nfolds)
    fold_acc = np.zeros(nfolds)
    best = np.zeros(nfolds)
    tprs = np.zeros((nfolds, len(ROC_THRESHOLDS)))
    fprs = np.zeros((nfolds, len(ROC_THRESHOLDS)))
    vals = np.zeros(nfolds)
    fars = np.zeros(nfolds)
    decisions = np.zeros(len(dist), dtype=bool)
    for k, (train, test) in enumerate(folds):
        tp, fp, npos, nneg = _below(dist[train], issame[train], ROC_THRESHOLDS)
        train_acc = (tp + (nneg - fp)) / len(train)
        threshold = ROC_THRESHOLDS[int(np.argmax(train_acc))]  # first maximum, as np.argmax
        tp, fp, npos, nneg = _below(dist[test], issame[test], ROC_THRESHOLDS)
        tprs[k], fprs[k] = _rate(tp, npos), _rate(fp, nneg)
        decisions[test] = dist[test] < threshold
        fold_acc[k] = np.count_nonzero(decisions[test] == issame[test]) / len(test)
        best[k] = threshold

        _, fa, _, nneg = _below(dist[train], issame[train], VAL_THRESHOLDS)
        far_train = _rate(fa, nneg)
        val_threshold = VAL_THRESHOLDS[np.flatnonzero(far_train <= FAR_TARGET)[-1]] \
            if far_train.max() >= FAR_TARGET else 0.0
        ta, fa, npos, nneg = _below(dist[test], issame[test], np.array([val_threshold]))
        vals[k], fars[k] = _rate(ta, npos)[0], _rate(fa, nneg)[0]
    return Verification(
        accuracy=float(np.mean(fold_acc)), accuracy_std=float(np.std(fold_acc)), fold_accuracies=fold_acc,
        thresholds=best, val=float(np.mean(vals)), val_std=float(np.std(vals)), far=float(np.mean(fars)),
        tpr=np.mean(tprs, 0), fpr=np.mean(fprs, 0), decisions=decisions, pairs=len(dist))


def evaluate(embeddings: np.ndarray, issame: np.ndarray, nfolds: int = NFOLDS) -> Verification:
    """The protocol on embeddings ``[2P, D]`` in pair order (normalised here) and labels ``[P]``."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] != 2 * len(issame):
        raise ValueError(f"embeddings of shape {list(embeddings.shape)} for {len(issame)} pairs "
                         f"(expected [{2 * len(issame)}, D])")
    return evaluate_distances(pair_distances(l2_normalize(embeddings)), issame, nfolds)


def xnorm(*embeddings: np.ndarray) -> float:
    """Mean L2 norm of every row of the given raw embedding arrays (InsightFace's XNorm)."""
    norms = np.concatenate([np.linalg.norm(np.asarray(e, dtype=np.float64), axis=1) for e in embeddings])
    return float(np.mean(norms))


def evaluate_flip(original: np.ndarray, flipped: np.ndarray, issame: np.ndarray,
                  nfolds: int = NFOLDS) -> Verification:
    """InsightFace's ``test()``: raw embeddings of the images and of their mirror images, ``[2P, D]`` each.

    The main result uses original + flipped (float64 sum, then normalised); ``accuracy_noflip`` uses
    the original images alone; ``xnorm`` is over all ``4P`` raw embeddings.
    """
    original = np.asarray(original, dtype=np.float64)
    flipped = np.asarray(flipped, dtype=np.float64)
    if original.shape != flipped.shape:
        raise ValueError(f"original {list(original.shape)} and flipped {list(flipped.shape)} embeddings differ in shape")
    result = evaluate(original + flipped, issame, nfolds)
    noflip = evaluate(original, issame, nfolds)
    result.accuracy_noflip, result.accuracy_noflip_std = noflip.accuracy, noflip.accuracy_std
    result.xnorm = xnorm(original, flipped)
    return result


def decisions_differ(a: Verification, b: Verification) -> int:
    """How many pairs two evaluations of the same pack judge differently (each at its own thresholds)."""
    return int(np.count_nonzero(a.decisions != b.decisions))
