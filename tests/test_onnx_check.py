"""Stage-by-stage verification of an ONNX import: the Paddle model holding the imported weights against
onnxruntime on the original graph (converters.onnx_check).

The graphs are legacy-exporter ONNX files of seeded PyTorch references, written as InsightFace's
torch2onnx.py writes them (opset 11, input ``data``, BatchNorms folded into the convolutions). The import is
stood in for by the source state_dict plus the stage list read off the graph: a residual block's output is
the output of its Add node, the blocks' Add nodes run in the order the blocks do.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from converters.arch import ArchInfo
from converters.binfile import read_bin
from converters.errors import UserError
from converters.images import normalize
from converters.mapping import torch_to_paddle
from converters.parity import EMBEDDING_COSINE, EVAL_LAYER_REL, OUTPUT, capture_torch, compare_arrays

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from converters.onnx_check import (  # noqa: E402
    add_onnx_stage_outputs,
    run_onnx_stages,
    stage_inputs,
    verify_onnx_import,
)

OPTIONS = SimpleNamespace(threads=2, table="failures")
# a graph that normalises raw pixels itself, with a mean per RGB channel and a std unlike the project's 127.5
OWN_NORMALISATION = {"mean": [123.0, 127.5, 131.0], "std": 128.0}


def residual_blocks(model) -> list[str]:
    """Names of the modules that end in a residual addition, in execution order."""
    from torch_reference.iresnet import IBasicBlock
    from torch_reference.mobilefacenet import DepthWise

    return [name for name, m in model.named_modules()
            if isinstance(m, IBasicBlock) or (isinstance(m, DepthWise) and m.residual)]


@functools.cache
def source(arch: str) -> tuple[dict, list[str]]:
    """(seeded calibrated state_dict, residual block names) of ``arch``."""
    from converters.demo import demo_state_dict
    from converters.models import torch_model

    arrays = demo_state_dict(arch, seed=7, batches=1, batch_size=4)
    return arrays, residual_blocks(torch_model(arch, arrays))


def export(arch: str, path) -> onnx.ModelProto:
    """The legacy exporter's graph of the seeded ``arch`` (batch dynamic), written to ``path`` and read back."""
    import torch

    from converters.models import torch_model

    arrays, _ = source(arch)
    torch.onnx.export(torch_model(arch, arrays), torch.zeros(1, 3, 112, 112), str(path), opset_version=11,
                      input_names=["data"], dynamo=False, dynamic_axes={"data": {0: "batch"}})
    return onnx.load(str(path))


def normalising(graph: onnx.ModelProto, normalisation: dict) -> onnx.ModelProto:
    """``graph`` behind ``(data - mean) * (1 / std)`` nodes, as graphs that take raw pixels begin."""
    from onnx import helper, numpy_helper

    out = copy.deepcopy(graph)
    for node in out.graph.node:
        node.input[:] = ["normalised" if name == "data" else name for name in node.input]
    mean = np.asarray(normalisation["mean"], np.float32).reshape(1, -1, 1, 1)
    scale = np.float32(1) / np.asarray(normalisation["std"], np.float32).reshape(1, -1, 1, 1)
    out.graph.initializer.extend([numpy_helper.from_array(mean, "pixel_mean"),
                                  numpy_helper.from_array(scale, "pixel_scale")])
    nodes = [helper.make_node("Sub", ["data", "pixel_mean"], ["centred"], name="_minus0"),
             helper.make_node("Mul", ["centred", "pixel_scale"], ["normalised"], name="_mul0")]
    for i, node in enumerate(nodes):
        out.graph.node.insert(i, node)
    return out


def imported_from(arch: str, graph: onnx.ModelProto, normalisation=None) -> SimpleNamespace:
    """What the importer returns for ``graph``, made from the source weights and the graph's Add nodes."""
    arrays, blocks = source(arch)
    adds = [node.output[0] for node in graph.graph.node if node.op_type == "Add"]
    assert len(adds) == len(blocks) > 0
    stages = [*zip(blocks, adds), ("features", graph.graph.output[0].name)]
    return SimpleNamespace(arch=ArchInfo(arch, 512, (arch,)), arrays=arrays, stages=stages,
                           normalisation=normalisation, input_name="data")


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("onnx")
    return {arch: export(arch, folder / f"{arch}.onnx") for arch in ("r18", "mbf")}


@pytest.fixture(scope="module")
def faces(small_lfw) -> np.ndarray:
    pack = read_bin(small_lfw)
    return np.stack([pack.decode(i) for i in range(2)])  # uint8 RGB [2, 112, 112, 3]


