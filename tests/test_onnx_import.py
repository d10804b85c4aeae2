"""Importing InsightFace recognition ONNX graphs by structure (converters.onnx_graph, converters.onnx_import).

Every graph is made here from the PyTorch reference with seeded, calibrated weights: PyTorch's legacy exporter
as InsightFace's torch2onnx recipe uses it (and at other opsets, with a fixed batch), then rewritten the ways
graphs in the wild differ: numeric names and shuffled initializers as in model packs, normalisation nodes in
front, BatchNorms left unfolded as Paddle's exporter leaves them, simplified by onnxslim, exported by dynamo.
Each import is checked three ways: arrays against the reference state_dict (exactly where nothing was
folded; folded convolutions against a float64 fold of the reference, folded BatchNorms as identities), the
PyTorch reference holding the imported arrays against onnxruntime on the original graph (embedding and
every stage the import names), and the user-facing errors for graphs that are not recognition models.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import architectures
from converters.errors import UserError
from converters.inputs import seeded_images
from converters.mapping import layout
from converters.parity import EMBEDDING_COSINE, EVAL_LAYER_REL, compare_arrays

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from converters.onnx_graph import GraphMismatch, read_onnx  # noqa: E402
from converters.onnx_import import BN_EPS, import_onnx  # noqa: E402

ARCHS = ("r18", "mbf")
TINY = "tiny_iresnet"  # registered for one test: a new iresnet size imports like the built-in ones


# ------------------------------------------------------------------------------------------------ helpers
class _References(dict):
    """arch -> seeded, calibrated state_dict (numpy), made on first use."""

    def __missing__(self, arch: str) -> OrderedDict:
        from converters.demo import demo_state_dict

        self[arch] = demo_state_dict(arch, seed=3, batches=1, batch_size=4)
        return self[arch]


@pytest.fixture(scope="module")
def references() -> _References:
    return _References()


@pytest.fixture(scope="module")
def exports(tmp_path_factory, references):
    """(arch, opset) -> an ONNX ModelProto exported by PyTorch's legacy exporter at batch 1, made once."""
    folder = tmp_path_factory.mktemp("exports")
    made: dict[tuple[str, int], Path] = {}

    def get(arch: str, opset: int = 11) -> onnx.ModelProto:
        if (arch, opset) not in made:
            made[arch, opset] = export_legacy(references[arch], arch, folder / f"{arch}-{opset}.onnx", opset)
        return onnx.load(str(made[arch, opset]))

    return get


def export_legacy(arrays, arch: str, path: Path, opset: int, input_name: str = "data") -> Path:
    """torch.onnx.export as InsightFace's torch2onnx.py calls it (eval mode, constant folding on)."""
    from converters.models import torch_model

    model = torch_model(arch, arrays)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 3, 112, 112), str(path), opset_version=opset,
                          input_names=[input_name], keep_initializers_as_inputs=False, dynamo=False)
    return path


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """InsightFace's torch2onnx.py after the export: the input's dimension 0 renamed to ``None``."""
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "None"
    return model


