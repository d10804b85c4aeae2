"""The two-rank Partial FC cases: inputs written by the test, read by the Paddle and PyTorch workers.

Each case is a dict (margin, sample rate, class count) plus arrays in one ``inputs.npz``: per case the
global batch ``emb{i}`` [N, D] and ``labels{i}`` [N], all centres ``weight{i}`` [C, D] and the sampling
scores ``scores{i}_{rank}`` [num_local].
Workers write ``{framework}_rank{r}.npz`` with ``loss{i}``, ``d_emb{i}`` (this rank's rows, before any
DataParallel averaging), ``d_w{i}`` (this rank's shard), ``index{i}`` and ``labels{i}`` (sampling).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from parity_tests.workers.numpy_reference import shard_range

WORLD = 2
BATCH_PER_RANK = 4
DIM = 8
CASES = [
    dict(name="arcface_full_uneven", m2=0.5, m3=0.0, t=0.0, grad_mode="insightface", sample_rate=1.0, classes=11),
    dict(name="arcface_exact_filter_sampled", m2=0.5, m3=0.0, t=0.2, grad_mode="exact", sample_rate=0.5, classes=13),
    dict(name="cosface_positives_only", m2=0.0, m3=0.4, t=0.0, grad_mode="insightface", sample_rate=0.0, classes=12),
    dict(name="combined_filter_full", m2=0.3, m3=0.2, t=0.2, grad_mode="insightface", sample_rate=1.0, classes=11),
    dict(name="rank1_has_no_columns", m2=0.5, m3=0.0, t=0.0, grad_mode="insightface", sample_rate=0.0, classes=10),
]


def write_inputs(folder: Path, seed: int = 0) -> None:
    """Draw every case's inputs from numpy and save ``inputs.npz`` and ``cases.json`` in ``folder``."""
    rng = np.random.default_rng(seed)
    n = WORLD * BATCH_PER_RANK
    arrays = {}
    for i, case in enumerate(CASES):
        classes = case["classes"]
        weight = rng.normal(0.0, 0.01, size=(classes, DIM))
        high = shard_range(classes, WORLD, 1)[0] if case["name"] == "rank1_has_no_columns" else classes
        labels = rng.integers(0, high, size=n)
        unit = weight[labels] / np.linalg.norm(weight[labels], axis=1, keepdims=True)
        arrays[f"emb{i}"] = rng.normal(size=(n, DIM)) + 2.0 * unit  # near their centres: margins matter
        arrays[f"labels{i}"], arrays[f"weight{i}"] = labels, weight
        for rank in range(WORLD):
            arrays[f"scores{i}_{rank}"] = rng.random(shard_range(classes, WORLD, rank)[1])
    np.savez(folder / "inputs.npz", **arrays)
    (folder / "cases.json").write_text(json.dumps(CASES))


def read_inputs(folder: Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    """(cases, arrays) as written by ``write_inputs``."""
    with np.load(folder / "inputs.npz") as data:
        arrays = {k: data[k] for k in data.files}
    return json.loads((folder / "cases.json").read_text()), arrays
