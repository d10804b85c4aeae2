"""eval/ijb.py end to end: a model on a synthetic IJB layout built from real faces (two backends, identical
tables), every output (table, JSON, results.txt rows, scores, ROC PNG), the resumable cache, ``--features``
against a loop-by-loop re-derivation of the protocol, and one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval.ijb import main
from eval.results import read_results

ROOT = Path(__file__).resolve().parents[2]
TABLE_ROW = re.compile(r"\|\s*(\S+)-IJBC\s*\|" + r"\s*(\d+\.\d\d)\s*\|" * 6)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "eval" / "ijb.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=600)


def table_rows(text: str) -> dict[str, list[str]]:
    return {m.group(1): list(m.groups()[1:]) for m in map(TABLE_ROW.search, text.splitlines()) if m}


@pytest.fixture(scope="module")
def faces_layout(tmp_path_factory, small_lfw, small_dataset) -> Path:
    """A small IJB-C layout of real faces pasted into loose crops: 6 identities, 4 images each."""
    from eval.ijb_synthetic import write_synthetic_ijb

    root = tmp_path_factory.mktemp("ijb") / "IJBC"
    write_synthetic_ijb(root, 6, images_per_identity=4, seed=3, faces=[small_lfw, small_dataset])
    return root


def test_two_backends_give_identical_tables_and_every_output(faces_layout, r18_files, tmp_path, capsys):
    results, scores_dir, plot = tmp_path / "results.txt", tmp_path / "scores", tmp_path / "roc.png"
    tables, records = {}, {}
    for backend in ("paddle-inference", "torch"):
        out_json = tmp_path / f"{backend}.json"
        assert main(["--weights", str(r18_files["pdparams"]), "--data", str(faces_layout), "--target", "IJBC",
                     "--backend", backend, "--name", backend, "--cache-dir", str(r18_files["cache"]), "--batch-size", "8", "--threads", "2",
                     "--workers", "1", "--no-progress", "--json", str(out_json), "--results", str(results),
                     "--scores-dir", str(scores_dir), "--plot", str(plot),
                     *(["--overlay", str(scores_dir / "paddle-inference_ijbc.npy")] if backend == "torch" else [])
                     ]) == 0
        tables.update(table_rows(capsys.readouterr().out))
        records[backend] = json.loads(out_json.read_text())
    # the same TAR table from both frameworks, as printed and in the JSON
    assert tables["paddle-inference"] == tables["torch"], tables
    assert records["paddle-inference"]["tar_at_far"] == records["torch"]["tar_at_far"]
    record = records["torch"]
    layout = read_layout_counts(faces_layout)
    assert {k: record[k] for k in ("target", "variant", "images", "templates", "pairs", "backend")} == {
        "target": "IJBC", "variant": "N1D1F1", **layout, "backend": "torch"}
    assert list(record["tar_at_far"]) == ["1e-06", "1e-05", "1e-04", "1e-03", "1e-02", "1e-01"]
    assert record["weights"] == str(r18_files["pdparams"])
    # the scores of the two backends agree to float32 rounding of the embeddings
    a, b = (np.load(scores_dir / f"{n}_ijbc.npy") for n in ("paddle-inference", "torch"))
    assert a.shape == (layout["pairs"],) and a.dtype == np.float64
    assert np.abs(a - b).max() < 1e-5
    # one row per backend in results.txt, with the IJB-C columns
    table = read_results(results)
    assert {"ijbc_1e-4", "ijbc_1e-5"} <= set(table.datasets)
    backends = {key[2]: row for key, row in table.rows.items()}
    assert set(backends) == {"paddle-inference", "torch"}
    for row in backends.values():
        assert row["ijbc_1e-4"] == f"{100 * record['tar_at_far']['1e-04']:.2f}"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def read_layout_counts(root: Path) -> dict[str, int]:
    """Counted from the meta files directly (not with the code under test)."""
    lines = (root / "meta" / "ijbc_face_tid_mid.txt").read_text().split("\n")
    rows = [ln.split(" ") for ln in lines if ln]
    pairs = [ln for ln in (root / "meta" / "ijbc_template_pair_label.txt").read_text().split("\n") if ln]
    return {"images": len(rows), "templates": len({r[1] for r in rows}), "pairs": len(pairs)}


def test_published_ijb_numbers_sit_beside_a_known_model(faces_layout, r18_files, tmp_path):
    results = tmp_path / "results.txt"
    feats = np.random.default_rng(0).normal(size=(read_layout_counts(faces_layout)["images"], 2, 16))
    np.save(tmp_path / "f.npy", feats.astype(np.float32))
    assert main(["--features", str(tmp_path / "f.npy"), "--data", str(faces_layout), "--no-progress",
                 "--published", "ms1mv3_arcface_r50_fp16", "--results", str(results)]) == 0
    text = results.read_text()
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in text.splitlines() if ln.startswith("| ")]
    header, measured, published = rows[0], rows[1], rows[2]
    column = header.index("ijbc_1e-4")
    assert measured[2] == "precomputed" and published[2] == "published"
    value = float(measured[column])
    assert published[column] == f"96.46 ({value - 96.46:+.3f})"
    assert published[header.index("ijbc_1e-5")].startswith("94.79 (")


def test_cache_resumes_where_a_stopped_run_ended(faces_layout, r18_files, tmp_path, monkeypatch):
    import eval.ijb_extract as extract
    from eval import backends

    monkeypatch.setattr(extract, "COMMIT_SECONDS", 0.0)  # commit after every chunk (16 faces at batch 8)
    common = ["--weights", str(r18_files["pdparams"]), "--data", str(faces_layout), "--backend", "paddle-inference",
              "--cache-dir", str(r18_files["cache"]), "--batch-size", "8", "--workers", "0", "--no-progress"]
    assert main([*common, "--cache", str(tmp_path / "straight")]) == 0
    straight = np.load(tmp_path / "straight" / "features.npy")
    assert straight.shape == (24, 2, 512) and straight.dtype == np.float32
    assert not (tmp_path / "straight" / "features.partial.npy").exists()

    rows = []
    forward = backends.PaddleInferenceEmbedder.__call__

    def stopping(self, batch):  # the third forward pass fails, as if the run were killed there
        if len(rows) == 2:
            raise KeyboardInterrupt
        rows.append(len(batch))
        return forward(self, batch)

    monkeypatch.setattr(backends.PaddleInferenceEmbedder, "__call__", stopping)
    with pytest.raises(KeyboardInterrupt):
        main([*common, "--cache", str(tmp_path / "split")])
    progress = json.loads((tmp_path / "split" / "progress.json").read_text())
    assert progress["done"] == 16 and (tmp_path / "split" / "features.partial.npy").is_file()

    rows.clear()
    monkeypatch.setattr(backends.PaddleInferenceEmbedder, "__call__", lambda self, batch: (rows.append(len(batch)),
                                                                                 forward(self, batch))[1])
    assert main([*common, "--cache", str(tmp_path / "split")]) == 0
    assert sum(rows) == 2 * (24 - 16)  # only the faces not yet cached, each with its mirror
    np.testing.assert_array_equal(np.load(tmp_path / "split" / "features.npy"), straight)

    # the finished cache is what --features reads: the same table without the model
    rows.clear()
    assert main([*common, "--cache", str(tmp_path / "split"), "--json", str(tmp_path / "a.json")]) == 0
    assert rows == []
    assert main(["--features", str(tmp_path / "split" / "features.npy"), "--data", str(faces_layout),
                 "--no-progress", "--json", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a["tar_at_far"] == b["tar_at_far"]

    # a cache of other weights or another backend is refused, not silently reused
    proc = run("--weights", r18_files["pth"], "--data", faces_layout, "--backend", "torch", "--workers", "0",
               "--no-progress", "--cache", tmp_path / "split")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "holds the features of another run (different backend" in proc.stderr


@pytest.fixture(scope="module")
def large_meta(tmp_path_factory):
    """A meta-only IJB-C layout of 2,100 templates and 110,000 pairs, with raw [N, 2, 64] features."""
    from eval.ijb_synthetic import write_meta_only

    folder = tmp_path_factory.mktemp("ijb_meta")
    write_meta_only(folder / "IJBC", 12_000, 2_100, 110_000, 3_000, seed=5, features=folder / "f.npy", dim=64)
    return folder / "IJBC", folder / "f.npy"


@pytest.mark.parametrize("variant", ["N1D1F1", "N0D0F0"])
def test_features_give_exactly_the_tar_of_the_looped_protocol(large_meta, tmp_path, variant):
    from eval.ijb_protocol import parse_variant
    from eval.tests.ijb_reference import reference_run

    root, features = large_meta
    out = tmp_path / "out.json"
    proc = run("--features", features, "--data", root, "--target", "IJBC", "--variant", variant, "--json", out)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert (record["templates"], record["pairs"], record["images"]) == (2_100, 110_000, 12_000)
    expected = reference_run(root, "IJBC", np.load(features), parse_variant(variant))
    assert [record["tar_at_far"][f"{far:.0e}"] for far in expected] == [float(v) for v in expected.values()]
    assert 0 < expected[1e-4] < expected[1e-1] < 1  # a table with something to get wrong
    printed = table_rows(proc.stdout)[features.stem]
    assert printed == [f"{100 * v:.2f}" for v in expected.values()]


def _copy(layout: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(layout, dest)
    return dest


def _edit(path: Path, line: int, new: str | None) -> None:
    """Replace (or with None delete) 1-based ``line`` of a meta file."""
    lines = path.read_text().split("\n")
    if new is None:
        del lines[line - 1]
    else:
        lines[line - 1] = new
    path.write_text("\n".join(lines))


BAD_LAYOUTS = {
    "missing meta file": (lambda m: (m / "ijbc_template_pair_label.txt").unlink(),
                          "ijbc_template_pair_label.txt", None),
    "malformed line": (lambda m: _edit(m / "ijbc_face_tid_mid.txt", 3, "7.jpg 12"), "ijbc_face_tid_mid.txt", 3),
    "unknown template": (lambda m: _edit(m / "ijbc_template_pair_label.txt", 5, "999999 1 0"),
                         "ijbc_template_pair_label.txt", 5),
    "NaN landmark": (lambda m: _edit(m / "ijbc_name_5pts_score.txt", 4, " ".join(
        [(m / "ijbc_name_5pts_score.txt").read_text().split("\n")[3].split(" ")[0]] + ["nan"] * 10 + ["0.9"])),
        "ijbc_name_5pts_score.txt", 4),
    "degenerate landmarks": (lambda m: _edit(m / "ijbc_name_5pts_score.txt", 6, " ".join(
        [(m / "ijbc_name_5pts_score.txt").read_text().split("\n")[5].split(" ")[0]] + ["50.0"] * 10 + ["0.9"])),
        "ijbc_name_5pts_score.txt", 6),
}


@pytest.mark.parametrize("case", list(BAD_LAYOUTS))
def test_a_bad_layout_is_one_line_naming_the_file_and_line(case, faces_layout, tmp_path):
    root = _copy(faces_layout, tmp_path / "IJBC")
    mutate, name, line = BAD_LAYOUTS[case]
    mutate(root / "meta")
    feats = tmp_path / "f.npy"
    np.save(feats, np.ones((24, 2, 8), np.float32))
    out = tmp_path / "out.json"
    proc = run("--features", feats, "--data", root, "--json", out)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert name in proc.stderr and (line is None or f": line {line}: " in proc.stderr), proc.stderr
    assert not out.exists()


def test_a_missing_or_corrupt_image_and_wrong_feature_rows_are_one_line_errors(faces_layout, r18_files, tmp_path):
    root = _copy(faces_layout, tmp_path / "IJBC")
    names = [ln.split(" ")[0] for ln in (root / "meta" / "ijbc_face_tid_mid.txt").read_text().split("\n") if ln]
    (root / "loose_crop" / names[7]).unlink()
    model = ["--weights", r18_files["pdparams"], "--data", root, "--cache-dir", r18_files["cache"], "--workers", "1",
             "--no-progress", "--json", tmp_path / "out.json"]
    proc = run(*model)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "ijbc_name_5pts_score.txt: line 8: " in proc.stderr and names[7] in proc.stderr

    _copy(faces_layout / "loose_crop", tmp_path / "crops")
    (root / "loose_crop" / names[7]).write_bytes((tmp_path / "crops" / names[7]).read_bytes()[:300])  # truncated
    proc = run(*model)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"{root / 'loose_crop' / names[7]}: " in proc.stderr and "decoded" in proc.stderr, proc.stderr
    assert not (tmp_path / "out.json").exists()

    np.save(tmp_path / "f.npy", np.ones((23, 2, 8), np.float32))
    proc = run("--features", tmp_path / "f.npy", "--data", faces_layout)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "f.npy: 23 rows, but" in proc.stderr and "ijbc_face_tid_mid.txt lists 24 images" in proc.stderr