def run_onnx(model: onnx.ModelProto, x: np.ndarray, tensors: list[str] = ()) -> dict[str, np.ndarray]:
    """onnxruntime on ``model`` (graph optimisations off) -> {output or named tensor: value}."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    model = copy
    present = {o.name for o in model.graph.output}
    for name in dict.fromkeys(tensors):
        if name not in present:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    fixed = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value
    pieces = [session.run(names, {session.get_inputs()[0].name: x[i:i + (fixed or len(x))]})
              for i in range(0, len(x), fixed or len(x))]
    return {n: np.concatenate([p[k] for p in pieces]) for k, n in enumerate(names)}


_TORCH_RUNS: dict[tuple[str, str], tuple[np.ndarray, dict]] = {}  # many imports hold the same arrays


@pytest.fixture(scope="module", autouse=True)
def _release_torch_runs():
    yield
    _TORCH_RUNS.clear()


def run_torch(arch: str, arrays, x: np.ndarray) -> tuple[np.ndarray, dict]:
    """The PyTorch reference holding ``arrays`` on ``x``: (embedding, {module name: output}), every module's
    output kept; one run per distinct arrays and input."""
    from converters.models import torch_model

    digest = hashlib.sha256(x.tobytes())
    for key, value in arrays.items():
        digest.update(key.encode() + np.ascontiguousarray(value).tobytes())
    cache_key = (arch, digest.hexdigest())
    if cache_key in _TORCH_RUNS:
        return _TORCH_RUNS[cache_key]
    model = torch_model(arch, arrays)
    seen: dict[str, np.ndarray] = {}

    def hook(name: str):
        def keep(_module, _inputs, out) -> None:
            # a copy at once: a residual block adds its shortcut into bn3's output in place
            seen.setdefault(name, out.detach().numpy().copy())
        return keep

    for name, module in model.named_modules():
        if name:
            module.register_forward_hook(hook(name))
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    _TORCH_RUNS[cache_key] = out, seen
    return out, seen


def fold_reference(reference, arch: str, bn: str) -> dict[str, np.ndarray]:
    """A folded BatchNorm ``bn`` computed independently in float64: the layer before it (weight, and bias
    when it has one) times scale = gamma / sqrt(var + eps), and the shift beta - mean * scale."""
    keys = [e.torch_key for e in layout(arch)]
    prev = keys[keys.index(f"{bn}.weight") - 1].rpartition(".")[0]
    g = {k: reference[f"{bn}.{k}"].astype(np.float64) for k in ("weight", "bias", "running_mean", "running_var")}
    scale = g["weight"] / np.sqrt(g["running_var"] + BN_EPS)
    w = reference[f"{prev}.weight"].astype(np.float64)
    shift = g["bias"] - g["running_mean"] * scale
    out = {f"{prev}.weight": w * scale.reshape(-1, *([1] * (w.ndim - 1)))}
    if f"{prev}.bias" in reference:
        out[f"{prev}.bias"] = reference[f"{prev}.bias"] * scale + shift
    else:
        out[f"{bn}.bias"] = shift
    return out


def check_arrays(imported, reference, arch: str) -> None:
    """Exactly the reference where nothing was folded; a float64 fold of it where something was."""
    assert list(imported.arrays) == list(reference)
    for key, value in imported.arrays.items():
        assert value.dtype == reference[key].dtype and value.shape == reference[key].shape, key
    folded_values: dict[str, np.ndarray] = {}
    for bn in imported.folded:
        c = reference[f"{bn}.weight"].shape[0]
        assert np.array_equal(imported.arrays[f"{bn}.weight"], np.ones(c, np.float32)), bn
        assert np.array_equal(imported.arrays[f"{bn}.running_mean"], np.zeros(c, np.float32)), bn
        assert np.array_equal(imported.arrays[f"{bn}.running_var"], np.full(c, np.float32(1 - BN_EPS))), bn
        folded_values.update(fold_reference(reference, arch, bn))
    folded_values.update({f"{bn}.bias": np.zeros(1) for bn in imported.folded if f"{bn}.bias" not in folded_values})
    for key, value in imported.arrays.items():
        module = key.rpartition(".")[0]
        if key.endswith("num_batches_tracked"):  # a graph holds no training counters
            assert value == 0, key
        elif key in folded_values:
            expected = folded_values[key]
            if expected.shape == (1,):  # the shift went into the layer before (fc's bias)
                assert not value.any(), key
            else:
                scale = float(np.max(np.abs(expected)))
                assert np.max(np.abs(value - expected)) <= 2e-6 * scale, key
        elif module not in imported.folded:
            assert np.array_equal(value, reference[key]), key


def check_outputs(imported, model: onnx.ModelProto, x: np.ndarray, pixels: np.ndarray | None = None) -> float:
    """The reference holding the imported arrays against onnxruntime on ``model``: the embedding and every
    stage the import names, within the parity gates; returns the embedding's rel error."""
    stages = imported.stages
    onnx_out = run_onnx(model, x if pixels is None else pixels, [t for _, t in stages])
    emb, seen = run_torch(imported.arch.name, imported.arrays, x)
    ref = onnx_out[imported.output_name]
    _, rel, cos = compare_arrays(ref, emb)
    assert rel <= EVAL_LAYER_REL and cos >= EMBEDDING_COSINE, (rel, cos)
    assert np.linalg.norm(ref, axis=1).min() > 1.0  # a real embedding, not a collapsed one
    for module, tensor in stages:
        _, stage_rel, _ = compare_arrays(onnx_out[tensor], seen[module])
        assert stage_rel <= EVAL_LAYER_REL, (module, tensor, stage_rel)
    return rel


