"""converters/export.py end to end: each format and route written and checked against the framework models,
the gate that refuses to leave an output, one-line errors for every user mistake, and nothing downloaded or
installed while exporting."""

from __future__ import annotations

import importlib.metadata
import os
import socket
import subprocess

import numpy as np
import pytest

from converters import export
from converters.errors import exit_code

ARCH = "mbf"  # the fastest registered backbone: these tests are about the command, not the architecture


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A seeded demo mbf as an InsightFace ``.pth`` and its converted ``.pdparams``."""
    from converters.checkpoint import write_paddle_weights, write_torch_state_dict
    from converters.demo import demo_state_dict
    from converters.mapping import torch_to_paddle

    folder = tmp_path_factory.mktemp("export-weights")
    arrays = demo_state_dict(ARCH, seed=2, batches=1)
    write_torch_state_dict(folder / f"{ARCH}.pth", arrays)
    write_paddle_weights(folder / f"{ARCH}.pdparams", torch_to_paddle(arrays, ARCH, 512, "demo"))
    return {"pth": folder / f"{ARCH}.pth", "pdparams": folder / f"{ARCH}.pdparams", "arrays": arrays}


def one_error_line(capsys, code: int, expected_code: int = 2) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == expected_code and len(err) == 1 and err[0].startswith("error: "), (code, err)
    assert "Traceback" not in err[0]
    return err[0]


def table_rows(stdout: str) -> list[list[str]]:
    """The check rows of the printed table: [against, input, shape, worst rel, min cosine, verdict]."""
    rows = []
    for line in stdout.splitlines():
        if line.rstrip().endswith(("PASS", "FAIL")):
            cells = [c for c in line.split("  ") if c.strip()]
            rows.append([c.strip() for c in cells[-6:]])
    return rows


def assert_gates(rows: list[list[str]], references: set[str], count: int) -> None:
    assert len(rows) == count and {r[0] for r in rows} == references
    for _, _, _, rel, cosine, verdict in rows:
        assert float(rel) <= 5e-5 and float(cosine) >= 0.999999 and verdict == "PASS"


def no_leftovers(folder) -> bool:
    return not any(".tmp-" in p.name for p in folder.iterdir())


def onnx_interface(path, opset: int) -> None:
    import onnx

    model = onnx.load(str(path))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    (inp,), (output,) = model.graph.input, model.graph.output
    assert inp.name == "data" and output.name == "embedding"
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["None", 3, 112, 112]
    assert [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim] == ["None", 512]
    assert not export.insightface_normalises_inside(model)


def test_onnx_via_torch_checked_against_both_frameworks_on_faces(weights, small_lfw, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    code = exit_code(export.main, ["--weights", weights["pdparams"], "--format", "onnx", "--via", "torch",
                                   "--opset", "13", "--out", out, "--verify", "--input", small_lfw, "--batch", "2"])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    rows = table_rows(stdout)
    # seeded batch 1, seeded batch 2 and 2 faces, against the PyTorch reference and the Paddle dygraph model
    assert_gates(rows, {"PyTorch reference", "Paddle dygraph"}, 6)
    assert [r[0] for r in rows] == ["PyTorch reference"] * 3 + ["Paddle dygraph"] * 3
    assert [r[1:3] for r in rows[:3]] == [["seeded [-1, 1], seed 0", "1x3x112x112"],
                                          ["seeded [-1, 1], seed 1", "2x3x112x112"],
                                          ["faces of small_lfw.bin", "2x3x112x112"]]
    assert f"wrote {out} ({ARCH}, onnx, opset 13," in stdout
    onnx_interface(out, 13)
    assert no_leftovers(tmp_path)


def test_onnx_via_paddle_downloads_and_installs_nothing(weights, tmp_path, capsys, monkeypatch):
    """paddle2onnx's default optimiser (Polygraphy) sets POLYGRAPHY_AUTOINSTALL_DEPS=1 and pip-installs into
    the running environment: the export must never take that path, open a connection or run pip. Also: the
    default output is beside the weights, and the weights are left as they were."""
    import paddle2onnx

    src = tmp_path / "model.pdparams"
    src.write_bytes(weights["pdparams"].read_bytes())
    installed = {(d.metadata["Name"], d.version) for d in importlib.metadata.distributions()}
    connections, processes, optimisers = [], [], []

    def refuse_connection(sock, address, *args):
        connections.append(address)
        raise OSError("no network in this test")

    real_popen_init = subprocess.Popen.__init__

    def record_process(self, args, *rest, **kwargs):
        processes.append(args)
        return real_popen_init(self, args, *rest, **kwargs)

    real_export = paddle2onnx.export

    def record_export(*args, **kwargs):
        optimisers.append(kwargs.get("optimize_tool", "polygraphy (the default)"))
        return real_export(*args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", refuse_connection)
    monkeypatch.setattr(subprocess.Popen, "__init__", record_process)
    monkeypatch.setattr(paddle2onnx, "export", record_export)
    monkeypatch.delenv("POLYGRAPHY_AUTOINSTALL_DEPS", raising=False)
    code = exit_code(export.main, ["--weights", src, "--format", "onnx", "--opset", "13", "--batch", "2"])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert_gates(table_rows(stdout), {"Paddle dygraph"}, 2)
    assert optimisers == ["None"]
    assert "POLYGRAPHY_AUTOINSTALL_DEPS" not in os.environ
    assert connections == [] and not any("pip" in str(p) for p in processes), (connections, processes)
    assert {(d.metadata["Name"], d.version) for d in importlib.metadata.distributions()} == installed
    onnx_interface(tmp_path / "model.onnx", 13)
    assert src.read_bytes() == weights["pdparams"].read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.pdparams"]


@pytest.mark.slow
def test_a_failed_gate_leaves_no_output(weights, tmp_path, capsys, monkeypatch):
    """Exporters that change one weight (as a wrong conversion would): exit 1, nothing written."""
    real_save, real_torch = export.save_paddle_inference, export.onnx_via_torch

    def save_perturbed(model, prefix, name=None, **options):
        weight = model.state_dict()["layers.0.layers.0.weight"]
        weight.set_value(weight.numpy() * np.float32(1.01))
        return real_save(model, prefix, name, **options)

    def torch_perturbed(model, *args, **kwargs):
        import torch

        with torch.no_grad():
            model.layers[0].layers[0].weight.mul_(1.01)
        return real_torch(model, *args, **kwargs)

    monkeypatch.setattr(export, "save_paddle_inference", save_perturbed)
    monkeypatch.setattr(export, "onnx_via_torch", torch_perturbed)
    for fmt, out, via in (("paddle-inference", tmp_path / "deploy", []),
                          ("onnx", tmp_path / "m.onnx", ["--via", "torch"])):
        code = exit_code(export.main, ["--weights", weights["pth"], "--format", fmt, "--out", out, *via,
                                       "--batch", "2"])
        captured = capsys.readouterr()
        assert code == 1 and "FAIL" in captured.out
        assert captured.err.strip() == f"error: {out}: not written, a gate failed (rel <= 5e-05, cosine >= 0.999999)"
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_user_mistakes_are_one_line_and_write_nothing(weights, tmp_path, capsys):
    pth = weights["pth"]
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    stamp = (pth.stat().st_mtime_ns, pth.stat().st_size)
    cases = [
        (["--format", "tensorrt"], "--format: invalid choice: 'tensorrt'"),
        (["--format", "onnx", "--out", pth], f"{pth}: is also the input --weights"),
        (["--format", "paddle-inference", "--out", pth], f"{pth}: is also the input --weights"),
        (["--format", "onnx", "--out", tmp_path / "m.pth"], "must end in .onnx"),
        (["--format", "paddle-inference", "--via", "torch"], "--via: applies only to --format onnx"),
        (["--format", "paddle-inference", "--opset", "13"], "--opset: applies only to --format onnx"),
        (["--format", "onnx", "--via", "torch", "--opset", "21"], "--opset: must be at most 20 with --via torch"),
        (["--format", "onnx", "--opset", "9"], "--opset: must be an integer >= 11, got 9"),
        (["--format", "onnx", "--arch", "r50"], f"{pth}:"),
        (["--format", "paddle-inference", "--out", existing], "already exists and is not an empty folder"),
        (["--format", "onnx", "--out", tmp_path / "m.onnx", "--input", tmp_path / "none.bin"], "no such file"),
    ]
    for argv, message in cases:
        code = exit_code(export.main, ["--weights", pth, *argv])
        assert message in one_error_line(capsys, code)
    code = exit_code(export.main, ["--weights", tmp_path / "missing.pth", "--format", "onnx",
                                   "--out", tmp_path / "m.onnx"])
    assert "missing.pth: " in one_error_line(capsys, code)
    assert (pth.stat().st_mtime_ns, pth.stat().st_size) == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("fmt,name", [("paddle-inference", "deploy"), ("onnx", "m.onnx")])
def test_an_unwritable_output_folder_is_one_line(fmt, name, weights, tmp_path, capsys):
    from tests.faults import read_only

    folder = tmp_path / "ro"
    folder.mkdir()
    with read_only(folder) as mounted:
        if not mounted:
            pytest.skip("cannot mount here (needs root)")
        code = exit_code(export.main, ["--weights", weights["pth"], "--format", fmt, "--out", folder / name])
        line = one_error_line(capsys, code)
        assert line.startswith(f"error: {folder / name}: cannot write: read-only file system")
        assert list(folder.iterdir()) == []


def test_conform_names_the_interface_and_renames_normalisation_like_nodes():
    """A graph whose first nodes are named like an in-graph normalisation (Sub*, Mul*) would be fed raw
    pixels by insightface.model_zoo; after conforming it is not, and its interface is InsightFace's."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Sub", ["x", "mean"], ["a"], name="Sub_0"),
             helper.make_node("Mul", ["a", "scale"], ["b"], name="Mul_1"),
             helper.make_node("Flatten", ["b"], ["c"], name=""),
             helper.make_node("MatMul", ["c", "w"], ["fetch_name_0"], name="_mul_matmul")]
    inits = [helper.make_tensor("mean", TensorProto.FLOAT, [], [127.5]),
             helper.make_tensor("scale", TensorProto.FLOAT, [], [1 / 127.5]),
             helper.make_tensor("w", TensorProto.FLOAT, [3 * 112 * 112, 8], np.zeros(3 * 112 * 112 * 8))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 112, 112])],
                              [helper.make_tensor_value_info("fetch_name_0", TensorProto.FLOAT, ["M", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    assert export.insightface_normalises_inside(model)  # the positive control
    export.conform_to_insightface(model, 8)
    assert not export.insightface_normalises_inside(model)
    assert [n.name for n in model.graph.node] == ["node0_Sub", "node1_Mul", "node2_Flatten", "node3_MatMul"]
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("data", "embedding")
    assert list(model.graph.node[0].input) == ["data", "mean"] and list(model.graph.node[-1].output) == ["embedding"]
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["None", 3, 112, 112]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["None", 8]
    onnx.checker.check_model(model)
    with pytest.raises(export.ExportFailed, match="expected \\[N, 9\\]"):
        export.conform_to_insightface(model, 9)
