"""Reading InsightFace recognition ONNX graphs onto InsightFace-named weights, by the graph's structure.

    imported = import_onnx("w600k_r50.onnx")      # ImportedGraph: arch, arrays (InsightFace's state_dict), ...

Initializer names and order mean nothing here (model-pack files name most weights with numbers): a walker
follows the forward pass from the input node by node, checks that each node computes what the architecture's
next module computes, and names the node's weights after that module (``layer1.0.conv1.weight``). A family's
walker raises ``GraphMismatch`` at the first node that differs; the importer tries every family's walker,
then recognises the registered architecture from the walked arrays' shapes (``converters.arch.detect_arch``),
as it does for a PyTorch checkpoint.

Folded BatchNorms. PyTorch's ONNX exporter folds an eval-mode BatchNorm into the convolution before it (weight
W', bias b'). Such a BatchNorm is represented exactly in the unfolded structure: the convolution gets W' and
the BatchNorm weight 1, bias b', running_mean 0 and running_var 1 - eps, so that
``(x - 0) / sqrt(var + eps) * 1 + b' = x + b'``; its name is listed in ``folded``. A convolution without
bias followed by a BatchNormalization node (Paddle's exports, older PyTorch ones) maps both directly; a bias
before a BatchNormalization is moved into its running_mean (``BN(x + b)`` with mean m is ``BN(x)`` with mean
``m - b``). The same holds for the embedding's BatchNorm1d after the last linear layer.

Normalisation inside the graph (MXNet-era graphs start with Sub and Mul by constants) is recognised and
recorded: the imported model expects its input normalised that way.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from architectures import family_of

from .arch import ArchInfo, detect_arch, resolve_arch
from .errors import UserError
from .mapping import layout
from .onnx_graph import FLOAT_TYPES, GraphMismatch, OnnxGraph, Walk, read_onnx

# Every BatchNorm of torch_reference's iresnet and MobileFaceNet uses eps 1e-5 (PyTorch's default); an ONNX
# BatchNormalization stores it as a float32 attribute (9.99999974737875e-06), hence the relative tolerance.
BN_EPS = 1e-5
EPS_RTOL = 1e-4
FOLDED_VAR = np.float32(1.0 - BN_EPS)  # var + eps = 1: the folded BatchNorm passes its input unchanged

# nodes that compute a Reshape's target shape from the runtime batch size (older exporters' flatten)
SHAPE_OPS = ("Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Constant", "Slice", "Cast", "Identity", "Mul",
             "Div", "ReduceProd")


@dataclass
class ImportedGraph:
    """An ONNX recognition graph read onto a registered architecture."""

    arch: ArchInfo
    arrays: OrderedDict[str, np.ndarray]  # exactly the PyTorch reference's state_dict: names, order, dtypes
    folded: list[str]
    stages: list[tuple[str, str]]
    normalisation: dict[str, Any] | None  # {"mean", "std", "nodes"}: the graph computes (x - mean) / std
    input_name: str
    batch: int | str  # the input's declared dimension 0
    opset: int
    producer: str  # producer_name and producer_version
    start: str  # the tensor after the normalisation nodes (the input when there are none)
    output_name: str = ""
    family: str = ""
    graph: OnnxGraph | None = field(default=None, repr=False)  # the parsed model, external data included


# ----------------------------------------------------------------------------------------- shared steps
class _Walker:
    """The steps the convolutional families share. Each reads one module from the graph, stores its weights
    under the module's name and returns the tensor after it; any difference raises ``GraphMismatch``."""

    def __init__(self, graph: OnnxGraph, family: str):
        self.g = graph
        self.family = family
        self.arrays: OrderedDict[str, np.ndarray] = OrderedDict()
        self.folded: list[str] = []
        self.stages: list[tuple[str, str]] = []
        self.matched: set[int] = set()

    # bookkeeping
    def fail(self, node: Any, message: str) -> GraphMismatch:
        return GraphMismatch(node, message, matched=len(self.matched))

    def mark(self, node: Any) -> str:
        """Count ``node`` as matched; its (first) output."""
        if not node.output or not node.output[0]:
            raise self.fail(node, f"expected {node.op_type} to have an output")
        self.matched.add(self.g.index(node))
        return node.output[0]

    def put(self, key: str, value: np.ndarray) -> None:
        assert key not in self.arrays, f"{key} read twice"
        self.arrays[key] = np.ascontiguousarray(value, dtype=np.float32)

    def stage(self, module: str, tensor: str) -> None:
        self.stages.append((module, tensor))

    def walk(self) -> Walk:
        return Walk(self.family, self.arrays, self.folded, self.stages, len(self.matched))

    # attributes, type-checked (a damaged file can give any attribute any type)
    def attr(self, node: Any, name: str, default: Any, kind: type) -> Any:
        value = self.g.attr(node, name, default)
        if kind is list:
            ok = isinstance(value, list) and all(isinstance(v, int) for v in value)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind) and not isinstance(value, bool)
        if not ok:
            raise self.fail(node, f"attribute {name} is {type(value).__name__}, expected {kind.__name__}")
        return value

    # graph reading
    def users(self, tensor: str) -> list[Any]:
        """The nodes computing with ``tensor``'s values: Shape nodes (which read only its shape, for a
        Reshape's target that ``flatten`` checks) and pass-through nodes left out."""
        return [u for u in self.g.real_consumers(tensor) if u.op_type != "Shape"]

    def follow(self, tensor: str, ops: tuple[str, ...], what: str) -> Any:
        """The one node computing with ``tensor``, of a type in ``ops``."""
        candidates = self.users(tensor)
        found = [u for u in candidates if u.op_type in ops]
        if len(found) == 1 and len(candidates) == 1:
            return found[0]
        odd = [u for u in candidates if u.op_type not in ops] + found[1:]
        if odd:
            raise self.fail(odd[0], f"expected {what}")
        node = self.g.producer(self.g.source(tensor))
        ending = "the graph ends here" if self.g.is_output(tensor) else "nothing uses its output"
        raise self.fail(node, f"expected {what} next, but {ending}")

    def reads(self, node: Any, tensor: str, what: str) -> None:
        if not node.input or self.g.source(node.input[0]) != self.g.source(tensor):
            raise self.fail(node, f"expected {what} to read {tensor!r} as its first input")

    def weight(self, node: Any, i: int, what: str, ndim: int | None = None, optional: bool = False
               ) -> np.ndarray | None:
        name = node.input[i] if len(node.input) > i else ""
        if not name:
            if optional:
                return None
            raise self.fail(node, f"expected {what} as input {i}")
        value = self.g.constant(name)
        producer = self.g.producer(name)
        if value is None and producer is not None and producer.op_type == "Transpose":  # a weight stored [out, in]
            value = self.g.constant(producer.input[0])
            perm = self.g.attr(producer, "perm", None)
            if value is not None and value.ndim == 2 and perm in (None, [1, 0]):
                value = value.T
                self.mark(producer)
        if value is None or value.dtype != np.float32:
            raise self.fail(node, f"expected {what} to be a float constant, but {name!r} is computed at run time"
                            if value is None else f"expected {what} to be float, but {name!r} is {value.dtype}")
        if ndim is not None and value.ndim != ndim:
            raise self.fail(node, f"expected {what} of {ndim} dimensions, found shape {list(value.shape)}")
        return value

    def vector(self, node: Any, i: int, what: str, size: int, optional: bool = False) -> np.ndarray | None:
        value = self.weight(node, i, what, optional=optional)
        if value is None:
            return None
        if value.size != size or max(value.shape, default=1) != value.size:
            raise self.fail(node, f"expected {what} of {size} values, found shape {list(value.shape)}")
        return value.reshape(size)

    # modules
    def put_bn(self, name: str, weight: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray) -> None:
        for key, value in (("weight", weight), ("bias", bias), ("running_mean", mean), ("running_var", var)):
            self.put(f"{name}.{key}", value)
        self.arrays[f"{name}.num_batches_tracked"] = np.array(0, dtype=np.int64)

    def put_folded_bn(self, name: str, bias: np.ndarray | None, c: int) -> None:
        shift = np.zeros(c, np.float32) if bias is None else bias
        self.put_bn(name, np.ones(c, np.float32), shift, np.zeros(c, np.float32), np.full(c, FOLDED_VAR))
        self.folded.append(name)

    def bn(self, node: Any, name: str, x: str, c: int | None, bias_before: np.ndarray | None = None) -> str:
        """A BatchNormalization node as the BatchNorm ``name`` (a bias added right before it moves into its mean)."""
        what = f"BatchNormalization ({name})"
        if node.op_type != "BatchNormalization":
            raise self.fail(node, f"expected {what}")
        self.reads(node, x, what)
        eps = float(self.attr(node, "epsilon", 1e-5, float))
        if abs(eps - BN_EPS) > EPS_RTOL * BN_EPS:
            raise self.fail(node, f"epsilon {eps:.6g}, but {name} of InsightFace's {self.family} uses {BN_EPS:g}")
        if self.attr(node, "training_mode", 0, int) or not self.attr(node, "spatial", 1, int):
            raise self.fail(node, f"expected {what} in inference mode over channels")
        extra = [t for t in node.output[1:] if t and self.g.real_consumers(t)]
        if extra:
            raise self.fail(node, f"expected {what} whose batch statistics nothing uses ({extra[0]!r} is used)")
        size = c if c is not None else self._channels(node)
        scale, shift, mean, var = (self.vector(node, i, f"{name} {k}", size)
                                   for i, k in enumerate(("scale", "bias", "mean", "variance"), start=1))
        if bias_before is not None:
            mean = mean - bias_before
        self.put_bn(name, scale, shift, mean, var)
        out = self.mark(node)
        self.stage(name, out)
        return out

    def _channels(self, node: Any) -> int:
        value = self.weight(node, 1, "a BatchNorm scale")
        return int(value.size)

    def conv_bn(self, x: str, conv: str, bn: str, c_in: int, node: Any = None) -> tuple[str, int]:
        """Conv ``conv`` then BatchNorm ``bn``: a Conv and a BatchNormalization, or one Conv with BN folded."""
        what = f"Conv ({conv})"
        node = node if node is not None else self.follow(x, ("Conv",), what)
        if node.op_type != "Conv":
            raise self.fail(node, f"expected {what}")
        self.reads(node, x, what)
        w = self.weight(node, 1, f"{conv} weight", ndim=4)
        c = int(w.shape[0])
        b = self.vector(node, 2, f"{conv} bias", c, optional=True)
        group = self.attr(node, "group", 1, int)
        if group * w.shape[1] != c_in:
            raise self.fail(node, f"expected {what} over {c_in} input channels, found weight {list(w.shape)} in "
                            f"{group} groups")
        if self.attr(node, "auto_pad", "NOTSET", str) not in ("NOTSET", "") or \
                any(d != 1 for d in self.attr(node, "dilations", [1], list)):
            raise self.fail(node, f"expected {what} with explicit padding and no dilation")
        y = self.mark(node)
        self.put(f"{conv}.weight", w)
        users = self.users(y)
        if len(users) == 1 and users[0].op_type == "BatchNormalization":
            if b is None:
                self.stage(conv, y)
            return self.bn(users[0], bn, y, c, bias_before=b), c
        self.put_folded_bn(bn, b, c)
        self.stage(bn, y)
        return y, c

    def prelu(self, x: str, name: str, c: int) -> str:
        what = f"PRelu ({name})"
        node = self.follow(x, ("PRelu",), what)
        self.reads(node, x, what)
        slope = self.weight(node, 1, f"{name} slope")
        if slope.size == 1:
            slope = np.full(c, slope.reshape(()), np.float32)
        elif slope.shape not in ((c,), (c, 1, 1), (1, c, 1, 1), (1, c)):
            raise self.fail(node, f"expected a slope per channel for {name} ({c}), found shape {list(slope.shape)}")
        self.put(f"{name}.weight", slope.reshape(c))
        out = self.mark(node)
        self.stage(name, out)
        return out

    def add(self, y: str, shortcut: str, block: str) -> str:
        what = f"the residual Add of {block}"
        node = self.follow(y, ("Add",), what)
        sources = sorted(self.g.source(t) for t in node.input)
        if len(node.input) != 2 or sources != sorted((self.g.source(y), self.g.source(shortcut))):
            raise self.fail(node, f"expected {what} to add its shortcut {shortcut!r}")
        out = self.mark(node)
        self.stage(block, out)
        return out

    def flatten(self, x: str, before: str) -> str:
        what = f"Flatten before {before}"
        node = self.follow(x, ("Flatten", "Reshape"), what)
        self.reads(node, x, what)
        if node.op_type == "Flatten":
            if self.attr(node, "axis", 1, int) != 1:
                raise self.fail(node, f"expected {what} from axis 1")
        else:
            shape = self.g.constant(node.input[1]) if len(node.input) > 1 else None
            if shape is None:
                self._shape_computation(node, node.input[1] if len(node.input) > 1 else "", what)
            elif shape.shape != (2,) or shape[1] < -1 or shape[0] < -1:
                raise self.fail(node, f"expected {what}: a Reshape to [N, -1], found {shape.tolist()}")
        return self.mark(node)

    def _shape_computation(self, node: Any, tensor: str, what: str) -> None:
        """A Reshape target computed at run time: only shape arithmetic (``SHAPE_OPS``) may produce it."""
        pending, seen = [tensor], set()
        while pending:
            t = pending.pop()
            producer = self.g.producer(t)
            if not t or t in seen or producer is None:
                if t and producer is None and self.g.constant(t) is None:
                    raise self.fail(node, f"expected {what}, but its shape depends on {t!r}")
                seen.add(t)
                continue
            seen.add(t)
            if producer.op_type not in SHAPE_OPS:
                raise self.fail(producer, f"expected only shape arithmetic for the shape of {what}")
            self.mark(producer)
            if producer.op_type != "Shape":
                pending.extend(producer.input)

    def linear(self, x: str, name: str) -> tuple[str, np.ndarray, np.ndarray | None]:
        """Linear ``name``: Gemm, or MatMul with an optional Add; (output, weight [out, in], bias or None)."""
        what = f"Gemm or MatMul ({name})"
        node = self.follow(x, ("Gemm", "MatMul"), what)
        self.reads(node, x, what)
        w = self.weight(node, 1, f"{name} weight", ndim=2)
        if node.op_type == "Gemm":
            if self.attr(node, "transA", 0, int) or self.attr(node, "alpha", 1.0, float) != 1.0 or \
                    self.attr(node, "beta", 1.0, float) != 1.0:
                raise self.fail(node, f"expected {what} computing x W^T + b (transA 0, alpha 1, beta 1)")
            w = w if self.attr(node, "transB", 0, int) else w.T
            b = self.vector(node, 2, f"{name} bias", w.shape[0], optional=True)
            return self.mark(node), w, b
        w = w.T  # MatMul multiplies by [in, out]
        out = self.mark(node)
        users = self.users(out)
        if len(users) == 1 and users[0].op_type == "Add":
            add = users[0]
            other = [t for t in add.input if self.g.source(t) != self.g.source(out)]
            value = self.g.constant(other[0]) if len(other) == 1 else None
            if value is not None and value.size == w.shape[0] and max(value.shape, default=1) == value.size:
                return self.mark(add), w, value.reshape(-1)
        return out, w, None

    def bn1d(self, x: str, name: str, c: int, bias_before: np.ndarray | None) -> str | None:
        """The BatchNorm1d after the last linear layer: a BatchNormalization on [N, C] (or between Unsqueeze
        and Squeeze), or a Mul and Add by constants [C] (a simplifier's form: weight and bias of a BatchNorm
        with mean 0 and variance 1 - eps, listed as folded); None when the graph ends at ``x`` (an exporter
        folded it into the linear layer)."""
        users = self.users(x)
        if not users and self.g.is_output(x):
            return None
        what = f"BatchNormalization ({name})"
        node = self.follow(x, ("BatchNormalization", "Unsqueeze", "Reshape", "Mul"), what)
        if node.op_type == "BatchNormalization":
            return self.bn(node, name, x, c, bias_before)
        if node.op_type == "Mul":
            return self._scale_shift(node, name, x, c, bias_before)
        self.reads(node, x, f"{node.op_type} before {what}")
        y = self.mark(node)
        y = self.bn(self.follow(y, ("BatchNormalization",), what), name, y, c, bias_before)
        after = self.follow(y, ("Squeeze", "Reshape", "Flatten"), f"Squeeze after {what}")
        self.reads(after, y, f"Squeeze after {what}")
        out = self.mark(after)
        self.stages[-1] = (name, out)  # the module's output is [N, C] again
        return out

    def _scale_shift(self, mul: Any, name: str, x: str, c: int, bias_before: np.ndarray | None) -> str:
        """BatchNorm ``name`` computed as x * scale (+ shift): Mul and an optional Add by constants [C]."""
        def constant_operand(node: Any, tensor: str) -> np.ndarray:
            other = [t for t in node.input if self.g.source(t) != self.g.source(tensor)]
            if len(node.input) != 2 or len(other) != 1:
                raise self.fail(node, f"expected {node.op_type} of {tensor!r} by a constant ({name})")
            return self.vector(node, list(node.input).index(other[0]), f"{name} {node.op_type} operand", c)

        scale = constant_operand(mul, x)
        out = self.mark(mul)
        shift = np.zeros(c, np.float32)
        users = self.users(out)
        if len(users) == 1 and users[0].op_type == "Add":
            shift = constant_operand(users[0], out)
            out = self.mark(users[0])
        if bias_before is not None:
            shift = shift + scale * bias_before
        self.put_bn(name, scale, shift, np.zeros(c, np.float32), np.full(c, FOLDED_VAR))
        self.folded.append(name)
        self.stage(name, out)
        return out

    def embedding(self, x: str, name: str) -> str:
        """Check that ``x``, the output of module ``name``, is the graph's output."""
        if not self.g.is_output(x):
            users = self.users(x)
            raise self.fail(users[0] if users else self.g.producer(x),
                            f"expected the embedding ({name}) to be the graph's output")
        return x


