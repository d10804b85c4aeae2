"""The converter command lines end to end: checkpoint variants, the JSON report, the parity gate that
refuses to write, and paddle2torch back to a bit-identical InsightFace state_dict."""

from __future__ import annotations

import errno
import json
import os
from collections import OrderedDict

import numpy as np
import pytest
import torch

from converters import paddle2torch, torch2paddle
from converters.checkpoint import META_KEY, read_paddle_weights, read_torch_checkpoint
from converters.errors import exit_code


@pytest.fixture(scope="module")
def mbf_state():
    from converters.demo import demo_state_dict

    return demo_state_dict("mbf", seed=3)


def tensors(arrays) -> OrderedDict[str, torch.Tensor]:
    return OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in arrays.items())


def no_leftovers(folder) -> bool:
    return not any(p.name.startswith(".") and ".tmp-" in p.name for p in folder.iterdir())


VARIANTS = {
    "raw": lambda sd: sd,
    "ddp-prefix": lambda sd: OrderedDict((f"module.{k}", v) for k, v in sd.items()),
    "state_dict": lambda sd: {"state_dict": sd, "epoch": 3},
    # InsightFace's checkpoint_gpu_{rank}.pt with save_all_states
    "insightface-full": lambda sd: {"epoch": 2, "global_step": 100, "state_dict_backbone": sd,
                                    "state_dict_softmax_fc": {"weight": torch.zeros(10, 512)},
                                    "state_optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}},
    "model+ddp": lambda sd: {"model": OrderedDict((f"module.{k}", v) for k, v in sd.items())},
    "fp16": lambda sd: OrderedDict((k, v.half() if v.is_floating_point() else v) for k, v in sd.items()),
    "bf16": lambda sd: OrderedDict((k, v.bfloat16() if v.is_floating_point() else v) for k, v in sd.items()),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_checkpoint_variants_convert_and_verify(variant, mbf_state, tmp_path, capsys):
    src = tmp_path / "src.pth"
    torch.save(VARIANTS[variant](tensors(mbf_state)), src)
    out = tmp_path / "out.pdparams"
    assert exit_code(torch2paddle.main, ["--src", src, "--out", out, "--table", "none", "--batch", "2"]) == 0
    assert "PASS forward-eval" in capsys.readouterr().out
    weights = read_paddle_weights(out)
    assert weights.meta["arch"] == "mbf"
    expected = mbf_state["layers.0.layers.1.running_mean"]
    if variant in ("fp16", "bf16"):
        dtype = torch.float16 if variant == "fp16" else torch.bfloat16
        expected = torch.from_numpy(expected).to(dtype).float().numpy()
    np.testing.assert_array_equal(weights.arrays["layers.0.layers.1._mean"], expected)


def test_report_json_holds_layers_gates_versions_input_and_hashes(mbf_state, tmp_path, small_lfw):
    src, out, report = tmp_path / "m.pth", tmp_path / "m.pdparams", tmp_path / "m.json"
    torch.save(tensors(mbf_state), src)
    code = exit_code(torch2paddle.main, ["--src", src, "--out", out, "--report", report, "--input", small_lfw,
                                      "--batch", "6", "--table", "none"])
    assert code == 0
    data = json.loads(report.read_text())
    assert set(data["versions"]) >= {"python", "numpy", "torch", "paddle"}
    from converters.checkpoint import sha256_file

    assert data["source"]["sha256"] == sha256_file(src) and data["output"]["sha256"] == sha256_file(out)
    parity = data["parity"]
    assert parity["passed"] is True and parity["gates"] == {"layer_rel": 5e-5, "embedding_cosine": 0.999999}
    assert parity["input"]["shape"] == [6, 3, 112, 112] and parity["input"]["path"] == str(small_lfw)
    assert len(parity["input"]["sha256"]) == 64
    assert parity["embedding_cosine"] >= 0.999999
    assert all(set(r) >= {"layer", "shape", "max_abs", "rel", "cosine", "gate", "passed"} for r in parity["rows"])
    assert max(r["rel"] for r in parity["rows"]) == parity["worst_rel"] <= 5e-5


def test_a_corrupted_conversion_fails_the_gate_names_the_layer_and_writes_nothing(
        mbf_state, tmp_path, monkeypatch, capsys):
    """A mapping bug that shifts one BatchNorm's running mean is caught at that layer, exit 1, no file."""
    import converters.mapping as mapping

    real = mapping.torch_to_paddle

    def buggy(*args, **kwargs):
        weights = real(*args, **kwargs)
        weights.arrays["layers.3.layers.2.layers.1.layers.1._mean"] = (
            weights.arrays["layers.3.layers.2.layers.1.layers.1._mean"] + 0.05)
        return weights

    monkeypatch.setattr(mapping, "torch_to_paddle", buggy)
    src, out = tmp_path / "m.pth", tmp_path / "m.pdparams"
    torch.save(tensors(mbf_state), src)
    assert exit_code(torch2paddle.main, ["--src", src, "--out", out, "--table", "failures", "--batch", "2"]) == 1
    captured = capsys.readouterr()
    assert "first layer beyond its gate: layers.3.layers.2.layers.1.layers.1 " in captured.out
    assert "not written, parity gate failed" in captured.err
    assert not out.exists() and no_leftovers(tmp_path)


def test_no_verify_converts_without_running_models(mbf_state, tmp_path, capsys):
    src, out = tmp_path / "m.pth", tmp_path / "m.pdparams"
    torch.save(tensors(mbf_state), src)
    assert exit_code(torch2paddle.main, ["--src", src, "--out", out, "--no-verify"]) == 0
    assert "NOT verified (--no-verify)" in capsys.readouterr().out
    assert read_paddle_weights(out).meta["num_batches_tracked"]["layers.0.layers.1.num_batches_tracked"] == 3


def test_roundtrip_through_both_clis_is_bit_identical_and_loads_strictly(mbf_state, tmp_path, capsys):
    src, mid, back = tmp_path / "m.pth", tmp_path / "m.pdparams", tmp_path / "back.pth"
    torch.save(tensors(mbf_state), src)
    assert exit_code(torch2paddle.main, ["--src", src, "--out", mid, "--no-verify"]) == 0
    assert exit_code(paddle2torch.main, ["--src", mid, "--out", back, "--check-against", src, "--verify",
                                      "--table", "none", "--batch", "2"]) == 0
    assert "bit-identical" in capsys.readouterr().out
    state = torch.load(back, weights_only=True)
    import torch_reference

    model = torch_reference.get_model("mbf")
    model.load_state_dict(state, strict=True)
    original = torch.load(src, weights_only=True)
    assert list(state) == list(original)
    for key, value in original.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key


def test_paddle_load_reads_the_converted_file_into_the_paddle_model(mbf_state, tmp_path):
    """A Paddle user's plain path works: paddle.load + set_state_dict, only the metadata entry left over."""
    import paddle

    import paddle_models

    src, out = tmp_path / "m.pth", tmp_path / "m.pdparams"
    torch.save(tensors(mbf_state), src)
    assert exit_code(torch2paddle.main, ["--src", src, "--out", out, "--no-verify"]) == 0
    state = paddle.load(str(out))  # trusted: written by this test
    missing, unexpected = paddle_models.get_model("mbf").set_state_dict(state)
    assert list(missing) == [] and list(unexpected) == [META_KEY]


def test_paddle_file_from_paddle_save_converts_back_with_zero_counters(tmp_path, capsys):
    import paddle

    import paddle_models

    paddle.seed(0)
    model = paddle_models.get_model("mbf")
    src = tmp_path / "saved.pdparams"
    paddle.save(model.state_dict(), str(src))
    back = tmp_path / "back.pth"
    assert exit_code(paddle2torch.main, ["--src", src, "--out", back]) == 0
    state = read_torch_checkpoint(back).arrays
    assert state["layers.0.layers.1.num_batches_tracked"] == 0
    np.testing.assert_array_equal(state["features.layers.2.weight"], model.features.layers[2].weight.numpy().T)


# ---------------------------------------------------------------------------------------------------
# outputs: never onto an input, OS errors as one line, a full disk keeps the previous output


@pytest.fixture
def pair(mbf_state, tmp_path):
    """``(src.pth, src.pdparams)``: the same mbf weights in both formats."""
    src = tmp_path / "src.pth"
    torch.save(tensors(mbf_state), src)
    pdparams = tmp_path / "src.pdparams"
    assert exit_code(torch2paddle.main, ["--src", src, "--out", pdparams, "--no-verify"]) == 0
    return src, pdparams


def one_error_line(capsys, code: int, path) -> str:
    """Exit 2 and exactly one stderr line, ``error: <path>: ...``, no traceback."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {path}: ") and "Traceback" not in lines[0], lines
    return lines[0]


SAME_FILE = {  # (tool, arguments with {pth} / {pd} / {new}, the path named, the message)
    "t2p --out = --src": ("t2p", ["--src", "{pth}", "--out", "{pth}"], "{pth}", "is also the input --src; choose another --out"),
    "t2p --report = --out": ("t2p", ["--src", "{pth}", "--out", "{new}", "--report", "{new}"], "{new}",
                             "given as --out and --report"),
    "t2p --report = --src": ("t2p", ["--src", "{pth}", "--out", "{new}", "--report", "{pth}"], "{pth}",
                             "is also the input --src; choose another --report"),
    "p2t --out = --src": ("p2t", ["--src", "{pd}", "--out", "{pd}"], "{pd}", "is also the input --src; choose another --out"),
    "p2t --out = --check-against": ("p2t", ["--src", "{pd}", "--out", "{pth}", "--check-against", "{pth}"], "{pth}",
                                    "is also the input --check-against; choose another --out"),
    "p2t --report = --src": ("p2t", ["--src", "{pd}", "--out", "{new}", "--report", "{pd}"], "{pd}",
                             "is also the input --src; choose another --report"),
}


@pytest.mark.parametrize("case", list(SAME_FILE))
def test_an_output_on_an_input_is_refused_and_the_input_is_unchanged(case, pair, tmp_path, capsys):
    from converters.checkpoint import sha256_file

    tool, argv, named, message = SAME_FILE[case]
    names = {"pth": pair[0], "pd": pair[1], "new": tmp_path / "new.out"}
    before = {p: sha256_file(p) for p in pair}
    capsys.readouterr()
    main = torch2paddle.main if tool == "t2p" else paddle2torch.main
    code = exit_code(main, [a.format(**names) for a in argv])
    assert message in one_error_line(capsys, code, named.format(**names))
    assert {p: sha256_file(p) for p in pair} == before and not names["new"].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.pdparams", "src.pth"]


def test_an_out_that_cannot_be_written_is_one_line_before_the_work(pair, tmp_path, capsys, monkeypatch):
    from converters import outputs
    from tests.faults import read_only

    src = pair[0]
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    cases = {tmp_path / "adir": "is a directory; give a file name",
             tmp_path / "afile" / "out.pdparams": f"cannot write: {tmp_path / 'afile'} is a file, not a folder",
             tmp_path / ("x" * 300 + ".pdparams"): "cannot write: file name too long (309 bytes"}
    for out, message in cases.items():
        for tool, source in ((torch2paddle.main, src), (paddle2torch.main, pair[1])):
            capsys.readouterr()
            assert message in one_error_line(capsys, exit_code(tool, ["--src", source, "--out", out]), out)
    readonly = tmp_path / "ro"
    readonly.mkdir()
    with read_only(readonly) as real:
        if not real:
            access, statvfs = os.access, os.statvfs  # what access(2) answers on a read-only file system
            monkeypatch.setattr(outputs.os, "access", lambda p, m, **k: not str(p).startswith(str(readonly))
                                and access(p, m, **k))
            monkeypatch.setattr(outputs.os, "statvfs", lambda p: os.statvfs_result((0,) * 8 + (os.ST_RDONLY, 255))
                                if str(p).startswith(str(readonly)) else statvfs(p))
        capsys.readouterr()
        out = readonly / "m.pdparams"
        code = exit_code(torch2paddle.main, ["--src", src, "--out", out, "--no-verify"])
        assert "cannot write: read-only file system" in one_error_line(capsys, code, out)
        code = exit_code(torch2paddle.main, ["--src", src, "--out", tmp_path / "m.pdparams", "--no-verify",
                                             "--report", readonly / "r.json"])
        assert "read-only file system" in one_error_line(capsys, code, readonly / "r.json")
        assert list(readonly.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile", "ro", "src.pdparams", "src.pth"]
    assert list((tmp_path / "adir").iterdir()) == []


@pytest.mark.parametrize("tool", ["torch2paddle", "paddle2torch"])
def test_a_full_disk_during_a_conversion_keeps_the_previous_output_byte_identical(
        tool, pair, tmp_path, capsys, monkeypatch):
    from converters import outputs
    from tests.faults import raiser, tmpfs

    src, pdparams = pair
    main, source, name = ((torch2paddle.main, src, "m.pdparams") if tool == "torch2paddle"
                          else (paddle2torch.main, pdparams, "m.pth"))
    disk = tmp_path / "disk"
    size = os.path.getsize(pdparams)
    with tmpfs(disk, size * 3 // 2 // 1024) as real:  # room for the previous output, not for a second copy
        out = disk / name
        assert exit_code(main, ["--src", source, "--out", tmp_path / name]) == 0
        out.write_bytes((tmp_path / name).read_bytes()[::-1])  # a previous output, distinguishable
        previous = out.read_bytes()
        if not real:
            monkeypatch.setattr(outputs, "_fsync", raiser(errno.ENOSPC))
        capsys.readouterr()
        code = exit_code(main, ["--src", source, "--out", out])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err[-1] == f"error: {out}: cannot write: no space left on device", err
        assert sum(line.startswith("error:") for line in err) == 1 and "Traceback" not in "\n".join(err)
        assert out.read_bytes() == previous and [p.name for p in disk.iterdir()] == [name]
