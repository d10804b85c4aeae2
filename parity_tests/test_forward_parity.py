"""Eval-mode forward parity at every layer (float32), on seeded inputs and on real faces, for every
registry architecture; and train-mode forward parity with the running-statistics update."""

from __future__ import annotations

import numpy as np

import architectures
from converters.inputs import faces_from_bin, seeded_images
from converters.parity import (
    EMBEDDING_COSINE,
    EVAL_LAYER_REL,
    OUTPUT,
    RUNNING_STAT_REL,
    TRAIN_LAYER_REL,
    compare_forward,
    compare_train_forward,
    unbiased_running_var,
)
from parity_tests.archs import SUITE_PARAMETERS, skip_unless_large


def assert_passes(report, rel_gate):
    assert report.passed, report.verdict() + "\n" + report.table(only_failures=True)
    assert max(r.rel for r in report.rows) <= rel_gate


def test_eval_forward_every_layer_within_gate_on_seeded_inputs(converted, arch):
    _, _, ref, out = converted
    report = compare_forward(ref, out, seeded_images(4, seed=11))
    assert_passes(report, EVAL_LAYER_REL)
    assert report.embedding_cosine >= EMBEDDING_COSINE
    # every module of the reference that runs (a ModuleList is not called) was compared, at every call (a
    # ViT calls its dropouts and identity drop-paths twice per block: "name#2"), ending with the embedding
    import torch

    called = {r.layer.split("#")[0] for r in report.rows}
    assert called == {n or OUTPUT for n, m in ref.named_modules() if not isinstance(m, torch.nn.ModuleList)}
    assert report.rows[-1].layer == OUTPUT and report.rows[-1].shape == (4, 512)


def test_eval_forward_every_layer_within_gate_on_real_faces(converted, arch, small_lfw):
    _, _, ref, out = converted
    faces = faces_from_bin(small_lfw, 8)  # four pairs of real faces
    assert faces.shape == (8, 3, 112, 112) and faces.min() >= -1.0 and faces.max() <= 1.0
    report = compare_forward(ref, out, faces)
    assert_passes(report, EVAL_LAYER_REL)
    assert report.embedding_cosine >= EMBEDDING_COSINE


def test_calibrated_demo_embeddings_have_trained_model_norms(converted, arch):
    """Calibrated BN statistics keep the embedding norm near sqrt(512) instead of overflowing."""
    import torch

    ref = converted[2]
    with torch.no_grad():
        emb = ref(torch.from_numpy(seeded_images(8, seed=6))).numpy()
    norms = np.linalg.norm(emb, axis=1)
    assert np.all(np.isfinite(norms))
    assert 10.0 < norms.mean() < 45.0


def test_train_forward_and_running_statistics_update(arch, fresh_pair):
    """Batch-statistics forward, then running mean/var of every BN after one step, on fresh models.

    Paddle updates the running variance with the biased batch variance and torch with the unbiased one;
    the comparison applies the exact n/(n-1) correction, and the raw gap is checked to be what theory says.
    """
    skip_unless_large(arch, SUITE_PARAMETERS)
    _, _, ref, out = fresh_pair(arch)
    if hasattr(ref, "inject_randomness"):  # a ViT: both frameworks get the same patch and drop-path masks
        rng = np.random.default_rng(3)
        noise = rng.random((4, ref.num_patches))
        keep = (rng.random((len(ref.blocks), 2, 4)) > 0.3).astype(np.float32)
        ref.inject_randomness(noise, keep)
        out.inject_randomness(noise, keep)
    forward, stats = compare_train_forward(ref, out, seeded_images(4, seed=12))
    assert_passes(forward, TRAIN_LAYER_REL)
    assert_passes(stats, RUNNING_STAT_REL)
    # the embedding's BatchNorm1d sees n = batch = 4 values per channel: uncorrected, the gap is large
    last_bn = architectures.spec_of(arch).embedding_key.replace(".weight", ".running_var")
    row = next(r for r in stats.rows if r.layer == last_bn)
    assert "n=4;" in row.note
    raw_gap = float(row.note.split("uncorrected rel ")[1])
    assert raw_gap > 1e-2


def test_unbiased_correction_formula_is_exact():
    rng = np.random.default_rng(0)
    before = rng.uniform(0.5, 2.0, 16)
    values = rng.normal(size=(5, 16))
    biased, unbiased = values.var(axis=0), values.var(axis=0, ddof=1)
    paddle_var = 0.9 * before + 0.1 * biased
    torch_var = 0.9 * before + 0.1 * unbiased
    np.testing.assert_allclose(unbiased_running_var(paddle_var, before, 5), torch_var, rtol=1e-13)