# ------------------------------------------------------------------------------------------------ iresnet
def walk_iresnet(graph: OnnxGraph, start: str) -> Walk:
    """InsightFace's iresnet from ``start``: conv1/bn1, prelu, residual blocks in four stages (each stage's
    first block downsamples its shortcut), bn2, flatten, fc, features."""
    w = _Walker(graph, "iresnet")
    x, c = w.conv_bn(start, "conv1", "bn1", 3)
    x = w.prelu(x, "prelu", c)
    stage, block = 0, 0
    while True:
        users = w.users(x)
        if len(users) < 2:
            break
        norms = [u for u in users if u.op_type == "BatchNormalization"]
        others = [u for u in users if u.op_type != "BatchNormalization"]
        if len(users) != 2 or len(norms) != 1 or others[0].op_type not in ("Add", "Conv"):
            odd = next((u for u in users if u.op_type not in ("BatchNormalization", "Add", "Conv")), users[-1])
            raise w.fail(odd, f"expected a residual block after {x!r}: BatchNormalization (bn1) and a shortcut "
                         "(Add, or a downsampling Conv)")
        downsample = others[0] if others[0].op_type == "Conv" else None
        if downsample is not None:
            stage, block = stage + 1, 0
            if stage > 4:
                raise w.fail(downsample, "expected four stages, found a fifth downsampling block")
        elif stage == 0:
            raise w.fail(others[0], "expected the first block of layer1 to downsample its shortcut (a Conv)")
        x, c = _ibasic_block(w, x, c, f"layer{stage}.{block}", norms[0], downsample)
        block += 1
    if stage != 4:
        raise w.fail(users[0] if users else graph.producer(x), f"expected four stages (layer1 ... layer4), "
                     f"found {stage}")
    x = w.bn(w.follow(x, ("BatchNormalization",), "BatchNormalization (bn2)"), "bn2", x, c)
    x = w.flatten(x, "fc")
    x, weight, bias = w.linear(x, "fc")
    out_features = weight.shape[0]
    w.put("fc.weight", weight)
    w.put("fc.bias", np.zeros(out_features, np.float32) if bias is None else bias)
    y = w.bn1d(x, "features", out_features, None)
    if y is None:  # features folded into fc: fc's bias already holds its shift
        w.put_folded_bn("features", None, out_features)
        w.stage("features", x)
        y = x
    else:
        w.stages.insert(len(w.stages) - 1, ("fc", x))
    w.embedding(y, "features")
    return w.walk()