def expected_folded(arch: str) -> list[str]:
    """The BatchNorms PyTorch's exporter folds: every one right after a convolution."""
    entries = layout(arch)
    out = []
    for i, e in enumerate(entries):
        if e.module_type == "BatchNorm2d" and e.torch_key.endswith(".weight") and \
                entries[i - 1].module_type == "Conv2d":
            out.append(e.module)
    return out


# ---------------------------------------------------------------------------------- PyTorch's own exports
@pytest.mark.parametrize("opset", [11, 9, 17])
@pytest.mark.parametrize("arch", ARCHS)
def test_legacy_export_imports_exactly(arch, opset, exports, references, tmp_path):
    model = exports(arch, opset)
    if opset == 11:  # InsightFace's recipe: opset 11, input "data", batch dimension renamed "None"
        model = dynamic_batch(model)
    imported = import_onnx(save(model, tmp_path / "m.onnx"))
    assert (imported.arch.name, imported.arch.num_features) == (arch, 512)
    assert (imported.input_name, imported.opset, imported.normalisation) == ("data", opset, None)
    assert imported.batch == ("None" if opset == 11 else 1)
    assert imported.producer.startswith("pytorch")
    assert sorted(imported.folded) == sorted(expected_folded(arch))
    check_arrays(imported, references[arch], arch)
    check_outputs(imported, model, seeded_images(2 if opset == 11 else 1, seed=1))
    # every residual block (unit) and the embedding are stages
    modules = [m for m, _ in imported.stages]
    if arch == "r18":
        assert [m for m in modules if m.count(".") == 1 and m.startswith("layer")] == [
            f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]
    else:
        assert [m for m in modules if m.count(".") == 1 and m.startswith("layers.")] == [
            f"layers.{i}" for i in range(8)]
        assert [m for m in modules if m.startswith("layers.3.layers.") and m.count(".") == 3] == [
            f"layers.3.layers.{i}" for i in range(4)]
    assert imported.stages[-1] == ("features", imported.output_name)


def test_model_pack_names_mean_nothing(exports, tmp_path):
    """Numeric names for every node, tensor and initializer, input ``input.1``, initializers shuffled: the same
    arrays as from the named export."""
    model = exports("r18")
    named = import_onnx(save(model, tmp_path / "named.onnx"))
    renamed = number_everything(model, np.random.default_rng(0))
    assert renamed.graph.input[0].name == "input.1" and renamed.graph.initializer[0].name.isdigit()
    imported = import_onnx(save(renamed, tmp_path / "pack.onnx"))
    assert imported.input_name == "input.1" and imported.arch.name == "r18"
    for key, value in named.arrays.items():
        assert np.array_equal(imported.arrays[key], value), key
    assert imported.folded == named.folded
    check_outputs(imported, renamed, seeded_images(1, seed=1))


