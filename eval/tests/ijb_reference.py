"""A literal, loop-by-loop re-derivation of InsightFace's IJB-B/C 1:1 protocol (arcface_torch's
``eval_ijbc.py``), the judge of eval/ijb_protocol.py and eval/ijb.py in the tests.

One Python loop iteration per template, per media and per pair, with ``np.unique``, ``np.where``,
``np.mean``, ``np.sum``, ``sklearn.preprocessing.normalize``, ``sklearn.metrics.roc_curve`` and a tuple
``min`` over the reversed ROC; the meta files are read line by line with ``str.split``, numbers with
``int`` and ``float`` and the detector scores turned into float32 as InsightFace does. Nothing here is
shared with the code under test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve
from sklearn.preprocessing import normalize

FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def reference_image_features(raw_2d, faceness, variant):
    """``raw_2d`` is InsightFace's float32 ``[N, 2D]`` feature array (face | mirror)."""
    half = raw_2d.shape[1] // 2
    if variant.flip:
        x = raw_2d[:, 0:half] + raw_2d[:, half:]
    else:
        x = raw_2d[:, 0:half]
    if not variant.norm_score:
        x = x / np.sqrt(np.sum(x ** 2, -1, keepdims=True))
    if variant.detector_score:
        x = x * faceness[:, np.newaxis]
    return x


def reference_templates(feats, templates, medias):
    unique_templates = np.unique(templates)
    template_feats = np.zeros((len(unique_templates), feats.shape[1]))
    for count, uqt in enumerate(unique_templates):
        (ind_t,) = np.where(templates == uqt)
        face_feats = feats[ind_t]
        face_medias = medias[ind_t]
        unique_medias, unique_counts = np.unique(face_medias, return_counts=True)
        media_feats = []
        for u, ct in zip(unique_medias, unique_counts):
            (ind_m,) = np.where(face_medias == u)
            if ct == 1:
                media_feats += [face_feats[ind_m]]
            else:
                media_feats += [np.mean(face_feats[ind_m], axis=0, keepdims=True)]
        media_feats = np.array(media_feats)
        template_feats[count] = np.sum(media_feats, axis=0)
    return normalize(template_feats), unique_templates


def reference_scores(template_feats, unique_templates, p1, p2):
    template2id = {int(t): i for i, t in enumerate(unique_templates)}
    scores = np.zeros(len(p1))
    for k in range(len(p1)):
        f1 = template_feats[template2id[int(p1[k])]]
        f2 = template_feats[template2id[int(p2[k])]]
        scores[k] = np.sum(f1 * f2, -1)
    return scores


def reference_tar(labels, scores):
    fpr, tpr, _ = roc_curve(labels, scores)
    fpr = np.flipud(fpr)
    tpr = np.flipud(tpr)
    result = {}
    for far in FARS:
        _, min_index = min(list(zip(abs(fpr - far), range(len(fpr)))))
        result[far] = tpr[min_index]
    return result


def read_meta(root: Path, target: str):
    """``(templates, medias, p1, p2, labels, faceness)`` from the three meta files, line by line."""
    meta = Path(root) / "meta"
    prefix = target.lower()
    rows = [ln.split(" ") for ln in (meta / f"{prefix}_face_tid_mid.txt").read_text().splitlines()]
    templates = np.array([int(r[1]) for r in rows])
    medias = np.array([int(r[2]) for r in rows])
    pairs = [ln.split(" ") for ln in (meta / f"{prefix}_template_pair_label.txt").read_text().splitlines()]
    p1, p2, labels = (np.array([int(r[k]) for r in pairs]) for k in range(3))
    points = [ln.strip().split(" ") for ln in (meta / f"{prefix}_name_5pts_score.txt").read_text().splitlines()]
    faceness = np.array([r[-1] for r in points]).astype(np.float32)
    return templates, medias, p1, p2, labels, faceness


def reference_run(root: Path, target: str, raw: np.ndarray, variant) -> dict[float, float]:
    """TAR@FAR of raw ``[N, 2, D]`` features on the layout under ``root``: the whole protocol, looped."""
    templates, medias, p1, p2, labels, faceness = read_meta(root, target)
    img_feats = np.empty((len(raw), 2 * raw.shape[2]), dtype=np.float32)  # face | mirror, as InsightFace
    img_feats[:] = raw.reshape(len(raw), -1)
    feats = reference_image_features(img_feats, faceness, variant)
    template_feats, unique_templates = reference_templates(feats, templates, medias)
    return reference_tar(labels, reference_scores(template_feats, unique_templates, p1, p2))
