"""The verification protocol: hand-computed cases, and equality with an independent re-derivation.

``reference_evaluate`` below is written from the description of InsightFace's protocol with explicit loops over folds and thresholds (no sorting, no searchsorted, folds from the
KFold rule "first n % k folds get one more"), so it shares no code path with eval/protocol.py beyond
numpy's mean/std/argmax that the protocol itself prescribes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from eval.protocol import (
    ROC_THRESHOLDS,
    VAL_THRESHOLDS,
    evaluate,
    evaluate_distances,
    evaluate_flip,
    kfold,
    l2_normalize,
    xnorm,
)


# --------------------------------------------------------------------------- independent re-derivation
def reference_folds(n: int, k: int = 10) -> list[list[int]]:
    folds, start = [], 0
    for f in range(k):
        size = n // k + (1 if f < n % k else 0)
        folds.append(list(range(start, start + size)))
        start += size
    return folds


def reference_counts(threshold: float, dist: list[float], same: list[bool]) -> tuple[int, int, int, int]:
    tp = fp = tn = fn = 0
    for d, s in zip(dist, same):
        predicted_same = d < threshold
        if predicted_same and s:
            tp += 1
        elif predicted_same:
            fp += 1
        elif s:
            fn += 1
        else:
            tn += 1
    return tp, fp, tn, fn


def reference_evaluate(embeddings: np.ndarray, issame: np.ndarray) -> dict:
    """InsightFace's evaluate() semantics, loop by loop; VAL with this project's documented rule."""
    e = np.asarray(embeddings, dtype=np.float64)
    normed = np.array([row / np.sqrt(np.dot(row, row)) if np.dot(row, row) > 0 else row for row in e])
    pairs = len(issame)
    dist = [float(np.sum((normed[2 * i] - normed[2 * i + 1]) ** 2)) for i in range(pairs)]
    same = [bool(s) for s in issame]
    folds = reference_folds(pairs)
    accs, best, tprs, fprs, vals, fars = [], [], [], [], [], []
    for test in folds:
        train = [i for i in range(pairs) if i not in set(test)]
        d_train, s_train = [dist[i] for i in train], [same[i] for i in train]
        d_test, s_test = [dist[i] for i in test], [same[i] for i in test]
        best_acc, best_t = -1.0, None
        for t in ROC_THRESHOLDS:
            tp, fp, tn, fn = reference_counts(t, d_train, s_train)
            acc = float(tp + tn) / len(train)
            if acc > best_acc:  # strictly greater: the first maximum wins
                best_acc, best_t = acc, t
        tpr_row, fpr_row = [], []
        for t in ROC_THRESHOLDS:
            tp, fp, tn, fn = reference_counts(t, d_test, s_test)
            tpr_row.append(0.0 if tp + fn == 0 else float(tp) / float(tp + fn))
            fpr_row.append(0.0 if fp + tn == 0 else float(fp) / float(fp + tn))
        tprs.append(tpr_row)
        fprs.append(fpr_row)
        tp, fp, tn, fn = reference_counts(best_t, d_test, s_test)
        accs.append(float(tp + tn) / len(test))
        best.append(best_t)
        # VAL: the largest threshold whose training FAR <= 1e-3, 0 if the FAR never reaches 1e-3
        far_curve = []
        for t in VAL_THRESHOLDS:
            tp, fp, tn, fn = reference_counts(t, d_train, s_train)
            far_curve.append(0.0 if fp + tn == 0 else fp / (fp + tn))
        chosen = 0.0
        if max(far_curve) >= 1e-3:
            chosen = max(t for t, f in zip(VAL_THRESHOLDS, far_curve) if f <= 1e-3)
        tp, fp, tn, fn = reference_counts(chosen, d_test, s_test)
        vals.append(0.0 if tp + fn == 0 else tp / (tp + fn))
        fars.append(0.0 if fp + tn == 0 else fp / (fp + tn))
    return {"fold_accuracies": np.array(accs), "thresholds": np.array(best), "accuracy": np.mean(accs),
            "accuracy_std": np.std(accs), "tpr": np.mean(tprs, 0), "fpr": np.mean(fprs, 0),
            "val": np.mean(vals), "val_std": np.std(vals), "far": np.mean(fars)}


def adversarial_sets() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Random embeddings and cases built to hit ties, degenerate folds and grid-point distances."""
    rng = np.random.default_rng(20240607)
    sets = []
    for n in (10, 13, 57):
        issame = rng.random(n) < 0.5
        sets.append((f"gaussian-{n}", rng.normal(size=(2 * n, 16)), issame))
    n = 40
    issame = rng.random(n) < 0.5
    base = rng.normal(size=(n, 16))
    emb = np.repeat(base, 2, axis=0)
    emb[1::2] += np.where(issame[:, None], 0.6, 3.0) * rng.normal(size=(n, 16))
    sets.append(("separable-40", emb, issame))
    # every pair at a distance that is exactly representable and on the 0.01 grid: ties at thresholds
    n = 30
    t = rng.choice([0.5, 1.0, 1.5, 2.0], size=n)
    emb = np.zeros((2 * n, 2))
    emb[0::2, 0] = 1.0
    emb[1::2, 0] = 1 - t / 2
    emb[1::2, 1] = np.sqrt(1 - (1 - t / 2) ** 2)
    sets.append(("grid-ties-30", emb, rng.random(n) < 0.5))
    sets.append(("all-same-10", rng.normal(size=(20, 8)), np.ones(10, bool)))
    sets.append(("all-different-12", rng.normal(size=(24, 8)), np.zeros(12, bool)))
    same_first = np.zeros(20, bool)
    same_first[4:] = rng.random(16) < 0.5  # folds 0 and 1 hold no positives
    sets.append(("no-positive-folds-20", rng.normal(size=(40, 8)), same_first))
    identical = np.repeat(rng.integers(-2, 3, size=(15, 8)).astype(float), 2, axis=0)  # distance 0
    identical[0] = 1.0
    sets.append(("zero-distance-15", identical, rng.random(15) < 0.5))
    return sets