@pytest.mark.parametrize("arch", ["r18", "mbf"])
def test_every_stage_of_an_import_matches_onnxruntime(arch, graphs, faces):
    graph = graphs[arch]
    imported = imported_from(arch, graph)
    report = verify_onnx_import(graph, imported, None, faces, OPTIONS)
    names = [r.layer for r in report.rows]
    assert names == [name for name, _ in imported.stages] + [OUTPUT]
    assert report.passed, report.verdict()
    assert report.worst.rel < EVAL_LAYER_REL
    assert report.embedding_cosine >= EMBEDDING_COSINE
    # float32 sums in another order: differences are there, but far below the gate
    assert 0 < report.worst.rel < EVAL_LAYER_REL / 5
    assert report.rows[-1].shape == (2, 512) and report.rows[0].shape[0] == 2
    assert report.input["images"] == "uint8 RGB pixels" and report.input["shape"] == [2, 3, 112, 112]
    assert min(report.embedding_norms) > 1.0
    json_ready = report.to_dict()
    assert json_ready["passed"] and json_ready["first_failure"] is None


@pytest.mark.parametrize("arch", ["r18", "mbf"])
def test_the_stage_tensors_are_the_blocks_outputs(arch, graphs, faces):
    """An independent reference: the PyTorch model's own block outputs equal onnxruntime's stage tensors."""
    from converters.models import torch_model

    graph = graphs[arch]
    imported = imported_from(arch, graph)
    x = normalize(faces)
    stages = run_onnx_stages(graph, "data", x, [t for _, t in imported.stages], threads=2)
    torch_outputs = capture_torch(torch_model(arch, imported.arrays), x).outputs
    for name, tensor in imported.stages:
        assert stages[tensor].shape == torch_outputs[name].shape, name
        assert compare_arrays(torch_outputs[name], stages[tensor])[1] < EVAL_LAYER_REL, name
    first, last = imported.stages[0][1], imported.stages[-2][1]
    assert stages[first].shape != stages[last].shape  # really the stages, not one tensor repeated


@pytest.mark.parametrize("arch, conv, first_failing", [
    ("r18", "layer2.0.conv1.weight", "layer2.0"),
    ("mbf", "layers.5.layers.2.layers.1.layers.0.weight", "layers.5.layers.2"),
])
def test_a_perturbed_conv_fails_at_the_first_stage_after_it(arch, conv, first_failing, graphs, faces):
    graph = graphs[arch]
    imported = imported_from(arch, graph)
    weights = torch_to_paddle(imported.arrays, arch, 512, "test")
    weights.arrays[conv] = weights.arrays[conv] * np.float32(1.01)
    report = verify_onnx_import(graph, imported, weights, faces, OPTIONS)
    assert not report.passed
    assert report.first_failure.layer == first_failing
    before = report.rows[:[r.layer for r in report.rows].index(first_failing)]
    assert before and all(r.passed and r.rel < EVAL_LAYER_REL for r in before)
    assert report.first_failure.rel > 10 * EVAL_LAYER_REL
    assert not report.rows[-1].passed  # the embedding too
    assert conv in weights.arrays  # the caller's weights are not released


def test_a_graph_that_normalises_pixels_gets_pixels_and_paddle_its_normalisation(graphs, faces):
    graph = normalising(graphs["mbf"], OWN_NORMALISATION)
    imported = imported_from("mbf", graph, OWN_NORMALISATION)
    report = verify_onnx_import(graph, imported, None, faces, OPTIONS)
    assert report.passed, report.verdict()
    assert report.input["normalisation"] == OWN_NORMALISATION
    # control: Paddle fed the project's normalisation instead of the graph's fails from the first stage
    wrong = copy.copy(imported)
    wrong.normalisation = None
    failed = verify_onnx_import(graph, wrong, None, faces, OPTIONS)
    assert failed.first_failure.layer == imported.stages[0][0]


def test_stage_inputs_for_both_kinds_of_graph(faces):
    x = normalize(faces)
    onnx_x, paddle_x, info = stage_inputs(faces, None)
    assert onnx_x is paddle_x and np.array_equal(onnx_x, x)
    onnx_x, paddle_x, info = stage_inputs(faces, OWN_NORMALISATION)
    assert onnx_x.dtype == np.float32 and onnx_x.shape == (2, 3, 112, 112)
    assert np.array_equal(onnx_x[:, 1], faces[..., 1].astype(np.float32))  # RGB order kept, 0..255
    assert paddle_x[0, 0, 5, 7] == pytest.approx((float(faces[0, 5, 7, 0]) - 123.0) / 128.0, abs=1e-6)
    assert paddle_x[1, 2, 9, 3] == pytest.approx((float(faces[1, 9, 3, 2]) - 131.0) / 128.0, abs=1e-6)
    pixels, _, _ = stage_inputs(x, {"mean": 127.5, "std": 127.5})
    assert np.max(np.abs(pixels - faces.transpose(0, 3, 1, 2))) < 1e-4
    with pytest.raises(ValueError, match="expected uint8"):
        stage_inputs(faces.astype(np.float32), None)