def _ibasic_block(w: _Walker, x: str, c_in: int, p: str, bn1: Any, downsample: Any) -> tuple[str, int]:
    """bn1 -> conv1/bn2 -> prelu -> conv2/bn3, plus x or downsample(x)."""
    y = w.bn(bn1, f"{p}.bn1", x, c_in)
    y, c = w.conv_bn(y, f"{p}.conv1", f"{p}.bn2", c_in)
    y = w.prelu(y, f"{p}.prelu", c)
    y, c = w.conv_bn(y, f"{p}.conv2", f"{p}.bn3", c)
    shortcut = x
    if downsample is not None:
        shortcut, _ = w.conv_bn(x, f"{p}.downsample.0", f"{p}.downsample.1", c_in, node=downsample)
        w.stage(f"{p}.downsample", shortcut)
    return w.add(y, shortcut, p), c


# ------------------------------------------------------------------------------------------ MobileFaceNet
def walk_mobilefacenet(graph: OnnxGraph, start: str) -> Walk:
    """InsightFace's MobileFaceNet from ``start``: layers.0 ConvBlock, layers.1 ConvBlock or Residual, three
    DepthWise + Residual pairs, conv_sep, then features: 7x7 depthwise LinearBlock, flatten, Linear without
    bias, BatchNorm1d."""
    w = _Walker(graph, "mobilefacenet")
    x, c = _conv_block(w, start, "layers.0", 3)
    if len(w.users(x)) > 1:
        x = _residual(w, x, "layers.1", c)
    else:
        x, c = _conv_block(w, x, "layers.1", c)
    for i in (2, 4, 6):
        x, c = _depthwise(w, x, f"layers.{i}", c, residual=False)
        x = _residual(w, x, f"layers.{i + 1}", c)
    x, c = _conv_block(w, x, "conv_sep", c)
    x, c = w.conv_bn(x, "features.layers.0.layers.0", "features.layers.0.layers.1", c)
    w.stage("features.layers.0", x)
    x = w.flatten(x, "features.layers.2")
    x, weight, bias = w.linear(x, "features.layers.2")
    w.put("features.layers.2.weight", weight)
    out_features = weight.shape[0]
    y = w.bn1d(x, "features.layers.3", out_features, bias)
    if y is None:  # BatchNorm1d folded into the linear layer, whose bias is its shift
        w.put_folded_bn("features.layers.3", bias, out_features)
        w.stage("features.layers.3", x)
        y = x
    elif bias is None:
        w.stages.insert(len(w.stages) - 1, ("features.layers.2", x))
    w.stage("features", y)
    w.embedding(y, "features")
    return w.walk()