@pytest.mark.parametrize("name,emb,issame", adversarial_sets(), ids=lambda v: v if isinstance(v, str) else "")
def test_protocol_equals_independent_loop_implementation(name, emb, issame):
    ours = evaluate(emb, issame)
    ref = reference_evaluate(emb, issame)
    np.testing.assert_allclose(ours.fold_accuracies, ref["fold_accuracies"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.thresholds, ref["thresholds"], rtol=0, atol=1e-12)
    for key in ("accuracy", "accuracy_std", "val", "val_std", "far"):
        assert abs(getattr(ours, key) - ref[key]) <= 1e-12, key
    np.testing.assert_allclose(ours.tpr, ref["tpr"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.fpr, ref["fpr"], rtol=0, atol=1e-12)


def test_cli_embeddings_json_equals_independent_implementation(tmp_path):
    from eval.verify import main

    for i, (name, emb, issame) in enumerate(adversarial_sets()[:4] + adversarial_sets()[-3:]):
        np.save(tmp_path / "e.npy", emb.astype(np.float32) if i % 2 else emb)
        np.save(tmp_path / "i.npy", issame if i % 3 else issame.astype(np.int64))
        assert main(["--embeddings", str(tmp_path / "e.npy"), "--issame", str(tmp_path / "i.npy"),
                     "--name", name, "--json", str(tmp_path / "out.json")]) == 0
        record = json.loads((tmp_path / "out.json").read_text())[name]
        ref = reference_evaluate(emb.astype(np.float32) if i % 2 else emb, issame)
        assert record["fold_accuracies"] == pytest.approx(ref["fold_accuracies"].tolist(), abs=1e-12)
        assert record["thresholds"] == pytest.approx(ref["thresholds"].tolist(), abs=1e-12)
        assert record["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-12)
        assert record["accuracy_std"] == pytest.approx(ref["accuracy_std"], abs=1e-12)
        assert record["val"] == pytest.approx(ref["val"], abs=1e-12)
        assert record["pairs"] == len(issame)
        assert record["accuracy_noflip"] is None and record["xnorm"] is None
        assert set(record["tar_at_far"]) == {"1e-4", "1e-3", "1e-2", "1e-1"}


# ------------------------------------------------------------------------------------ hand-computed cases
def test_kfold_is_contiguous_with_larger_first_folds():
    sizes = [len(test) for _, test in kfold(25)]
    assert sizes == [3, 3, 3, 3, 3, 2, 2, 2, 2, 2]
    train, test = kfold(25)[5]
    assert test.tolist() == [15, 16] and train.tolist() == [*range(15), *range(17, 25)]
    assert [t.tolist() for _, t in kfold(10)] == [[i] for i in range(10)]


def test_fewer_pairs_than_folds_is_an_error():
    with pytest.raises(ValueError, match="9 pairs cannot be split into 10 folds"):
        evaluate_distances(np.ones(9), np.ones(9, bool))


def test_ties_take_the_first_best_threshold():
    # every distance is exactly 1.0 and labels alternate same/different: on nine training pairs the
    # thresholds <= 1.0 (all "different") and > 1.0 (all "same") tie with the majority class...
    issame = np.array([True, False] * 5)
    r = evaluate_distances(np.ones(10), issame)
    # fold of a same pair: training has 4 same, 5 different -> first maximum at threshold 0.00 ->
    # the held-out same pair is called different; fold of a different pair: 5 same vs 4 -> first
    # threshold above 1.0 is 1.01 -> the held-out different pair is called same. Every fold is wrong.
    assert r.thresholds.tolist() == pytest.approx([0.0, 1.01] * 5, abs=1e-15)
    assert r.fold_accuracies.tolist() == [0.0] * 10
    assert r.accuracy == 0.0 and r.accuracy_std == 0.0


def test_distance_equal_to_threshold_is_predicted_different():
    # strict "<": a distance equal to the chosen threshold is not a match
    dist = np.array([0.5] * 10)
    r = evaluate_distances(dist, np.ones(10, bool))
    assert r.thresholds.tolist() == pytest.approx([0.51] * 10)  # 0.50 itself would reject them
    assert r.accuracy == 1.0


def test_all_same_pairs_like_small_lfw():
    # 10 same pairs, folds of one pair: threshold = first grid value above the 9 training distances
    dist = np.array([0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70, 0.80, 0.90, 1.505])
    r = evaluate_distances(dist, np.ones(10, bool))
    # folds 0..8 train on a set containing 1.505 -> threshold 1.51, their pair passes;
    # fold 9 trains on max 0.90 -> threshold 0.91 and its pair at 1.505 fails
    assert r.thresholds.tolist() == pytest.approx([1.51] * 9 + [0.91])
    assert r.fold_accuracies.tolist() == [1.0] * 9 + [0.0]
    assert r.accuracy == pytest.approx(0.9) and r.accuracy_std == pytest.approx(0.3)
    assert r.fpr.max() == 0.0  # no negatives anywhere: FPR 0 by convention
    assert r.val == 0.0 and r.far == 0.0  # training FAR never reaches 1e-3 -> threshold 0


def test_all_different_pairs():
    r = evaluate_distances(np.full(12, 2.0), np.zeros(12, bool))
    assert r.thresholds.tolist() == [0.0] * 10 and r.accuracy == 1.0
    assert r.tpr.max() == 0.0
    assert r.fpr[200] == 0.0 and r.fpr[201] == 1.0  # 2.00 is not < 2.00; 2.01 is above every distance


def test_fold_without_positives_has_zero_tpr():
    # 20 pairs, folds of 2; fold 0 holds two different pairs, every other fold one same + one different
    issame = np.array([False, False] + [True, False] * 9)
    dist = np.where(issame, 0.5, 3.0)
    r = evaluate_distances(dist, issame)
    assert r.accuracy == 1.0
    assert r.thresholds.tolist() == pytest.approx([0.51] * 10)
    assert r.tpr[50] == 0.0 and r.tpr[51] == pytest.approx(0.9)  # fold 0 contributes TPR 0
    assert r.fpr[300] == 0.0 and r.fpr[301] == 1.0
    assert r.tar_at_far(1e-4) == pytest.approx(0.9) and r.tar_at_far(1e-1) == pytest.approx(0.9)


def test_val_uses_largest_threshold_with_training_far_at_most_1e_3():
    # 20 pairs; negatives at 1.2345 and 2.5, positives at 1.0 and 1.3: with < 1000 training negatives
    # one false accept already exceeds 1e-3, so the threshold is the largest grid value <= 1.2345
    issame = np.array([True, False] * 10)
    dist = np.tile([1.0, 1.2345, 1.3, 2.5], 5)
    r = evaluate_distances(dist, issame)
    # each test fold = (one positive, one negative); threshold 1.234 accepts the 1.0 positives only
    positives_in_fold = dist[0::2]  # [1.0, 1.3, 1.0, 1.3, ...]
    expected = (positives_in_fold < 1.234).astype(float)
    assert r.val == pytest.approx(expected.mean()) and r.val_std == pytest.approx(expected.std())
    assert r.far == 0.0


def test_val_threshold_is_zero_when_training_far_never_reaches_target():
    # every negative at the maximal distance 4.0: FAR is 0 on the whole grid (which stops at 3.999)
    issame = np.array([True, False] * 10)
    r = evaluate_distances(np.where(issame, 0.2, 4.0), issame)
    assert r.val == 0.0 and r.far == 0.0
    assert r.accuracy == 1.0


def test_flip_fusion_is_sum_then_normalise_and_xnorm_averages_all_rows():
    rng = np.random.default_rng(3)
    orig = rng.normal(size=(24, 5))
    flip = rng.normal(size=(24, 5)) * 7.0  # very different norms: sum and mean-of-unit-vectors differ
    issame = rng.random(12) < 0.5
    r = evaluate_flip(orig, flip, issame)
    summed = evaluate(orig + flip, issame)
    assert r.fold_accuracies.tolist() == summed.fold_accuracies.tolist()
    assert r.thresholds.tolist() == summed.thresholds.tolist()
    assert r.accuracy_noflip == evaluate(orig, issame).accuracy
    rows = np.concatenate([orig, flip])
    assert r.xnorm == pytest.approx(np.mean([np.sqrt(np.sum(v * v)) for v in rows]), rel=1e-14)


def test_xnorm_of_known_norms():
    a = np.array([[3.0, 4.0], [0.0, 1.0]])
    assert xnorm(a, 2 * a) == pytest.approx((5 + 1 + 10 + 2) / 4)


def test_zero_rows_stay_zero_after_normalising():
    out = l2_normalize(np.array([[0.0, 0.0], [3.0, 4.0]]))
    assert out.tolist() == [[0.0, 0.0], [0.6, 0.8]]


def test_non_finite_embeddings_are_refused():
    emb = np.ones((20, 4))
    emb[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate(emb, np.ones(10, bool))


def test_json_record_has_the_specified_fields():
    rng = np.random.default_rng(11)
    record = evaluate_flip(rng.normal(size=(40, 4)), rng.normal(size=(40, 4)), rng.random(20) < 0.5).to_json()
    assert {"accuracy", "accuracy_std", "fold_accuracies", "thresholds", "accuracy_noflip", "xnorm", "val",
            "val_std", "far", "tar_at_far", "pairs"} <= set(record)
    assert len(record["fold_accuracies"]) == 10 and len(record["thresholds"]) == 10
    assert record["pairs"] == 20
    json.dumps(record, allow_nan=False)