def number_everything(model: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    names: dict[str, str] = {g.input[0].name: "input.1"}
    for t in g.initializer:
        names[t.name] = str(len(names) + 600)
    for n in g.node:
        for o in n.output:
            names[o] = str(len(names) + 600)
    for i, n in enumerate(g.node):
        n.name = "" if i % 2 else str(i)
        n.input[:] = [names.get(t, t) for t in n.input]
        n.output[:] = [names[t] for t in n.output]
    for v in [*g.input, *g.output]:
        v.name = names[v.name]
    for t in g.initializer:
        t.name = names[t.name]
    inits = list(g.initializer)
    order = rng.permutation(len(inits))
    shuffled = [onnx.TensorProto.FromString(inits[i].SerializeToString()) for i in order]
    del g.initializer[:]
    g.initializer.extend(shuffled)
    del g.value_info[:]
    return model


@pytest.mark.parametrize("arch, mean, std", [("mbf", 127.5, 128.0),
                                             ("mbf", [123.675, 116.28, 103.53], [58.395, 57.12, 57.375])])
def test_normalisation_in_the_graph_is_recorded(arch, mean, std, exports, tmp_path):
    """MXNet-era graphs subtract the mean and multiply by 1 / std in the graph: the import records it."""
    model = dynamic_batch(exports(arch))
    as_mul = np.ndim(mean) == 0
    prepend_normalisation(model, mean, std, divide=not as_mul)
    imported = import_onnx(save(model, tmp_path / "norm.onnx"))
    norm = imported.normalisation
    assert norm is not None and norm["nodes"] == ["minusscalar0", "mulscalar0" if as_mul else "divscalar0"]
    np.testing.assert_allclose(norm["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(norm["std"], std, rtol=1e-6)
    assert imported.start == "normalised" and imported.input_name == "data"
    pixels = (seeded_images(2, seed=7) * 127.5 + 127.5).astype(np.float32)
    per_channel = lambda v: np.asarray(v, np.float32).reshape(1, -1, 1, 1)  # noqa: E731
    x = ((pixels - per_channel(norm["mean"])) / per_channel(norm["std"])).astype(np.float32)
    check_outputs(imported, model, x, pixels=pixels)


def prepend_normalisation(model: onnx.ModelProto, mean, std, divide: bool) -> None:
    g = model.graph
    old = g.input[0].name
    shape = [1, 3, 1, 1] if np.ndim(mean) else []
    g.initializer.extend([
        numpy_helper.from_array(np.asarray(mean, np.float32).reshape(shape), "mean_c"),
        numpy_helper.from_array((np.asarray(std, np.float32) if divide else np.float32(1) / np.asarray(
            std, np.float32)).reshape(shape), "scale_c")])
    for n in g.node:
        n.input[:] = ["normalised" if t == old else t for t in n.input]
    nodes = [helper.make_node("Sub", [old, "mean_c"], ["centred"], name="minusscalar0"),
             helper.make_node("Div" if divide else "Mul", ["centred", "scale_c"], ["normalised"],
                              name="divscalar0" if divide else "mulscalar0")]
    rest = list(g.node)
    del g.node[:]
    g.node.extend(nodes + rest)


@pytest.mark.parametrize("arch", ARCHS)
def test_unfolded_batchnorms_map_directly(arch, exports, references, tmp_path):
    """As Paddle's exporter writes them: Conv without bias + BatchNormalization, Linear as MatMul + Add,
    PReLU slopes [1, C, 1, 1], Identity nodes on the way. Nothing is folded: every array is the reference's."""
    model = unfold(exports(arch), arch, references[arch])
    imported = import_onnx(save(model, tmp_path / "unfolded.onnx"))
    assert imported.folded == []
    check_arrays(imported, references[arch], arch)  # exactly the reference's, every one
    check_outputs(imported, model, seeded_images(1, seed=1))


def unfold(model: onnx.ModelProto, arch: str, reference, eps: float = BN_EPS) -> onnx.ModelProto:
    """The legacy export with each folded Conv split back into Conv (reference weight, no bias) and a
    BatchNormalization of epsilon ``eps``; Gemm as MatMul + Add; PReLU slopes [1, C, 1, 1]; an Identity after
    each PReLU. Conv nodes follow the layout's convolutions in order (the exporter writes them in forward
    order); shapes are checked on the way."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    entries = layout(arch)
    convs = [(e.module, next(f.module for f in entries[i:] if f.module_type == "BatchNorm2d"))
             for i, e in enumerate(entries) if e.module_type == "Conv2d"]
    conv_nodes = [n for n in g.node if n.op_type == "Conv"]
    assert len(conv_nodes) == len(convs)
    pairs = {id(n): c for n, c in zip(conv_nodes, convs)}
    added = []

    def const(name, value):
        added.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    nodes = []
    for n in g.node:
        if n.op_type == "Conv":
            conv, bn = pairs[id(n)]
            w = reference[f"{conv}.weight"]
            assert tuple(inits[n.input[1]].dims) == w.shape
            out = n.output[0]
            n.input[:] = [n.input[0], const(f"{conv}.w", w)]
            n.output[:] = [out + ".conv"]
            nodes += [n, helper.make_node(
                "BatchNormalization", [out + ".conv"] + [const(f"{bn}.{k}", reference[f"{bn}.{k}"]) for k in
                                                         ("weight", "bias", "running_mean", "running_var")],
                [out], epsilon=eps, name=f"bn_{bn}")]
        elif n.op_type == "Gemm":
            w = reference["fc.weight"].T
            out = n.output[0]
            nodes += [helper.make_node("MatMul", [n.input[0], const("fc.wT", w)], [out + ".mm"], name="fc_mm"),
                      helper.make_node("Add", [const("fc.b", reference["fc.bias"]), out + ".mm"], [out],
                                       name="fc_add")]
        elif n.op_type == "PRelu":
            slope = numpy_helper.to_array(inits[n.input[1]])
            n.input[1] = const(n.input[1] + ".4d", slope.reshape(1, -1, 1, 1))
            out = n.output[0]
            n.output[:] = [out + ".prelu"]
            nodes += [n, helper.make_node("Identity", [out + ".prelu"], [out], name=f"{n.name}_identity")]
        else:
            nodes.append(n)
    used = {t for n in nodes for t in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.node[:], g.initializer[:]
    g.node.extend(nodes)
    g.initializer.extend(kept + added)
    return model


def test_older_exporter_forms_of_the_head(exports, tmp_path):
    """Flatten as Shape/Gather/Unsqueeze/Concat/Reshape, an eval Dropout, the linear layer as Gemm with an
    [in, out] weight (transB 0), the BatchNorm1d between Unsqueeze and Squeeze, every initializer also listed
    as a graph input (keep_initializers_as_inputs): the same arrays."""
    model = exports("mbf")
    named = import_onnx(save(model, tmp_path / "named.onnx"))
    older = older_head(model)
    imported = import_onnx(save(older, tmp_path / "older.onnx"))
    for key, value in named.arrays.items():
        assert np.array_equal(imported.arrays[key], value), key
    assert imported.stages[-1] == ("features", imported.output_name)
    check_outputs(imported, older, seeded_images(1, seed=1))


def older_head(model: onnx.ModelProto) -> onnx.ModelProto:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    g.initializer.extend([numpy_helper.from_array(np.array(0, np.int64), "zero"),
                          numpy_helper.from_array(np.array([-1], np.int64), "minus_one")])
    nodes = []
    for n in g.node:
        if n.op_type == "Flatten":
            x, out = n.input[0], n.output[0]
            nodes += [helper.make_node("Shape", [x], ["shape"]),
                      helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
                      helper.make_node("Unsqueeze", ["batch"], ["batch1"], axes=[0]),
                      helper.make_node("Concat", ["batch1", "minus_one"], ["target"], axis=0),
                      helper.make_node("Reshape", [x, "target"], ["flat"]),
                      helper.make_node("Dropout", ["flat"], [out], ratio=0.5)]
        elif n.op_type == "MatMul":
            nodes.append(helper.make_node("Gemm", list(n.input), list(n.output), transB=0, name="gemm"))
        elif n.op_type == "BatchNormalization":
            x, out = n.input[0], n.output[0]
            n.input[0], n.output[0] = "unsqueezed", "normed"
            nodes += [helper.make_node("Unsqueeze", [x], ["unsqueezed"], axes=[2]), n,
                      helper.make_node("Squeeze", ["normed"], [out], axes=[2])]
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.initializer)
    return model


def test_embedding_batchnorm_as_mul_and_add(exports, references, tmp_path):
    """A simplifier may write the BatchNorm1d as Mul and Add by constants: read as a BatchNorm with that weight
    and bias, mean 0 and variance 1 - eps."""
    model = exports("mbf")
    ref = references["mbf"]
    g = model.graph
    k = next(i for i, n in enumerate(g.node) if n.op_type == "BatchNormalization")
    bn = g.node[k]
    p = "features.layers.3"
    scale = ref[f"{p}.weight"] / np.sqrt(ref[f"{p}.running_var"] + np.float32(BN_EPS))
    shift = ref[f"{p}.bias"] - ref[f"{p}.running_mean"] * scale
    g.initializer.extend([numpy_helper.from_array(scale, "bn_scale"), numpy_helper.from_array(shift, "bn_shift")])
    x, out = bn.input[0], bn.output[0]
    g.node.remove(bn)
    g.node.insert(k, helper.make_node("Mul", [x, "bn_scale"], ["scaled"], name="mul"))
    g.node.insert(k + 1, helper.make_node("Add", ["bn_shift", "scaled"], [out], name="add"))
    imported = import_onnx(save(model, tmp_path / "muladd.onnx"))
    assert p in imported.folded
    assert np.array_equal(imported.arrays[f"{p}.weight"], scale)
    assert np.array_equal(imported.arrays[f"{p}.bias"], shift)
    assert np.array_equal(imported.arrays[f"{p}.running_var"], np.full(512, np.float32(1 - BN_EPS)))
    check_outputs(imported, model, seeded_images(1, seed=1))


@pytest.mark.parametrize("arch", ARCHS)
def test_simplified_graph_imports(arch, exports, references, tmp_path):
    """onnxslim reorders nodes and rewrites constants; the import is the same."""
    onnxslim = pytest.importorskip("onnxslim")
    model = dynamic_batch(exports(arch))
    named = import_onnx(save(model, tmp_path / "named.onnx"))
    slim = onnxslim.slim(onnx.ModelProto.FromString(model.SerializeToString()))
    imported = import_onnx(save(slim, tmp_path / "slim.onnx"))
    for key, value in named.arrays.items():
        assert np.array_equal(imported.arrays[key], value), key
    check_outputs(imported, slim, seeded_images(1, seed=1))


def test_registered_iresnet_size_imports(references, tmp_path):
    with architectures.registered(TINY, architectures.IResNetSpec((1, 1, 1, 1))):
        path = export_legacy(references[TINY], TINY, tmp_path / "tiny.onnx", 11)
        imported = import_onnx(path)
        assert imported.arch.name == TINY
        check_arrays(imported, references[TINY], TINY)
        check_outputs(imported, onnx.load(str(path)), seeded_images(1, seed=1))
    del references[TINY]


def test_external_data_is_read_from_the_model_folder(exports, references, tmp_path):
    model = exports("mbf")
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.weights",
              size_threshold=0)
    imported = import_onnx(tmp_path / "ext.onnx")
    check_arrays(imported, references["mbf"], "mbf")


@pytest.mark.slow
def test_dynamo_export_imports(references, tmp_path):
    """torch.onnx.export(..., dynamo=True): other node names, Reshape for flatten, and the embedding's
    BatchNorm1d folded into the Gemm."""
    pytest.importorskip("onnxscript", reason="torch's dynamo exporter needs onnxscript")
    from converters.models import torch_model

    path = tmp_path / "dynamo.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch_model("r18", references["r18"]), (torch.zeros(2, 3, 112, 112),), str(path),
                          input_names=["data"], dynamo=True, verbose=False)
    imported = import_onnx(path)
    assert imported.arch.name == "r18" and imported.opset >= 18
    assert "features" in imported.folded
    check_arrays(imported, references["r18"], "r18")
    check_outputs(imported, onnx.load(str(path)), seeded_images(2, seed=19))


def test_every_batchnorm_of_the_references_uses_the_importers_eps():
    from torch_reference import get_model

    for arch in ARCHS:
        with torch.device("meta"):
            model = get_model(arch)
        eps = {m.eps for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
        assert eps == {BN_EPS}, arch


def test_arch_option_is_checked_against_the_graph(exports, tmp_path):
    path = save(dynamic_batch(exports("r18")), tmp_path / "r18.onnx")
    assert import_onnx(path, arch="r18").arch.name == "r18"
    with pytest.raises(UserError, match="--arch mbf expects MobileFaceNet .* but the checkpoint is r18"):
        import_onnx(path, arch="mbf")


# ------------------------------------------------------------------------------------------- bad inputs
def test_not_onnx_files_are_refused_in_one_line(exports, tmp_path):
    cases = {"text.onnx": b"this is not a model\n" * 40, "empty.onnx": b""}
    good = exports("mbf").SerializeToString()
    cases["truncated.onnx"] = good[: len(good) // 2]
    expected = {"text.onnx": "cannot parse the protobuf", "empty.onnx": "empty file",
                "truncated.onnx": "cannot parse the protobuf"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError, match=expected[name]) as err:
            import_onnx(tmp_path / name)
        assert "\n" not in str(err.value) and name in str(err.value)
    with pytest.raises(UserError, match="no such file"):
        import_onnx(tmp_path / "missing.onnx")
    with pytest.raises(UserError, match="is a directory"):
        import_onnx(tmp_path)


def test_external_data_outside_the_folder_or_missing_is_refused(exports, tmp_path):
    model = exports("mbf")
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(model, str(folder / "m.onnx"), save_as_external_data=True, location="m.weights", size_threshold=0)
    (folder / "m.weights").rename(tmp_path / "m.weights")  # next to the folder: reachable only through ".."
    with pytest.raises(UserError, match="'m.weights': no such file next to the model"):
        read_onnx(folder / "m.onnx")
    escaping = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    for t in escaping.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../m.weights"
    save(escaping, folder / "escape.onnx")
    with pytest.raises(UserError, match="only files inside the model's folder"):
        read_onnx(folder / "escape.onnx")
    (tmp_path / "m.weights").rename(folder / "m.weights")
    with open(folder / "m.weights", "r+b") as f:
        f.truncate(100)
    with pytest.raises(UserError, match="do not hold the"):
        read_onnx(folder / "m.onnx")


def test_unsupported_node_mid_graph_is_named(exports, tmp_path):
    model = exports("r18")
    g = model.graph
    k = next(i for i, n in enumerate(g.node) if n.op_type == "PRelu" and "layer1.0" in n.name)
    out = g.node[k].output[0]
    for n in g.node[k + 1:]:
        n.input[:] = [out + ".relu" if t == out else t for t in n.input]
    g.node.insert(k + 1, helper.make_node("Relu", [out], [out + ".relu"], name="inserted_relu"))
    with pytest.raises(UserError, match=rf"node 'inserted_relu' \(Relu, #{k + 1}\): expected Conv "
                       r"\(layer1\.0\.conv2\) \(read as iresnet"):
        import_onnx(save(model, tmp_path / "relu.onnx"))


def test_batchnorm_eps_of_another_framework_is_a_mismatch(exports, references, tmp_path):
    """MXNet-era iresnets use BatchNorm eps 2e-5 (and BN after the stem conv): not InsightFace's PyTorch iresnet."""
    model = unfold(exports("r18"), "r18", references["r18"], eps=2e-5)
    with pytest.raises(UserError, match=r"node 'bn_bn1' \(BatchNormalization, #1\): epsilon 2e-05, but bn1 "):
        import_onnx(save(model, tmp_path / "mxnet.onnx"))


def test_detection_like_graph_with_several_outputs_is_refused(exports, tmp_path):
    model = exports("mbf")
    prelu = next(n for n in model.graph.node if n.op_type == "PRelu")
    model.graph.output.append(onnx.ValueInfoProto(name=prelu.output[0]))
    with pytest.raises(UserError, match="2 graph outputs .* a recognition model has one"):
        import_onnx(save(model, tmp_path / "det.onnx"))


def test_quantized_graph_is_refused(exports, tmp_path):
    model = exports("mbf")
    g = model.graph
    g.initializer.extend([numpy_helper.from_array(np.array(0.02, np.float32), "q_scale"),
                          numpy_helper.from_array(np.array(0, np.int8), "q_zero")])
    for n in g.node:
        n.input[:] = ["dq" if t == "data" else t for t in n.input]
    nodes = [helper.make_node("QuantizeLinear", ["data", "q_scale", "q_zero"], ["q"], name="quant"),
             helper.make_node("DequantizeLinear", ["q", "q_scale", "q_zero"], ["dq"], name="dequant")]
    rest = list(g.node)
    del g.node[:]
    g.node.extend(nodes + rest)
    with pytest.raises(UserError, match=r"quantized graph \(node 'quant' \(QuantizeLinear, #0\)\) is not supported"):
        import_onnx(save(model, tmp_path / "quant.onnx"))


def test_graph_without_one_image_input_is_refused(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 112, 112])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 112, 112])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    save(helper.make_model(graph), tmp_path / "gray.onnx")
    with pytest.raises(UserError, match=r"input 'x' is \[1, 1, 112, 112\] .* \[N, 3, H, W\]"):
        read_onnx(tmp_path / "gray.onnx")


def test_mismatch_names_node_and_position(exports):
    """GraphMismatch's text: the node's name, op type and index (or ``#index`` for a node without a name)."""
    model = exports("mbf")
    model.graph.node[1].name = ""
    path_graph = read_onnx_model(model)
    first, second = path_graph.nodes[0], path_graph.nodes[1]
    assert str(GraphMismatch(first, "expected X")) == f"node {first.name!r} (Conv, #0): expected X"
    assert str(GraphMismatch(second, "expected Y")) == "node #1 (PRelu): expected Y"
    assert path_graph.node_label(second) == "node #1 (PRelu)"


def read_onnx_model(model: onnx.ModelProto):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        return read_onnx(save(model, Path(folder) / "m.onnx"))