def _conv_block(w: _Walker, x: str, p: str, c_in: int, node: Any = None) -> tuple[str, int]:
    """ConvBlock: Conv (layers.0), BatchNorm (layers.1), PReLU (layers.2)."""
    y, c = w.conv_bn(x, f"{p}.layers.0", f"{p}.layers.1", c_in, node)
    y = w.prelu(y, f"{p}.layers.2", c)
    w.stage(p, y)
    return y, c


def _depthwise(w: _Walker, x: str, p: str, c_in: int, residual: bool, node: Any = None) -> tuple[str, int]:
    """DepthWise: 1x1 ConvBlock, kxk depthwise ConvBlock, 1x1 LinearBlock, plus x when residual."""
    y, c = _conv_block(w, x, f"{p}.layers.0", c_in, node)
    y, c = _conv_block(w, y, f"{p}.layers.1", c)
    y, c = w.conv_bn(y, f"{p}.layers.2.layers.0", f"{p}.layers.2.layers.1", c)
    w.stage(f"{p}.layers.2", y)
    if residual:
        return w.add(y, x, p), c
    w.stage(p, y)
    return y, c


def _residual(w: _Walker, x: str, p: str, c: int) -> str:
    """Residual: DepthWise units with a shortcut, as many as the graph has (at least one)."""
    count = 0
    while True:
        users = w.users(x)
        if count and len(users) < 2:
            break
        if sorted(u.op_type for u in users) != ["Add", "Conv"]:
            odd = next((u for u in users if u.op_type not in ("Add", "Conv")), None)
            raise w.fail(odd or (users[0] if users else w.g.producer(x)),
                         f"expected a residual unit ({p}.layers.{count}): a Conv and the Add of its shortcut "
                         f"reading {x!r}")
        conv = next(u for u in users if u.op_type == "Conv")
        x, _ = _depthwise(w, x, f"{p}.layers.{count}", c, residual=True, node=conv)
        count += 1
    w.stage(p, x)
    return x


