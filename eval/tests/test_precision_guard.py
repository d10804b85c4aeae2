"""The accuracy guard: cosines, accuracy difference and the pairs judged differently at fp32's thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from eval.precision_guard import decisions_at, guard_table, pack_guard
from eval.protocol import evaluate_flip


def pack(pairs: int = 600, dim: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    issame = rng.random(pairs) < 0.5
    base = rng.normal(size=(pairs, dim))
    emb = np.repeat(base, 2, axis=0)
    emb[1::2] = np.where(issame[:, None], base + 0.9 * rng.normal(size=base.shape), rng.normal(size=base.shape))
    flipped = emb + 0.1 * rng.normal(size=emb.shape)
    return emb.astype(np.float32), flipped.astype(np.float32), issame


def test_identical_embeddings_cost_nothing():
    original, flipped, issame = pack()
    guard = pack_guard("p", original, flipped, original, flipped, issame)
    assert guard.cosine_min == pytest.approx(1.0, abs=1e-12) and guard.differ == 0
    assert guard.accuracy_difference == 0.0


def test_decisions_at_the_reference_thresholds_count_by_hand():
    original, flipped, issame = pack()
    rng = np.random.default_rng(1)
    noisy_o = original + 0.3 * rng.normal(size=original.shape).astype(np.float32)
    noisy_f = flipped + 0.3 * rng.normal(size=flipped.shape).astype(np.float32)
    guard = pack_guard("p", original, flipped, noisy_o, noisy_f, issame)
    reference = evaluate_flip(original, flipped, issame)
    # by hand: distances of the noisy model against the fp32 model's per-fold thresholds
    s = (noisy_o.astype(np.float64) + noisy_f)
    s /= np.linalg.norm(s, axis=1, keepdims=True)
    dist = np.sum((s[0::2] - s[1::2]) ** 2, axis=1)
    fold = np.repeat(np.arange(10), 60)
    expected = np.count_nonzero((dist < reference.thresholds[fold]) != reference.decisions)
    assert guard.differ == expected > 0
    assert np.array_equal(decisions_at(original.astype(np.float64) + flipped, reference.thresholds),
                          reference.decisions)
    assert 0.9 < guard.cosine_min < guard.cosine_mean < 1.0
    table = guard_table([guard], "bf16")
    assert f"{expected}/600" in table and "bf16" in table


def test_nan_embeddings_are_refused():
    original, flipped, issame = pack()
    bad = original.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pack_guard("p", original, flipped, bad, flipped, issame)
