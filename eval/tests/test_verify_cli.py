"""eval/verify.py: printed lines, --json, results.txt merging and published rows, one-line errors."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converters.export import PaddlePredictor
from eval.results import find_known, read_results
from eval.verify import main

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "eval" / "verify.py"), *args], capture_output=True,
                          text=True, timeout=600)


def write_embeddings(folder: Path, pairs: int = 60, seed: int = 0, noise: float = 1.0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    issame = rng.random(pairs) < 0.5
    base = rng.normal(size=(pairs, 32))
    emb = np.repeat(base, 2, axis=0)
    emb[1::2] = np.where(issame[:, None], base + noise * rng.normal(size=base.shape), rng.normal(size=base.shape))
    np.save(folder / f"e{seed}.npy", emb.astype(np.float32))
    np.save(folder / f"i{seed}.npy", issame)
    return folder / f"e{seed}.npy", folder / f"i{seed}.npy"


def test_model_run_prints_insightface_lines_and_compares_backends(r18_files, small_lfw, tmp_path, capsys):
    results, out_json = tmp_path / "results.txt", tmp_path / "out.json"
    assert main(["--weights", str(r18_files["pdparams"]), "--data", str(small_lfw), "--compare", "torch",
                 "--batch-size", "20", "--threads", "2", "--cache-dir", str(r18_files["cache"]), "--no-progress",
                 "--results", str(results), "--json", str(out_json)]) == 0
    # progress lines are on stdout too; InsightFace's lines are the ones naming the set
    printed = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[small_lfw]")]
    assert re.fullmatch(r"\[small_lfw\]\[0\]XNorm: \d+\.\d{6}", printed[0])
    assert re.fullmatch(r"\[small_lfw\]\[0\]Accuracy: \d\.\d{5}\+-\d\.\d{5}", printed[1])
    assert re.fullmatch(r"\[small_lfw\]\[0\]Accuracy-Flip: \d\.\d{5}\+-\d\.\d{5}", printed[2])
    record = json.loads(out_json.read_text())["small_lfw"]
    assert record["pairs"] == 10 and len(record["fold_accuracies"]) == 10
    assert record["accuracy_noflip"] is not None and record["xnorm"] > 0
    compare = record["compare"]
    assert compare["backend"] == "torch" and compare["pairs_judged_differently"] == 0
    assert compare["fold_accuracies"] == record["fold_accuracies"]
    table = read_results(results)
    rows = {key[2]: row for key, row in table.rows.items()}
    assert set(rows) == {"paddle-inference", "torch"}
    assert rows["paddle-inference"]["small_lfw"] == rows["torch"]["small_lfw"]
    assert rows["torch"]["note"] == "decisions differ from paddle-inference: small_lfw 0/10"


def test_precomputed_rows_merge_and_published_rows_show_the_difference(tmp_path, capsys):
    e0, i0 = write_embeddings(tmp_path, seed=0)
    e1, i1 = write_embeddings(tmp_path, seed=1, noise=3.0)
    results = tmp_path / "results.txt"
    common = ["--results", str(results), "--published", "ms1mv3_arcface_r50_fp16"]
    assert main(["--embeddings", str(e0), "--issame", str(i0), "--name", "lfw", *common]) == 0
    assert main(["--embeddings", str(e0), "--issame", str(i0), "--name", "cplfw", *common]) == 0
    assert main(["--embeddings", str(e1), "--issame", str(i1), "--name", "lfw", "--results", str(results)]) == 0
    assert main(["--embeddings", str(e0), "--issame", str(i0), "--name", "lfw", *common]) == 0  # same key again
    out = capsys.readouterr().out
    assert "[lfw][0]Accuracy: " in out and "XNorm" not in out.splitlines()[0]
    text = results.read_text()
    table = read_results(results)
    assert table.datasets == ["lfw", "cplfw"]
    assert len(table.rows) == 2  # the re-run replaced its row; the published rows are re-derived
    row = table.rows[("embeddings", str(e0), "precomputed", "ms1mv3_arcface_r50_fp16")]
    measured = float(row["lfw"].split("±")[0])
    lines = [ln for ln in text.splitlines() if "| published" in ln]
    assert len(lines) == 2  # InsightFace's lfw/cfp_fp/agedb_30 and the seed project's lfw/cplfw/calfw
    insightface = next(ln for ln in lines if "InsightFace" in ln)
    assert f"99.83 ({measured - 99.83:+.3f})" in insightface
    seed = next(ln for ln in lines if "seed project" in ln)
    assert "92.867 (" in seed and f"99.80 ({measured - 99.80:+.3f})" in seed
    assert text.index(str(e0)) < text.index("| published") < text.index(str(e1))


def test_results_file_that_is_not_a_table_is_left_alone(tmp_path):
    e0, i0 = write_embeddings(tmp_path)
    results = tmp_path / "results.txt"
    results.write_text("my notes\n")
    proc = run("--embeddings", str(e0), "--issame", str(i0), "--results", str(results))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(f"error: {results}: ")
    assert results.read_text() == "my notes\n"


@pytest.mark.parametrize("case", ["rows", "few-pairs", "issame-dtype", "nan", "pickle-npy", "unknown-published"])
def test_bad_precomputed_inputs_end_with_one_line(tmp_path, case):
    emb = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    issame = np.arange(20) % 2 == 0
    expected = {"rows": "40 rows for 21 pairs", "few-pairs": "cannot be split into 10 folds",
                "issame-dtype": "expected [P] booleans", "nan": "NaN", "pickle-npy": "holds object values",
                "unknown-published": "no model named 'nope'"}[case]
    extra = []
    if case == "rows":
        issame = np.append(issame, True)
    elif case == "few-pairs":
        emb, issame = emb[:16], issame[:8]
    elif case == "issame-dtype":
        issame = issame.astype(np.float64)
    elif case == "nan":
        emb[7, 3] = np.nan
    elif case == "unknown-published":
        extra = ["--published", "nope"]
    np.save(tmp_path / "e.npy", emb)
    if case == "pickle-npy":
        np.save(tmp_path / "i.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        np.save(tmp_path / "i.npy", issame)
    out_json = tmp_path / "out.json"
    proc = run("--embeddings", str(tmp_path / "e.npy"), "--issame", str(tmp_path / "i.npy"), "--json",
               str(out_json), *extra)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
    assert "Traceback" not in proc.stderr and not out_json.exists()


def test_hostile_pack_in_data_folder_is_refused(r18_files, hostile, tmp_path):
    payload, marker = hostile
    (tmp_path / "lfw.bin").write_bytes(pickle.dumps(([payload], [True])))
    proc = run("--weights", str(r18_files["onnx"]), "--data", str(tmp_path), "--no-progress")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'lfw.bin'}: refused")
    assert not marker.exists()


def test_missing_targets_and_wrong_backend_are_one_line_errors(r18_files, tmp_path):
    (tmp_path / "agedb_30.bin").write_bytes(b"")
    proc = run("--weights", str(r18_files["onnx"]), "--data", str(tmp_path), "--targets", "lfw")
    assert proc.returncode == 2 and "lfw.bin: no such pack (found: agedb_30)" in proc.stderr
    proc = run("--weights", str(r18_files["onnx"]), "--data", str(tmp_path), "--backend", "paddle")
    assert proc.returncode == 2 and "an .onnx model runs only with --backend onnx" in proc.stderr
    proc = run("--weights", str(r18_files["pth"]))
    assert proc.returncode == 2 and "--weights needs --data" in proc.stderr


def test_manifest_matches_by_path_by_hash_and_by_source_hash(tmp_path):
    manifest = tmp_path / "manifest.json"
    ckpt = tmp_path / "zoo" / "backbone.pth"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"checkpoint bytes")
    from converters.checkpoint import sha256_file

    digest = sha256_file(ckpt)
    manifest.write_text(json.dumps({"models": [
        {"name": "a", "arch": "r50", "path": "zoo/backbone.pth", "published": []},
        {"name": "b", "arch": "r18", "path": "elsewhere.pth", "sha256": "f" * 64, "published": []}]}))
    other = tmp_path / "converted.pdparams"
    assert find_known(ckpt, digest, "r50", manifest=manifest).name == "a"
    assert find_known(other, "f" * 64, "r18", manifest=manifest).name == "b"
    assert find_known(other, "0" * 64, "r50", source_sha256=digest, manifest=manifest).name == "a"
    assert find_known(other, "0" * 64, "r18", source_sha256=digest, manifest=manifest) is None  # arch differs
    assert find_known(other, "0" * 64, "r50", manifest=manifest) is None


def test_project_manifest_holds_the_published_numbers():
    from eval.results import load_manifest

    models = {m.name: m for m in load_manifest()}
    r50 = models["ms1mv3_arcface_r50_fp16"].published
    assert r50[0]["accuracy"] == {"lfw": 99.83, "cfp_fp": 98.96, "agedb_30": 98.35}
    assert r50[1]["accuracy"] == {"lfw": 99.8, "cplfw": 92.867, "calfw": 96.017}
    assert models["glint360k_cosface_r100_fp16_0.1"].published[0]["accuracy"]["cfp_fp"] == 99.29
    assert models["arcface_paddle_ms1mv2_r50"].published[0]["accuracy"]["cplfw"] == 92.117
    assert all(m.path for m in load_manifest() if not m.name.startswith("arcface_paddle"))


def test_project_manifest_names_registered_architectures_and_the_webface42m_vits():
    import architectures
    from eval.results import load_manifest

    models = {m.name: m for m in load_manifest()}
    assert all(m.arch in architectures.names() for m in models.values())
    vits = {n: m for n, m in models.items() if architectures.family_of(m.arch) == "vit"}
    assert {n: m.arch for n, m in vits.items()} == {
        "wf42m_pfc03_40epoch_8gpu_vit_t": "vit_t_dp005_mask0", "wf42m_pfc03_40epoch_64gpu_vit_s": "vit_s_dp005_mask_0",
        "wf42m_pfc03_40epoch_8gpu_vit_b": "vit_b_dp005_mask_005",
        "wf42m_pfc03_40epoch_64gpu_vit_l": "vit_l_dp005_mask_005"}
    published = {n: (m.published[0]["mfr_all"], m.published[0]["ijbc_tar"]["ijbc_1e-4"],
                     m.published[0]["ijbc_tar"]["ijbc_1e-5"]) for n, m in vits.items()}
    assert published == {"wf42m_pfc03_40epoch_8gpu_vit_t": (92.24, 97.31, 95.97),
                         "wf42m_pfc03_40epoch_64gpu_vit_s": (95.87, 97.73, 96.57),
                         "wf42m_pfc03_40epoch_8gpu_vit_b": (97.42, 97.90, 97.04),
                         "wf42m_pfc03_40epoch_64gpu_vit_l": (97.85, 98.00, 97.23)}
    assert all(m.published[0]["accuracy"] == {} and m.path.endswith("/model.pt") for m in vits.values())


def test_converted_vit_weights_are_known_by_their_source_under_any_name_with_the_same_weights(tmp_path):
    """A vit_t_dp005_mask0 checkpoint converted without --arch records (and is detected as) vit_t."""
    manifest = tmp_path / "manifest.json"
    ckpt = tmp_path / "zoo" / "model.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"vit checkpoint bytes")
    from converters.checkpoint import sha256_file

    manifest.write_text(json.dumps({"models": [
        {"name": "vit", "arch": "vit_t_dp005_mask0", "path": "zoo/model.pt", "published": []}]}))
    converted = tmp_path / "vit_t.pdparams"
    digest = sha256_file(ckpt)
    assert find_known(converted, "0" * 64, "vit_t", source_sha256=digest, manifest=manifest).name == "vit"
    assert find_known(converted, "0" * 64, "vit_s", source_sha256=digest, manifest=manifest) is None


def one_error_line(capsys, code: int, path) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {path}: ") and "Traceback" not in lines[0], lines
    return lines[0]


@pytest.mark.parametrize("case", ["json=embeddings", "json=issame", "results=embeddings", "json=results",
                                  "json=weights", "json=pack-in-data"])
def test_an_output_on_an_input_is_refused_before_anything_is_written(tmp_path, capsys, case):
    import hashlib

    from converters.errors import exit_code

    e0, i0 = write_embeddings(tmp_path)
    weights, data = tmp_path / "w.pdparams", tmp_path / "packs"
    weights.write_bytes(b"weights")
    data.mkdir()
    (data / "lfw.bin").write_bytes(b"pack")
    precomputed = ["--embeddings", e0, "--issame", i0]
    model = ["--weights", weights, "--data", data]
    argv, named, message = {
        "json=embeddings": (precomputed + ["--json", e0], e0, "is also the input --embeddings; choose another --json"),
        "json=issame": (precomputed + ["--json", i0], i0, "is also the input --issame; choose another --json"),
        "results=embeddings": (precomputed + ["--results", e0], e0, "is also the input --embeddings"),
        "json=results": (precomputed + ["--json", tmp_path / "r.txt", "--results", tmp_path / "r.txt"],
                         tmp_path / "r.txt", "given as --json and --results"),
        "json=weights": (model + ["--json", weights], weights, "is also the input --weights; choose another --json"),
        "json=pack-in-data": (model + ["--json", data / "lfw.bin"], data / "lfw.bin", "is also the input --data"),
    }[case]
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (e0, i0, weights, data / "lfw.bin")}
    capsys.readouterr()
    assert message in one_error_line(capsys, exit_code(main, argv), named)
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in digests} == digests
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e0.npy", "i0.npy", "packs", "w.pdparams"]


def test_json_and_results_that_cannot_be_written_are_one_line_before_the_work(tmp_path, capsys):
    from converters.errors import exit_code

    e0, i0 = write_embeddings(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00results")
    cases = [("--json", tmp_path / "adir", "is a directory; give a file name"),
             ("--results", tmp_path / "adir", "is a directory; give a file name"),
             ("--json", tmp_path / "afile" / "o.json", "is a file, not a folder"),
             ("--json", tmp_path / ("j" * 260), "file name too long (260 bytes"),
             ("--results", tmp_path / "binary.txt", "is not a text file")]
    for option, path, message in cases:
        capsys.readouterr()
        code = exit_code(main, ["--embeddings", e0, "--issame", i0, option, path])
        assert message in one_error_line(capsys, code, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile", "binary.txt", "e0.npy", "i0.npy"]
    assert (tmp_path / "binary.txt").read_bytes() == b"\xff\xfe\x00results"


@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_an_unwritable_cache_folder_is_one_line(r18_files, small_lfw, tmp_path, capsys, fault):
    from converters.errors import exit_code
    from tests.faults import read_only, tmpfs

    cache = tmp_path / "cache"
    cache.mkdir()
    mount = read_only(cache) if fault == "read-only" else tmpfs(cache, 64)  # an r18 export needs ~100 MB
    with mount as mounted:
        if not mounted:
            pytest.skip("cannot mount here (needs root)")
        code = exit_code(main, ["--weights", r18_files["pdparams"], "--data", small_lfw, "--no-progress",
                                "--threads", "2", "--cache-dir", cache])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {cache}/"), lines
        assert "cannot write: " in lines[0] and "Traceback" not in lines[0]
        assert [p.name for p in cache.iterdir()] == []  # nothing partial left in the cache


# backend, precision, smallest accepted min cosine (measured on the seeded r18, 20 faces), and the model the
# cache must then hold: onnxruntime's static int8 (0.9929), Paddle's PTQ for oneDNN int8 (0.9978), the graph
# exported for bf16 with PReLU as multiply, add and relu (0.9999)
REDUCED_RUNS = [
    pytest.param("onnx", "int8", 0.99, "model.onnx", id="onnx-int8"),
    pytest.param("paddle-inference", "int8", 0.995, "model.pdmodel", id="paddle-inference-int8",
                 marks=pytest.mark.skipif(not PaddlePredictor.int8_supported(), reason="needs oneDNN int8 support")),
    pytest.param("paddle-inference", "bf16", 0.999, "model.json", id="paddle-inference-bf16",
                 marks=pytest.mark.skipif(not PaddlePredictor.bf16_supported(), reason="bf16 needs AVX-512")),
]


@pytest.mark.parametrize("backend, precision, min_cosine, model_file", REDUCED_RUNS)
def test_reduced_precision_prints_the_accuracy_guard_against_fp32(backend, precision, min_cosine, model_file,
                                                                  r18_files, small_lfw, tmp_path, capsys):
    out_json = tmp_path / "out.json"
    calibration = ["--calibration", str(small_lfw)] if precision == "int8" else ["--compare", backend]
    assert main(["--weights", str(r18_files["pdparams"]), "--data", str(small_lfw), "--backend", backend,
                 "--precision", precision, *calibration, "--cache-dir", str(r18_files["cache"]),
                 "--batch-size", "20", "--threads", "2", "--no-progress", "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert f"accuracy guard: {backend} {precision} against {backend} on the same images" in printed
    guard = json.loads(out_json.read_text())["small_lfw"]["precision_guard"]
    assert guard["precision"] == precision and guard["pairs"] == 10
    print(f"r18 {backend} {precision}: min cosine {guard['cosine_min']:.6f}, mean {guard['cosine_mean']:.6f}")
    assert min_cosine <= guard["cosine_min"] <= guard["cosine_mean"] < 1.0
    assert guard["accuracy_difference"] == guard["accuracy"] - guard["accuracy_fp32"]
    assert f"{guard['pairs_judged_differently']}/10" in printed
    tag = f"-{precision}-" if precision == "int8" else f"-{precision}"
    assert any(tag in p.name + "-" and (p / model_file).is_file() for p in r18_files["cache"].iterdir())


@pytest.mark.parametrize("args, message", [
    (["--backend", "paddle", "--precision", "bf16"], "--precision bf16 is not available with --backend paddle"),
    (["--backend", "onnx", "--precision", "int8"], "--precision int8 needs --calibration"),
    (["--backend", "paddle-inference", "--precision", "bf16", "--calibration", "x.bin"],
     "--calibration: calibrates --precision int8 only"),
    (["--backend", "paddle", "--precision", "int8", "--calibration", "x.bin"],
     "--precision int8 is not available with --backend paddle (use --backend paddle-inference or onnx)"),
])
def test_unavailable_precisions_are_one_line_errors(args, message, r18_files, small_lfw):
    proc = run("--weights", str(r18_files["pdparams"]), "--data", str(small_lfw), *args)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert message in proc.stderr