# ------------------------------------------------------------------------------------------------ import
WALKERS: dict[str, Callable[[OnnxGraph, str], Walk]] = {
    "iresnet": walk_iresnet,
    "mobilefacenet": walk_mobilefacenet,
}


def walkers() -> dict[str, Callable[[OnnxGraph, str], Walk]]:
    """``WALKERS``, with the ViT's (``converters.onnx_vit``) registered on first use when that module exists."""
    if "vit" not in WALKERS:
        try:
            from .onnx_vit import walk_vit
        except ModuleNotFoundError as err:
            if err.name != f"{__package__}.onnx_vit":
                raise
        else:
            WALKERS["vit"] = walk_vit
    return WALKERS


def strip_normalisation(graph: OnnxGraph) -> tuple[str, dict[str, Any] | None]:
    """Sub, Add, Mul and Div nodes by constants (one value or one per RGB channel) at the start of the graph:
    (the tensor after them, {"mean", "std", "nodes"} such that they compute (x - mean) / std, or None)."""
    tensor = graph.input_name
    scale, shift = np.ones(3), np.zeros(3)  # the prefix computes scale * x + shift
    nodes: list[str] = []
    while True:
        users = [u for u in graph.real_consumers(tensor) if u.op_type != "Shape"]
        if len(users) != 1 or users[0].op_type not in ("Sub", "Add", "Mul", "Div") or len(users[0].input) != 2:
            break
        node = users[0]
        if not node.output or not node.output[0]:
            break
        sources = [graph.source(t) for t in node.input]
        if sources.count(graph.source(tensor)) != 1:
            break
        position = sources.index(graph.source(tensor))
        if node.op_type in ("Sub", "Div") and position != 0:
            break  # c - x or c / x: not a normalisation
        other = node.input[1 - position]
        kind = graph.constant_type(other)
        if kind is None or kind[0] not in FLOAT_TYPES or not _per_channel_shape(kind[1]):
            break
        value = np.broadcast_to(graph.constant(other).astype(np.float64).reshape(-1), (3,))
        if node.op_type in ("Mul", "Div") and not np.all(value != 0):
            break
        if node.op_type == "Sub":
            shift = shift - value
        elif node.op_type == "Add":
            shift = shift + value
        elif node.op_type == "Mul":
            scale, shift = scale * value, shift * value
        else:
            scale, shift = scale / value, shift / value
        nodes.append(node.name or f"#{graph.index(node)}")
        tensor = node.output[0]
    if not nodes:
        return tensor, None
    std, mean = 1.0 / scale, -shift / scale

    def plain(v: np.ndarray) -> float | list[float]:
        return float(v[0]) if np.all(v == v[0]) else [float(e) for e in v]

    return tensor, {"mean": plain(mean), "std": plain(std), "nodes": nodes}


