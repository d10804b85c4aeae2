"""The ViT part of the ONNX importer: InsightFace ViT graphs read back onto InsightFace's names by structure.

Graphs are made here from seeded weights, as users make them: PyTorch's legacy exporter at opset 11 (the
project's ``export_onnx``, LayerNorm decomposed), at opset 17 (LayerNormalization nodes) and without a
dynamic batch (as InsightFace's torch2onnx exports: attention reshapes fixed to a batch of one), and
paddle2onnx (opsets 7, 11 and 17) from a ``paddle.jit.save`` of the Paddle model. Each import must give
back the source weights exactly (``mask_token``, which no inference graph holds, as zeros), and the PyTorch
reference holding the imported weights must match onnxruntime on the original graph at every stage the walk
names and at the embedding. All of these exporters write the feature head's BatchNorm1d as a bare
BatchNormalization; rewritten graphs cover the other forms a graph can hold (explicit Mul and Add, folded
into the Linear before it, between Unsqueeze and Squeeze, after a bias), and graphs that are not the ViT
fail at the node that differs.
"""

from __future__ import annotations

import functools
import re
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import architectures
from converters.demo import demo_state_dict
from converters.inputs import seeded_images
from converters.models import torch_model
from converters.onnx_graph import GraphMismatch, read_onnx
from converters.onnx_import import import_onnx
from converters.onnx_vit import LN_EPS, walk_vit
from converters.parity import EMBEDDING_COSINE, EVAL_LAYER_REL, capture_torch, compare_arrays

ort = pytest.importorskip("onnxruntime")

# 16-pixel patches (49 tokens), 4 heads of 16, 2 blocks: fast, and nothing of vit_t's shape assumed
TINY = "vit_onnx_tiny"
TINY_SPEC = architectures.ViTSpec(64, 2, num_heads=4, patch_size=16)
NUM_FEATURES = {"vit_t": 512, TINY: 128}
BN_EPS = 2e-5


@pytest.fixture(scope="module")
def tiny():
    with architectures.registered(TINY, TINY_SPEC):
        yield TINY


@functools.lru_cache(maxsize=2)
def source_arrays(arch: str):
    """Calibrated demo weights with every LayerNorm and Linear bias randomised too, so that a swapped or
    dropped LayerNorm or bias cannot pass (the demo leaves them at InsightFace's init, ones and zeros)."""
    arrays = demo_state_dict(arch, seed=3, num_features=NUM_FEATURES[arch], batches=1, batch_size=4)
    rng = np.random.default_rng(11)
    for key, value in arrays.items():
        module = key.rsplit(".", 1)[0]
        if ".norm" in key or key.startswith("norm."):
            weight = key.endswith("weight")
            value[...] = rng.uniform(0.5, 1.5, value.shape) if weight else rng.normal(0, 0.1, value.shape)
        elif key.endswith(".bias") and module.split(".")[-1] in ("proj", "fc1", "fc2"):
            value[...] = rng.normal(0.0, 0.05, value.shape)
    return arrays


# -------------------------------------------------------------------------------------------- exports
def torch_export(arch: str, path, opset: int, dynamic: bool = True, **overrides) -> onnx.ModelProto:
    """PyTorch's legacy exporter as InsightFace's torch2onnx calls it (dynamic batch unless told)."""
    if opset == 11 and dynamic and not overrides:
        from converters.export import export_onnx  # the project's own export

        export_onnx(source_arrays(arch), arch, NUM_FEATURES[arch], path)
        return onnx.load(str(path))
    if overrides:
        from torch_reference.vit import vit_from_spec

        model = vit_from_spec(architectures.spec_of(arch), NUM_FEATURES[arch], **overrides)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in source_arrays(arch).items()})
        model.eval()
    else:
        model = torch_model(arch, source_arrays(arch), NUM_FEATURES[arch])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 3, 112, 112), str(path), opset_version=opset,
                          input_names=["data"], keep_initializers_as_inputs=False, dynamo=False,
                          dynamic_axes={"data": {0: "None"}} if dynamic else None)
    return onnx.load(str(path))


