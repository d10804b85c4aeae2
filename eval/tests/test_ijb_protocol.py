"""The IJB-B/C 1:1 protocol: exact equality with a literal loop-by-loop re-derivation, and its errors.

The ``reference_*`` functions (eval/tests/ijb_reference.py) follow the description of InsightFace's
``eval_ijbc.py`` literally, one Python loop iteration per template, per media and per pair. They share no
code with eval/ijb_protocol.py, whose vectorised results must equal them bit for bit (``np.array_equal`` on
features and scores, ``==`` on TAR values).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from eval import ijb_protocol
from eval.ijb_protocol import (
    FARS,
    VARIANTS,
    Variant,
    _page_releaser,
    aggregate_templates,
    format_table,
    image_features,
    pair_scores,
    parse_variant,
    roc,
    tar_at_far,
)
from eval.tests.ijb_reference import (
    reference_image_features,
    reference_scores,
    reference_tar,
    reference_templates,
)


# --------------------------------------------------------------------------- synthetic layouts
def make_layout(rng, n_templates, media_counts, image_counts, id_base=1000, id_step=7, media_pool=None):
    """Template and media id of every image, images shuffled (templates not contiguous, ids unsorted).
    ``media_counts(rng)`` / ``image_counts(rng)`` draw the medias of a template / images of a media; media
    ids come from a shared pool, so that different templates hold the same media ids."""
    template_ids = id_base + id_step * rng.permutation(n_templates * 3)[:n_templates]
    pool = media_pool if media_pool is not None else np.arange(-50, 4 * n_templates) * 13
    templates, medias = [], []
    for t in template_ids:
        for m in rng.choice(pool, size=media_counts(rng), replace=False):
            k = image_counts(rng)
            templates += [t] * k
            medias += [m] * k
    order = rng.permutation(len(templates))
    return np.asarray(templates, np.int64)[order], np.asarray(medias, np.int64)[order], template_ids


def make_raw(rng, n, dim, centers=None, weight=0.0):
    """float32 [N, 2, D] embeddings of widely varying norms (so that the order of additions matters)."""
    scale = np.exp(2.0 * rng.standard_normal((n, 1, 1)))
    raw = rng.standard_normal((n, 2, dim)) * scale
    if centers is not None:
        raw = raw + weight * scale * centers[:, None, :]
    return raw.astype(np.float32)


def make_pairs(rng, template_ids, count):
    p1 = rng.choice(template_ids, count)
    p2 = rng.choice(template_ids, count)
    labels = (rng.random(count) < 0.3).astype(np.int64)
    return p1, p2, labels


def small_case(seed=0, dim=16):
    rng = np.random.default_rng(seed)
    templates, medias, ids = make_layout(
        rng, 40, media_counts=lambda r: int(r.integers(1, 6)), image_counts=lambda r: int(r.choice([1, 1, 2, 3, 12]))
    )
    raw = make_raw(rng, len(templates), dim)
    faceness = rng.uniform(0.3, 1.0, len(templates)).astype(np.float32)
    p1, p2, labels = make_pairs(rng, ids, 600)
    return raw, faceness, templates, medias, p1, p2, labels


def assert_same_as_reference(raw, faceness, templates, medias, p1, p2, labels, variant, image_kw=None,
                             template_kw=None, pair_kw=None):
    feats = image_features(raw, faceness, variant, **(image_kw or {}))
    ref_feats = reference_image_features(raw.reshape(len(raw), -1), faceness, variant)
    assert feats.dtype == np.float32 and ref_feats.dtype == np.float32
    assert np.array_equal(feats, ref_feats)

    tf, ut = aggregate_templates(feats, templates, medias, **(template_kw or {}))
    ref_tf, ref_ut = reference_templates(ref_feats, templates, medias)
    assert tf.dtype == np.float64 and ut.dtype == np.int64
    assert np.array_equal(ut, ref_ut)
    assert np.array_equal(tf, ref_tf)

    scores = pair_scores(tf, ut, p1, p2, **(pair_kw or {}))
    ref_scores = reference_scores(ref_tf, ref_ut, p1, p2)
    assert scores.dtype == np.float64
    assert np.array_equal(scores, ref_scores)

    tars = tar_at_far(labels, scores)
    ref_tars = reference_tar(labels, ref_scores)
    assert list(tars) == list(FARS)
    for far in FARS:
        assert tars[far] == ref_tars[far]
    return feats, tf, ut, scores, tars


# --------------------------------------------------------------------------- variants
def test_variants_parse_and_name():
    assert len(VARIANTS) == 8 and len(set(VARIANTS)) == 8
    for name in VARIANTS:
        assert parse_variant(name).name == name
        assert parse_variant(name.lower()) == parse_variant(name)
    assert parse_variant("N1D1F1") == Variant(norm_score=True, detector_score=True, flip=True)
    assert parse_variant("N0D1F0") == Variant(norm_score=False, detector_score=True, flip=False)
    for bad in ("", "N1D1", "N2D1F1", "D1N1F1", "N1D1F1X", "n1 d1 f1"):
        with pytest.raises(ValueError, match="is not one of"):
            parse_variant(bad)


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_equals_the_loops(name):
    raw, faceness, templates, medias, p1, p2, labels = small_case(seed=VARIANTS.index(name))
    variant = parse_variant(name)
    # small chunks and several threads: every code path that splits the work
    feats, tf, ut, scores, _ = assert_same_as_reference(
        raw, faceness, templates, medias, p1, p2, labels, variant, image_kw={"chunk": 37, "threads": 2},
        template_kw={"chunk": 50, "threads": 2}, pair_kw={"chunk": 33, "threads": 2},
    )
    # and the defaults (one chunk) give the same bits
    assert np.array_equal(image_features(raw, faceness, variant), feats)
    assert np.array_equal(aggregate_templates(feats, templates, medias)[0], tf)
    assert np.array_equal(pair_scores(tf, ut, p1, p2), scores)


def test_chunks_threads_and_tiles_do_not_change_results(monkeypatch):
    raw, faceness, templates, medias, p1, p2, _ = small_case(seed=11)
    variant = parse_variant("N1D1F1")
    feats = image_features(raw, faceness, variant)
    tf, ut = aggregate_templates(feats, templates, medias)
    scores = pair_scores(tf, ut, p1, p2)
    assert np.array_equal(scores, reference_scores(tf, ut, p1, p2))
    for chunk, threads in itertools.product((1, 5, 64, 10**6), (1, 2, 3)):
        assert np.array_equal(image_features(raw, faceness, variant, chunk=chunk, threads=threads), feats)
        assert np.array_equal(aggregate_templates(feats, templates, medias, chunk=chunk, threads=threads)[0], tf)
        assert np.array_equal(pair_scores(tf, ut, p1, p2, chunk=chunk, threads=threads), scores)
    # pairs visited tile by tile (blocks of 1, 3 and 16 templates)
    for rows in (1, 3, 16):
        monkeypatch.setattr(ijb_protocol, "_TILE_BYTES", rows * tf.shape[1] * 8)
        for chunk, threads in ((1, 1), (7, 2), (64, 3)):
            assert np.array_equal(pair_scores(tf, ut, p1, p2, chunk=chunk, threads=threads), scores)


# --------------------------------------------------------------------------- inputs
def test_flip_summed_input_and_memmap(tmp_path):
    raw, faceness, templates, medias, p1, p2, labels = small_case(seed=3)
    for name in ("N1D1F1", "N0D0F1", "N1D0F1", "N0D1F1"):
        variant = parse_variant(name)
        summed = raw[:, 0] + raw[:, 1]
        assert np.array_equal(image_features(summed, faceness, variant, chunk=9),
                              image_features(raw, faceness, variant))
    with pytest.raises(ValueError, match="already flip-summed"):
        image_features(raw[:, 0] + raw[:, 1], faceness, parse_variant("N1D1F0"))

    path = tmp_path / "raw.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=raw.shape)
    mm[:] = raw
    mm.flush()
    del mm
    mapped = np.load(path, mmap_mode="r")
    assert isinstance(mapped, np.memmap)
    assert _page_releaser(mapped) is not None  # rows are dropped from memory once read: data must survive
    variant = parse_variant("N1D1F1")
    feats, tf, *_ = assert_same_as_reference(mapped, faceness, templates, medias, p1, p2, labels, variant,
                                             image_kw={"chunk": 17})
    # features written to a memmap aggregate the same way
    fpath = tmp_path / "feats.npy"
    fm = np.lib.format.open_memmap(fpath, mode="w+", dtype=np.float32, shape=feats.shape)
    fm[:] = feats
    fm.flush()
    del fm
    assert np.array_equal(aggregate_templates(np.load(fpath, mmap_mode="r"), templates, medias, chunk=20)[0], tf)


def test_long_medias_many_medias_single_images_and_odd_ids():
    """Medias of up to 300 images and templates of 60 medias (where a pairwise or blocked summation would
    round differently), one-image templates, negative, huge and unsorted int32/int64 ids."""
    rng = np.random.default_rng(5)
    dim = 24
    templates, medias = [], []
    layout = [  # (template id, [images per media])
        (-5, [300]), (10**15, [1]), (7, [1] * 60), (-(10**12), [2, 150, 1, 33] + [1] * 55),
        (3, [1]), (2**40, [9, 8, 17, 129]), (0, [1, 1]), (-1, [64] * 3 + [1] * 70),
    ]
    for t, counts in layout:
        media_ids = rng.choice(np.arange(-500, 500) * 10**9, size=len(counts), replace=False)
        for m, k in zip(media_ids, counts):
            templates += [t] * k
            medias += [m] * k
    order = rng.permutation(len(templates))
    templates = np.asarray(templates, np.int64)[order]
    medias = np.asarray(medias, np.int64)[order]
    raw = make_raw(rng, len(templates), dim)
    faceness = rng.uniform(0.5, 1.0, len(templates)).astype(np.float32)
    ids = np.array([t for t, _ in layout])
    p1 = np.repeat(ids, len(ids))
    p2 = np.tile(ids, len(ids))
    labels = (p1 == p2).astype(np.int64)
    for name in ("N1D1F1", "N0D0F0"):
        variant = parse_variant(name)
        feats, tf, *_ = assert_same_as_reference(raw, faceness, templates, medias, p1, p2, labels, variant,
                                                 template_kw={"chunk": 100})
    # the layout does discriminate: summing a 300-image media pairwise rounds differently
    rows = feats[templates == -5]
    sequential = np.zeros(dim, np.float32)
    for row in rows:
        sequential = sequential + row
    assert not np.array_equal(np.add.reduce(rows.T.copy(), axis=-1), sequential)

    # int32 ids (small range: the lookup-table path) give the same scores as int64 ones
    small = np.array([t for t, _ in layout if abs(t) < 2**31])
    keep = np.isin(templates, small)
    tf64, ut64 = aggregate_templates(feats[keep], templates[keep], medias[keep] % 1000)
    tf32, ut32 = aggregate_templates(feats[keep], templates[keep].astype(np.int32),
                                     (medias[keep] % 1000).astype(np.int32))
    assert np.array_equal(tf64, tf32) and np.array_equal(ut64, ut32)
    q1, q2 = np.repeat(small, len(small)), np.tile(small, len(small))
    assert np.array_equal(pair_scores(tf32, ut32, q1.astype(np.int32), q2.astype(np.int32)),
                          reference_scores(tf64, ut64, q1, q2))


def test_score_ties_duplicated_templates_repeated_and_symmetric_pairs():
    """Templates with identical images score identically; repeated and swapped pairs give equal scores:
    many ties in the ROC, where the nearest-FPR rule and its tie-breaking decide."""
    rng = np.random.default_rng(8)
    templates, medias, ids = make_layout(
        rng, 60, media_counts=lambda r: int(r.integers(1, 4)), image_counts=lambda r: int(r.integers(1, 4))
    )
    raw = make_raw(rng, len(templates), 12)
    faceness = rng.uniform(0.5, 1.0, len(templates)).astype(np.float32)
    # copy the images of the first 20 templates into 20 new templates (same media ids, same order)
    copies_t, copies_m, copies_raw, copies_f = [], [], [], []
    for i, t in enumerate(ids[:20]):
        rows = np.flatnonzero(templates == t)
        copies_t.append(np.full(len(rows), 10**6 + i))
        copies_m.append(medias[rows])
        copies_raw.append(raw[rows])
        copies_f.append(faceness[rows])
    templates = np.concatenate([templates] + copies_t)
    medias = np.concatenate([medias] + copies_m)
    raw = np.concatenate([raw] + copies_raw)
    faceness = np.concatenate([faceness] + copies_f)
    twins = np.arange(10**6, 10**6 + 20)

    p1, p2, labels = make_pairs(rng, ids, 3000)
    p1 = np.concatenate([p1, p2[:500], twins, p1[:200], twins[:5]])
    p2 = np.concatenate([p2, p1[:500], ids[:20], p2[:200], rng.choice(ids, 5)])
    labels = np.concatenate([labels, labels[:500], np.ones(20, np.int64), labels[:200], np.zeros(5, np.int64)])
    for name in ("N1D1F1", "N0D1F0"):
        _, tf, ut, scores, _ = assert_same_as_reference(raw, faceness, templates, medias, p1, p2, labels,
                                                        parse_variant(name))
        row = {int(t): i for i, t in enumerate(ut)}
        for i, t in enumerate(ids[:20]):
            assert np.array_equal(tf[row[int(t)]], tf[row[10**6 + i]])
        assert np.array_equal(scores[3000:3500], scores[:500])  # swapped pairs
        assert np.array_equal(scores[3520:3720], scores[:200])  # repeated pairs
        assert len(np.unique(scores)) < len(scores) - 700


def test_large_layout_equals_the_loops(monkeypatch):
    """2,000+ templates, 100,000+ pairs (D = 64) with subjects, so that TAR@FAR lies strictly inside (0, 1)."""
    rng = np.random.default_rng(2024)
    dim, n_templates, n_subjects = 64, 2100, 300
    templates, medias, ids = make_layout(
        rng, n_templates, media_counts=lambda r: int(r.choice([1, 1, 2, 3, 5, 9])),
        image_counts=lambda r: int(r.choice([1, 1, 1, 2, 4, 11])), id_base=1, id_step=1,
    )
    subject_of = dict(zip(ids.tolist(), rng.integers(0, n_subjects, n_templates).tolist()))
    subject = np.array([subject_of[t] for t in templates.tolist()])
    centers = rng.standard_normal((n_subjects, dim))
    raw = make_raw(rng, len(templates), dim, centers=centers[subject], weight=0.35)
    faceness = rng.uniform(0.3, 1.0, len(templates)).astype(np.float32)

    by_subject = {}
    for t, s in subject_of.items():
        by_subject.setdefault(s, []).append(t)
    genuine = [(a, b) for group in by_subject.values() for a, b in itertools.combinations(group, 2)]
    p1 = rng.choice(ids, 110_000)
    p2 = rng.choice(ids, 110_000)
    p1 = np.concatenate([p1, [a for a, _ in genuine]])
    p2 = np.concatenate([p2, [b for _, b in genuine]])
    subj = np.array([subject_of[t] for t in p1.tolist()])
    labels = (subj == np.array([subject_of[t] for t in p2.tolist()])).astype(np.int64)
    assert len(p1) >= 100_000 and labels.sum() > 1000

    monkeypatch.setattr(ijb_protocol, "_TILE_BYTES", 100 * dim * 8)  # 21 x 21 tiles of 100 templates
    *_, scores, tars = assert_same_as_reference(raw, faceness, templates, medias, p1, p2, labels,
                                                parse_variant("N1D1F1"), template_kw={"chunk": 4096},
                                                pair_kw={"chunk": 1000})
    assert 0 < tars[1e-6] < tars[1e-3] < tars[1e-1] < 1
    monkeypatch.setattr(ijb_protocol, "_TILE_BYTES", 4 * dim * 8)  # 525 x 525 tiles: int64 tile keys
    tf, ut = aggregate_templates(image_features(raw, faceness, parse_variant("N1D1F1")), templates, medias)
    assert np.array_equal(pair_scores(tf, ut, p1, p2), scores)


# --------------------------------------------------------------------------- ROC rule, by hand
def test_tar_at_far_nearest_fpr_and_tie_breaking_by_hand():
    # genuine 0.9 0.6 0.6 0.4, impostors 0.7 0.5 0.3 0.2: thresholds 0.9 ... 0.2 give (fp, tp) (0, 1) (1, 1)
    # (1, 3) (2, 3) (2, 4) (3, 4) (4, 4); sklearn prepends (0, 0) and drops the collinear (3, 4). Reversed:
    # fpr [1, .5, .5, .25, .25, 0, 0], tpr [1, 1, .75, .75, .25, .25, 0]
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.6, 0.6, 0.4, 0.7, 0.5, 0.3, 0.2])
    fpr, tpr = roc(labels, scores)
    assert fpr.tolist() == [1, 0.5, 0.5, 0.25, 0.25, 0, 0]
    assert tpr.tolist() == [1, 1, 0.75, 0.75, 0.25, 0.25, 0]
    tars = tar_at_far(labels, scores, fars=(0.0, 0.1, 0.125, 0.25, 0.3, 0.375, 0.5, 0.76, 2.0))
    # equal FPRs: the first of the reversed curve, i.e. the largest TAR
    assert tars[0.0] == 0.25 and tars[0.25] == 0.75 and tars[0.5] == 1.0
    assert tars[0.1] == 0.25 and tars[0.3] == 0.75 and tars[0.76] == 1.0 and tars[2.0] == 1.0
    # exactly between two FPRs: the first of the reversed curve (the larger FPR)
    assert tars[0.125] == 0.75 and tars[0.375] == 1.0
    assert tar_at_far(labels, scores) == reference_tar(labels, scores)


@pytest.mark.parametrize("case", ["quantised", "float32", "integers", "two_values", "one_value", "distinct"])
def test_roc_equals_sklearn_roc_curve_reversed(case):
    rng = np.random.default_rng(len(case))
    n = 5000
    labels = (rng.random(n) < 0.2).astype(np.int64)
    labels[:2] = [0, 1]
    scores = {
        "quantised": np.round(rng.standard_normal(n) + labels, 1),
        "float32": (rng.standard_normal(n) + labels).astype(np.float32),
        "integers": rng.integers(-3, 4, n) + labels,
        "two_values": rng.integers(0, 2, n).astype(np.float64),
        "one_value": np.full(n, 0.25),
        "distinct": rng.standard_normal(n) + 2 * labels,
    }[case]
    fpr, tpr = roc(labels, scores)
    ref_fpr, ref_tpr, _ = roc_curve(labels, scores)
    assert fpr.dtype == np.float64 and tpr.dtype == np.float64
    assert np.array_equal(fpr, np.flipud(ref_fpr)) and np.array_equal(tpr, np.flipud(ref_tpr))
    assert tar_at_far(labels, scores) == reference_tar(labels, scores)
    assert tar_at_far(labels.astype(bool), scores) == reference_tar(labels, scores)


# --------------------------------------------------------------------------- errors
def test_pair_scores_names_the_first_unknown_template():
    raw, faceness, templates, medias, p1, p2, _ = small_case(seed=1)
    tf, ut = aggregate_templates(image_features(raw, faceness, parse_variant("N1D1F1")), templates, medias)
    bad1, bad2 = p1.copy(), p2.copy()
    bad2[417] = 999_999
    bad1[523] = -3
    with pytest.raises(ValueError, match=r"pair 417 \(0-based\): template 999999 "):
        pair_scores(tf, ut, bad1, bad2, chunk=50)
    with pytest.raises(ValueError, match=r"pair 523 \(0-based\): template -3 "):
        pair_scores(tf, ut, bad1, p2)
    # the searchsorted path (ids spread over a huge range)
    big = ut * 10**12
    with pytest.raises(ValueError, match=r"pair 2 \(0-based\): template 5 "):
        pair_scores(tf, big, big[[0, 1, 0]], np.array([big[1], big[0], 5]))
    with pytest.raises(ValueError, match="strictly ascending"):
        pair_scores(tf, ut[::-1], p1, p2)


def test_tar_at_far_rejects_degenerate_labels():
    scores = np.array([0.1, 0.5, 0.7])
    with pytest.raises(ValueError, match="no genuine pairs"):
        tar_at_far(np.array([0, 0, 0]), scores)
    with pytest.raises(ValueError, match="no impostor pairs"):
        tar_at_far(np.array([1, 1, 1]), scores)
    with pytest.raises(ValueError, match=r"pair 1 \(0-based\): label 2"):
        tar_at_far(np.array([0, 2, 1]), scores)
    with pytest.raises(ValueError, match=r"pair 2 \(0-based\): score nan"):
        tar_at_far(np.array([0, 1, 1]), np.array([0.1, 0.2, np.nan]))
    with pytest.raises(ValueError, match="same length"):
        tar_at_far(np.array([0, 1]), scores)
    with pytest.raises(ValueError, match="no pairs"):
        tar_at_far(np.array([], np.int64), np.array([]))


def test_input_errors():
    raw, faceness, templates, medias, *_ = small_case(seed=2)
    variant = parse_variant("N1D1F1")
    with pytest.raises(ValueError, match="needs the detector scores"):
        image_features(raw, None, variant)
    assert np.array_equal(image_features(raw, None, parse_variant("N1D0F1")),
                          image_features(raw, faceness, parse_variant("N1D0F1")))
    with pytest.raises(ValueError, match="detector scores have shape"):
        image_features(raw, faceness[:-1], variant)
    with pytest.raises(ValueError, match=r"\[N, 2, D\] or \[N, D\]"):
        image_features(raw[:, :, :, None], faceness, variant)
    with pytest.raises(ValueError, match=r"\[N, 2, D\] expected"):
        image_features(np.concatenate([raw, raw], axis=1), faceness, variant)
    feats = image_features(raw, faceness, variant)
    with pytest.raises(ValueError, match="template ids has"):
        aggregate_templates(feats, templates[:-1], medias)
    with pytest.raises(ValueError, match="media ids must hold integers"):
        aggregate_templates(feats, templates, medias.astype(np.float64))
    with pytest.raises(ValueError, match="must be float32"):
        aggregate_templates(feats.astype(np.float64), templates, medias)
    with pytest.raises(ValueError, match="at least 2"):
        aggregate_templates(feats[:, :1], templates, medias)


def test_format_table_layout():
    rows = {"r100": dict(zip(FARS, (0.8981, 0.94843, 0.9643, 0.9747, 0.983512, 0.990299))),
            "mbf": dict(zip(FARS, (0.05, 0.5, 0.6, 0.7, 0.8, 1.0)))}
    assert format_table(rows, "IJBC").splitlines() == [
        "+-----------+-------+-------+--------+-------+-------+--------+",
        "|  Methods  | 1e-06 | 1e-05 | 0.0001 | 0.001 | 0.01  |  0.1   |",
        "+-----------+-------+-------+--------+-------+-------+--------+",
        "| r100-IJBC | 89.81 | 94.84 | 96.43  | 97.47 | 98.35 | 99.03  |",
        "| mbf-IJBC  | 5.00  | 50.00 | 60.00  | 70.00 | 80.00 | 100.00 |",
        "+-----------+-------+-------+--------+-------+-------+--------+",
    ]
    with pytest.raises(ValueError, match="has FARs"):
        format_table({"a": {1e-4: 0.5}, "b": {1e-3: 0.5}}, "IJBB")