def _per_channel_shape(shape: tuple[int, ...]) -> bool:
    size = int(np.prod(shape)) if shape else 1
    return size == 1 and len(shape) <= 4 or shape in ((3, 1, 1), (1, 3, 1, 1))


def check_weights_used(graph: OnnxGraph, family: str) -> None:
    """Every float constant that a live node reads must have been read by the walk (``graph.used``): one that
    was not is something the walk did not understand."""
    for node in graph.nodes:
        if not graph.is_live(node) or graph.is_pass_through(node):
            continue
        for tensor in node.input:
            name = graph.constant_name(tensor) if tensor else None
            if name is None or name in graph.used:
                continue
            kind = graph.constant_type(name)
            if kind is not None and kind[0] in FLOAT_TYPES:
                raise GraphMismatch(node, f"reads the weight {name!r} {list(kind[1])}, which the {family} "
                                    "walk did not map to any module")


def _failure(failures: list[tuple[str, GraphMismatch]], arch: str | None,
             graph: OnnxGraph | None = None) -> tuple[str, GraphMismatch]:
    """The failure to report: the family the user named, else the walk that got furthest."""
    if arch is not None:
        try:
            wanted = family_of(arch)
        except ValueError:
            wanted = None
        for family, err in failures:
            if family == wanted:
                return family, err
    def progress(err: GraphMismatch) -> int:  # computing nodes before the failure when the walker did not count
        if err.matched or graph is None or err.index is None:
            return err.matched
        return sum(n.op_type not in ("Constant", "Identity") for n in graph.nodes[:err.index])

    return max(failures, key=lambda f: progress(f[1]))