def paddle_export(arch: str, folder, opset: int) -> onnx.ModelProto:
    """``paddle.jit.save`` of the Paddle model (as the paddle-inference backend does), then paddle2onnx."""
    paddle2onnx = pytest.importorskip("paddle2onnx")
    import paddle

    from converters.mapping import torch_to_paddle
    from converters.models import paddle_model

    nf = NUM_FEATURES[arch]
    model = paddle_model(arch, torch_to_paddle(source_arrays(arch), arch, nf, "<test>"), nf)
    paddle.jit.save(model, str(folder / "model"), input_spec=[paddle.static.InputSpec([None, 3, 112, 112],
                                                                                      "float32", "x")])
    path = folder / "p2o.onnx"
    # optimize_tool "None": the default optimiser pip-installs packages when it runs
    paddle2onnx.export(str(folder / "model.json"), str(folder / "model.pdiparams"), str(path),
                       opset_version=opset, optimize_tool="None")
    return onnx.load(str(path))


def save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)


# ------------------------------------------------------------------------------------------- checks
def run_onnx(model: onnx.ModelProto, x: np.ndarray, tensors: list[str]) -> list[np.ndarray]:
    """The graph's output and ``tensors``, by onnxruntime without graph optimisations."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    del model.graph.output[1:]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {model.graph.input[0].name: x})


def check_import(model: onnx.ModelProto, path, arch: str, expected: dict | None = None, folded=(),
                 unseen=(), batch: int = 2):
    """Import ``model``; the arrays must be ``expected`` (default: the source weights) exactly, and the
    PyTorch reference holding them must match onnxruntime on the graph at every stage and the embedding.
    ``unseen``: modules whose output no tensor of the graph holds (a Linear whose BatchNorm was folded in)."""
    graph = read_onnx(save(model, path))
    walk = walk_vit(graph, graph.input_name)
    source = source_arrays(arch)
    expected = dict(source if expected is None else expected)
    assert walk.family == "vit" and sorted(walk.folded) == sorted(folded)
    assert list(walk.arrays) == list(source)  # InsightFace's keys in its state_dict order
    for key, ref in source.items():
        got = walk.arrays[key]
        assert got.dtype == ref.dtype and got.shape == ref.shape, key
        if key == "mask_token":
            assert not got.any()
        elif key.endswith("num_batches_tracked"):
            assert got == 0
        else:
            assert np.array_equal(got, expected[key]), key
    assert walk.matched > 0

    depth = architectures.spec_of(arch).depth
    names = [name for name, _ in walk.stages]
    per_block = ["norm1", "attn", "norm2", "mlp", ""]
    assert names[:2] == ["patch_embed.proj", "patch_embed"]
    assert names[2:2 + 5 * depth] == [f"blocks.{i}.{s}".rstrip(".") for i in range(depth) for s in per_block]
    head = ["feature.0", "feature.1", "feature.2", "feature.3"]
    assert names[2 + 5 * depth:] == ["norm"] + [n for n in head if n not in unseen]

    x = seeded_images(batch, seed=17)
    if model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1:  # exported without a dynamic batch
        x = x[:1]
    out, *stages = run_onnx(model, x, [t for _, t in walk.stages])
    reference = torch_model(arch, walk.arrays, NUM_FEATURES[arch])
    captured = capture_torch(reference, x).outputs
    for (name, _), value in zip(walk.stages, stages):
        _, rel, _ = compare_arrays(value, captured[name])
        assert rel <= EVAL_LAYER_REL, (name, rel)
    _, rel, cosine = compare_arrays(out, captured["(embedding)"])
    assert rel <= EVAL_LAYER_REL and cosine >= EMBEDDING_COSINE, (rel, cosine)
    return walk


def nodes(model: onnx.ModelProto, op: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op]


# ---------------------------------------------------------------------------------------------- vit_t
@pytest.mark.slow
@pytest.mark.parametrize("opset", [11, 17])
def test_vit_t_from_pytorchs_legacy_exporter(opset, tmp_path):
    model = torch_export("vit_t", tmp_path / "torch.onnx", opset)
    ln_fused = len(nodes(model, "LayerNormalization"))
    assert ln_fused == (0 if opset == 11 else 25)  # 12 blocks x 2 + the final norm
    walk = check_import(model, tmp_path / "m.onnx", "vit_t")

    # the importer tries every family, takes the ViT's walk and recognises vit_t from its shapes
    imported = import_onnx(tmp_path / "m.onnx")
    assert (imported.family, imported.arch.name, imported.arch.num_features) == ("vit", "vit_t", 512)
    assert list(imported.arrays) == list(walk.arrays) and imported.stages == walk.stages


@pytest.mark.slow
def test_vit_t_from_paddle2onnx(tmp_path):
    model = paddle_export("vit_t", tmp_path, 11)
    check_import(model, tmp_path / "m.onnx", "vit_t")


# ---------------------------------------------------------------------------------- a registered tiny ViT
@pytest.mark.parametrize("variant", ["torch opset 11", "torch opset 17, fixed batch", "paddle2onnx opset 7",
                                     "paddle2onnx opset 17"])
def test_registered_tiny_vit_every_exporter(tiny, variant, tmp_path):
    if variant.startswith("paddle2onnx"):
        model = paddle_export(tiny, tmp_path, int(variant.split()[-1]))
    else:
        model = torch_export(tiny, tmp_path / "t.onnx", int(variant.split(",")[0].split()[-1]),
                             dynamic="fixed" not in variant)
    check_import(model, tmp_path / "m.onnx", tiny)


def _bn(arrays, name):
    return [arrays[f"{name}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


def test_feature_batchnorm_in_other_exporters_forms(tiny, tmp_path):
    """feature.1 as an explicit Mul and Add, feature.3 folded into feature.2's MatMul (weight and an added
    bias); both become BatchNorms of the documented exact form, listed in ``folded``."""
    model = torch_export(tiny, tmp_path / "t.onnx", 11)
    source = source_arrays(tiny)
    bn1, bn3 = nodes(model, "BatchNormalization")
    expected = dict(source)
    graph = model.graph
    one_minus_eps = np.float32(1.0) - np.float32(BN_EPS)

    # feature.1 -> x * scale + shift
    w, b, mean, var = _bn(source, "feature.1")
    scale = (w / np.sqrt(var + np.float32(BN_EPS))).astype(np.float32)
    shift = (b - mean * scale).astype(np.float32)
    graph.initializer.extend([numpy_helper.from_array(scale, "bn1_scale"),
                              numpy_helper.from_array(shift, "bn1_shift")])
    at = list(graph.node).index(bn1)
    graph.node.remove(bn1)
    graph.node.insert(at, onnx.helper.make_node("Mul", [bn1.input[0], "bn1_scale"], ["bn1_scaled"]))
    graph.node.insert(at + 1, onnx.helper.make_node("Add", ["bn1_scaled", "bn1_shift"], [bn1.output[0]]))
    expected.update({"feature.1.weight": scale, "feature.1.bias": shift,
                     "feature.1.running_mean": np.zeros(64, "f"),
                     "feature.1.running_var": np.full(64, one_minus_eps)})

    # feature.3 folded into feature.2: W' = W * scale, then + shift
    w, b, mean, var = _bn(source, "feature.3")
    scale = (w / np.sqrt(var + np.float32(BN_EPS))).astype(np.float32)
    shift = (b - mean * scale).astype(np.float32)
    matmul = _producer(model, bn3.input[0])
    weight = next(i for i in graph.initializer if i.name == matmul.input[1])
    folded_weight = (numpy_helper.to_array(weight) * scale).astype(np.float32)
    weight.CopyFrom(numpy_helper.from_array(folded_weight, weight.name))
    graph.initializer.append(numpy_helper.from_array(shift, "bn3_shift"))
    at = list(graph.node).index(bn3)
    graph.node.remove(bn3)
    graph.node.insert(at, onnx.helper.make_node("Add", ["bn3_shift", bn3.input[0]], [bn3.output[0]]))
    expected.update({"feature.2.weight": np.ascontiguousarray(folded_weight.T),
                     "feature.3.weight": np.ones(128, "f"), "feature.3.bias": shift,
                     "feature.3.running_mean": np.zeros(128, "f"),
                     "feature.3.running_var": np.full(128, one_minus_eps)})

    check_import(model, tmp_path / "m.onnx", tiny, expected, folded=("feature.1", "feature.3"),
                 unseen=("feature.2",))


def test_feature_batchnorm_between_unsqueeze_and_squeeze_and_a_bias_before_it(tiny, tmp_path):
    """Older exporters run a BatchNorm1d on [N, C] as a BatchNormalization of [N, C, 1]; a bias added before
    a BatchNormalization moves into its running mean."""
    model = torch_export(tiny, tmp_path / "t.onnx", 17)
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), "axes2"))
    for i, bn in enumerate(nodes(model, "BatchNormalization")):
        at = list(graph.node).index(bn)
        source, result = bn.input[0], bn.output[0]
        graph.node.insert(at, onnx.helper.make_node("Unsqueeze", [source, "axes2"], [f"u{i}"]))
        bn.input[0], bn.output[0] = f"u{i}", f"bn{i}"
        graph.node.insert(at + 2, onnx.helper.make_node("Squeeze", [f"bn{i}", "axes2"], [result]))
    bias = np.random.default_rng(4).normal(0.0, 0.1, 128).astype(np.float32)
    matmul = _producer(model, nodes(model, "Unsqueeze")[-1].input[0])
    graph.initializer.append(numpy_helper.from_array(bias, "feature2_bias"))
    graph.node.insert(list(graph.node).index(matmul) + 1,
                      onnx.helper.make_node("Add", ["mm2", "feature2_bias"], [matmul.output[0]]))
    matmul.output[0] = "mm2"
    expected = dict(source_arrays(tiny))
    expected["feature.3.running_mean"] = expected["feature.3.running_mean"] - bias
    check_import(model, tmp_path / "m.onnx", tiny, expected, unseen=("feature.2",))


def _producer(model, tensor):
    return next(n for n in model.graph.node if tensor in n.output)


# -------------------------------------------------------------------------------------------- refusals
def _qkv_of_block_1(model):
    return [n for n in nodes(model, "MatMul") if initializer_shape(model, n.input[1]) == (64, 192)][1]


def initializer_shape(model, name):
    return next((tuple(i.dims) for i in model.graph.initializer if i.name == name), None)


def _replace_qkv(model):
    node = _qkv_of_block_1(model)
    node.op_type = "Mul"
    return node


def _ln_eps(model):
    node = nodes(model, "LayerNormalization")[3]  # blocks.1.norm2
    next(a for a in node.attribute if a.name == "epsilon").f = 1e-6
    return node


def _scale(model):
    qk = [n for n in nodes(model, "Mul") if n.name.endswith("attn/Mul")][0]
    const = _producer(model, qk.input[1])
    const.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array(0.5, np.float32)))
    return qk


def _clip(model):
    clip = nodes(model, "Clip")[1]
    const = _producer(model, clip.input[2])
    const.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array(8.0, np.float32)))
    return clip


@pytest.mark.parametrize("break_graph, message", [
    (_replace_qkv, "blocks.1.attn.qkv: a MatMul by a constant [64, 192]"),
    (_ln_eps, "blocks.1.norm2: LayerNorm epsilon 1e-05, got 1e-06"),
    (_scale, "blocks.0.attn: the scores scaled by 0.25"),
    (_clip, "blocks.1.mlp.act: ReLU6"),
], ids=["qkv replaced", "LayerNorm eps", "attention scale", "not ReLU6"])
def test_a_graph_that_differs_fails_at_the_node_that_differs(tiny, tmp_path, break_graph, message):
    model = torch_export(tiny, tmp_path / "t.onnx", 17)
    node = break_graph(model)
    graph = read_onnx(save(model, tmp_path / "m.onnx"))
    with pytest.raises(GraphMismatch, match="expected " + re.escape(message)) as err:
        walk_vit(graph, graph.input_name)
    assert err.value.node.name == node.name and err.value.index == list(model.graph.node).index(node)
    assert str(err.value).startswith(f"node {node.name!r} ({node.op_type}, #{err.value.index}): expected")
    assert err.value.matched > 0


def test_heads_must_be_those_of_the_registered_vit(tiny, tmp_path):
    """The same weights with 2 heads are another network: refused at the qkv reshape of blocks.0."""
    model = torch_export(tiny, tmp_path / "t.onnx", 17, num_heads=2)
    graph = read_onnx(save(model, tmp_path / "m.onnx"))
    with pytest.raises(GraphMismatch, match="expected 4 attention heads .* got 2") as err:
        walk_vit(graph, graph.input_name)
    assert err.value.node.name == "/blocks.0/attn/Reshape"


def test_layer_norm_epsilon_is_the_models():
    from paddle_models.vit import LN_EPS as PADDLE_LN_EPS

    reference = torch_model("vit_t", source_arrays("vit_t"))
    norms = [m for m in reference.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 25 and {m.eps for m in norms} == {LN_EPS} and PADDLE_LN_EPS == LN_EPS