def test_stage_outputs_are_added_to_a_copy_only(graphs):
    graph = graphs["mbf"]
    before = graph.SerializeToString()
    adds = [n.output[0] for n in graph.graph.node if n.op_type == "Add"][:2]
    extended = add_onnx_stage_outputs(graph, [*adds, adds[0], graph.graph.output[0].name])
    assert [o.name for o in extended.graph.output] == [graph.graph.output[0].name, *adds]
    assert graph.SerializeToString() == before
    with pytest.raises(KeyError, match="no tensor named 'nowhere'"):
        add_onnx_stage_outputs(graph, ["nowhere"])


def test_a_graph_with_a_fixed_batch_of_one_runs_a_batch_in_pieces(graphs, faces):
    fixed = copy.deepcopy(graphs["mbf"])
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # as exported without a dynamic batch
    x = normalize(faces)
    tensor = [n.output[0] for n in fixed.graph.node if n.op_type == "Add"][3]
    out = fixed.graph.output[0].name
    pieces = run_onnx_stages(fixed, None, x, [tensor, out], threads=1)
    one = [run_onnx_stages(fixed, "data", x[i:i + 1], [out], threads=1)[out] for i in range(len(faces))]
    assert pieces[out].shape == (len(faces), 512) and pieces[tensor].shape[0] == len(faces)
    assert np.array_equal(pieces[out], np.concatenate(one))
    # control: onnxruntime itself refuses the whole batch on this graph
    import onnxruntime as ort

    session = ort.InferenceSession(fixed.SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="(?i)invalid dimensions"):
        session.run([out], {"data": x})


def test_a_model_too_large_for_one_protobuf_runs_from_a_temporary_file(graphs, faces, monkeypatch, tmp_path):
    import tempfile

    from converters import onnx_check

    graph = graphs["mbf"]
    x = normalize(faces)
    names = [[n.output[0] for n in graph.graph.node if n.op_type == "Add"][5], graph.graph.output[0].name]
    in_memory = run_onnx_stages(graph, "data", x, names, threads=1)
    monkeypatch.setattr(onnx_check, "_PROTOBUF_LIMIT", 0)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    saved = []
    save_model = onnx.save_model

    def save_and_record(model, path, **kwargs):
        save_model(model, path, **kwargs)
        saved.append(sorted(p.name for p in Path(path).parent.iterdir()))

    monkeypatch.setattr(onnx, "save_model", save_and_record)
    from_file = run_onnx_stages(graph, "data", x, names, threads=1)
    assert saved == [["model.data", "model.onnx"]]
    assert all(np.array_equal(in_memory[n], from_file[n]) for n in names)
    assert list(tmp_path.iterdir()) == []  # the temporary copy is gone
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)


def test_a_graph_onnxruntime_cannot_run_is_one_line(graphs, faces):
    broken = copy.deepcopy(graphs["mbf"])
    broken.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(UserError, match="onnxruntime cannot load it"):
        run_onnx_stages(broken, "data", normalize(faces), [broken.graph.output[0].name], threads=1)


def test_import_onnx_then_verify_end_to_end(graphs, faces, tmp_path):
    """The importer's own stages and weights (BatchNorms folded by the exporter, reconstructed as identities)
    against onnxruntime, from the file on disk; the file is left as it was."""
    import hashlib

    from converters import onnx_check
    from converters.onnx_import import import_onnx

    path = tmp_path / "r18.onnx"
    # saving moves the weights out of the proto it saves: a copy, the fixture's graph stays whole
    onnx.save_model(copy.deepcopy(graphs["r18"]), str(path), save_as_external_data=True, location="r18.data")
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    imported = import_onnx(path)
    assert imported.arch.name == "r18" and imported.folded  # the exporter's folding was undone
    names = [name for name, _ in imported.stages]
    assert set(source("r18")[1]) < set(names)  # every residual block, and more
    report = verify_onnx_import(path, imported, None, faces, OPTIONS)
    assert report.passed, report.verdict()
    assert [r.layer for r in report.rows] == names + [OUTPUT]
    assert report.worst.rel < EVAL_LAYER_REL and report.embedding_cosine >= EMBEDDING_COSINE
    # the importer's parsed file is taken as it is, not read again
    assert onnx_check._model_and_path(imported.graph) == (imported.graph.model, path)
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()} == digests