def import_onnx(path: str | Path, arch: str | None = None) -> ImportedGraph:
    """Read ``path`` onto the registered architecture it computes (checked against ``arch`` when given).

    Raises ``UserError`` with one line: for a file that is not a readable float ONNX image model, a graph
    with more than one output, the first node where the graph differs from every family (as reported for
    the family it follows furthest), or weights that fit no registered architecture (the nearest one and
    its first differing key)."""
    graph = read_onnx(path)
    if len(graph.output_names) != 1:
        shown = ", ".join(repr(n) for n in graph.output_names[:4]) + (", ..." if len(graph.output_names) > 4 else "")
        raise UserError(path, f"{len(graph.output_names)} graph outputs ({shown}); a recognition model has one, "
                        "the embedding (is it a detection or landmark model?)")
    start, normalisation = strip_normalisation(graph)
    prefix_used = set(graph.used)
    failures: list[tuple[str, GraphMismatch]] = []
    walk = None
    for family, walker in walkers().items():
        graph.used = set(prefix_used)
        try:
            walk = walker(graph, start)
            check_weights_used(graph, family)
            break
        except GraphMismatch as err:
            if err.matched == 0 and walk is not None:
                err.matched = walk.matched
            failures.append((family, err))
            walk = None
    if walk is None:
        family, err = _failure(failures, arch, graph)
        raise UserError(path, f"{err} (read as {family}, the family it follows furthest)")
    shapes = {k: tuple(v.shape) for k, v in walk.arrays.items()}
    detected = detect_arch(shapes, path)
    info = resolve_arch(arch, detected, path)
    arrays = OrderedDict()
    for entry in layout(info.name, info.num_features):
        value = walk.arrays[entry.torch_key]
        arrays[entry.torch_key] = value.astype(np.int64) if entry.torch_dtype == "int64" else value
    model = graph.model
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p)
    return ImportedGraph(info, arrays, list(walk.folded), list(walk.stages), normalisation, graph.input_name,
                         graph.input_shape[0], graph.opset, producer, start, graph.output_names[0],
                         walk.family, graph)


__all__ = ["BN_EPS", "WALKERS", "GraphMismatch", "ImportedGraph", "Walk", "check_weights_used", "import_onnx",
           "strip_normalisation", "walk_iresnet", "walk_mobilefacenet", "walkers"]
