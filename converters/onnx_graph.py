"""Reading a user's ``.onnx`` file safely, and looking around its graph: producers, consumers, constants.

    graph = read_onnx(path)          # OnnxGraph, or UserError with one line naming the file
    graph.consumers(tensor), graph.producer(tensor), graph.constant(tensor)

Reading never runs code from the file and never follows it outside its folder: the protobuf is parsed
with the weights kept in it or, for weights stored as external data, each external file is resolved inside
the model's folder only (no absolute path, no ``..``), checked against its size and read into the model.
A file that is not ONNX, truncated, quantized, whose nodes use tensors nothing defines (or defines later,
which is how a cycle would show), or that has not exactly one image input ``[N, 3, H, W]`` is refused with
one line. ``onnx.checker`` is not run: the checks here are the ones the importer depends on, and they cost
one pass over the nodes.

Walkers (``converters.onnx_import``) follow the forward pass node by node and raise ``GraphMismatch`` at the
first node that differs from what the architecture computes. Identity, eval-mode Dropout and Cast to
float32 compute nothing: ``real_consumers``, ``source`` and ``skip_forward`` look through them.
"""

from __future__ import annotations

import math
import os
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .errors import UserError, reading

PROTOBUF_LIMIT = 2**31 - 1  # protobuf cannot parse a message of 2 GiB or more

# onnx.TensorProto data types (numbers from onnx.proto, so that this module imports onnx lazily)
FLOAT, UINT8, INT8, FLOAT16, DOUBLE, BFLOAT16 = 1, 2, 3, 10, 11, 16
FLOAT_TYPES = (FLOAT, FLOAT16, DOUBLE, BFLOAT16)
# 8-bit integers, 4-bit, 2-bit and 8-/6-/4-bit floats: the weight types of quantized graphs
QUANTIZED_TYPES = {UINT8: "uint8", INT8: "int8", 17: "float8e4m3fn", 18: "float8e4m3fnuz", 19: "float8e5m2",
                   20: "float8e5m2fnuz", 21: "uint4", 22: "int4", 23: "float4e2m1", 24: "float8e8m0",
                   25: "uint2", 26: "int2", 27: "float6e2m3", 28: "float6e3m2"}
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                 "ConvInteger", "MatMulInteger", "QGemm", "QAttention", "DynamicQuantizeMatMul",
                 "MatMulIntegerToFloat", "MatMulNBits", "DynamicQuantizeLSTM"}

RESHAPING = ("Reshape", "Unsqueeze", "Squeeze", "Flatten", "Transpose")  # ops that only rearrange a value

_GRAPHS: weakref.WeakSet[OnnxGraph] = weakref.WeakSet()  # live graphs, to locate a GraphMismatch's node


def _label(node: Any, index: int | None) -> str:
    where = "#?" if index is None else f"#{index}"
    if node is None:
        return "the graph"
    if node.name:
        return f"node {node.name!r} ({node.op_type}, {where})"
    return f"node {where} ({node.op_type})"


class GraphMismatch(Exception):
    """A graph differs from what an architecture computes, first at ``node`` (a NodeProto of an OnnxGraph).

    ``str(e)`` is ``node 'Conv_12' (Conv, #12): expected PRelu after the stem convolution`` (a node without a
    name shows as ``node #12 (Conv)``). ``matched`` is how many nodes the walk had matched before it (0 when
    the raiser does not say); the importer reports the failure of the walk that got furthest."""

    def __init__(self, node: Any, message: str, matched: int = 0):
        self.node = node
        self.message = message
        self.matched = matched
        self.index = _locate(node)
        super().__init__(f"{_label(node, self.index)}: {message}")


@dataclass
class Walk:
    """What a family's walker (``converters.onnx_import.WALKERS``) read from a graph: weights in InsightFace's
    PyTorch names and layouts, and where each module's output is. Defined here, beside the graph it walks,
    so that walkers in other modules need not import the importer that calls them."""

    family: str
    arrays: OrderedDict[str, np.ndarray]  # float32 (num_batches_tracked: int64 scalar 0)
    folded: list[str]  # BatchNorm modules reconstructed from a folded convolution or linear layer
    stages: list[tuple[str, str]]  # (module name, ONNX tensor equal to its eval-mode output), forward order
    matched: int  # nodes matched


def _locate(node: Any) -> int | None:
    if node is None:
        return None
    for graph in list(_GRAPHS):
        i = graph._index.get(id(node))
        if i is not None and graph.nodes[i] is node:
            return i
    return None


def _attr(node: Any, name: str, default: Any = None) -> Any:
    """Attribute ``name`` of ``node`` as a Python value (bytes decoded), or ``default``."""
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode(errors="replace") if isinstance(value, bytes) else value
    return default


class OnnxGraph:
    """An ONNX model's main graph with its tensors indexed (built by ``read_onnx``; weights in ``model``)."""

    def __init__(self, path: str | Path, model: Any):
        self.path = Path(path)
        self.model = model
        graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.nodes: list[Any] = list(graph.node)
        self._index = {id(n): i for i, n in enumerate(self.nodes)}
        self.initializers: dict[str, Any] = {t.name: t for t in graph.initializer}
        self._producer: dict[str, Any] = {}
        self._consumers: dict[str, list[Any]] = {}
        for node in self.nodes:
            for name in node.output:
                if name:
                    self._producer[name] = node
            for name in dict.fromkeys(node.input):
                if name:
                    self._consumers.setdefault(name, []).append(node)
        self.inputs = [v for v in graph.input if v.name not in self.initializers]
        self.input_name = self.inputs[0].name if self.inputs else ""
        self.input_shape: list[int | str] = _dims(self.inputs[0]) if self.inputs else []
        self.output_names = [v.name for v in graph.output]
        self._live = self._live_nodes()
        self.used: set[str] = set()  # constants read through ``constant`` (initializer or Constant output)
        _GRAPHS.add(self)

    # ----------------------------------------------------------------------------------------- lookups
    def index(self, node: Any) -> int:
        """Position of ``node`` in ``nodes``."""
        i = self._index.get(id(node))
        if i is None or self.nodes[i] is not node:
            raise ValueError(f"{node.op_type} node {node.name!r} is not a node of this graph")
        return i

    def producer(self, tensor: str) -> Any | None:
        """The node computing ``tensor``; None for inputs, initializers and unknown names."""
        return self._producer.get(tensor)

    def consumers(self, tensor: str) -> list[Any]:
        """Every node reading ``tensor``, in node order."""
        return list(self._consumers.get(tensor, ()))

    def is_live(self, node: Any) -> bool:
        """Whether a graph output depends on ``node``."""
        return self.index(node) in self._live

    def node_label(self, node: Any) -> str:
        """``node 'Conv_12' (Conv, #12)``, or ``node #12 (Conv)`` for a node without a name."""
        return _label(node, None if node is None else self.index(node))

    def _live_nodes(self) -> set[int]:
        live: set[int] = set()
        pending = list(self.output_names)
        seen: set[str] = set()
        while pending:
            tensor = pending.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            node = self._producer.get(tensor)
            if node is not None:
                live.add(self._index[id(node)])
                pending.extend(n for n in node.input if n)
        return live

    # ------------------------------------------------------------------------------------- pass-through
    def is_pass_through(self, node: Any) -> bool:
        """Identity, Dropout as inference computes it (its mask unused) and Cast to float32."""
        if node.op_type == "Identity":
            return True
        if node.op_type == "Dropout":
            if len(node.input) > 2 and node.input[2]:
                mode = self.constant(node.input[2])
                if mode is None or mode.size != 1 or bool(mode.reshape(-1)[0]):
                    return False  # training_mode true (or decided at run time) drops values
            return len(node.output) < 2 or not node.output[1] or not self._live_consumers(node.output[1])
        return node.op_type == "Cast" and _attr(node, "to") == FLOAT

    def _live_consumers(self, tensor: str) -> list[Any]:
        return [n for n in self._consumers.get(tensor, ()) if self._index[id(n)] in self._live]

    def real_consumers(self, tensor: str) -> list[Any]:
        """The live nodes computing with ``tensor``, pass-through nodes looked through, in node order."""
        found: dict[int, Any] = {}
        pending, seen = [tensor], set()
        while pending:
            t = pending.pop()
            if t in seen:
                continue
            seen.add(t)
            for node in self._live_consumers(t):
                if self.is_pass_through(node) and node.input[0] == t:
                    pending.append(node.output[0])
                else:
                    found[self._index[id(node)]] = node
        return [found[i] for i in sorted(found)]

    def source(self, tensor: str) -> str:
        """``tensor`` with the pass-through nodes before it looked through."""
        for _ in range(len(self.nodes) + 1):
            node = self._producer.get(tensor)
            if node is None or not self.is_pass_through(node) or not node.input:
                break
            tensor = node.input[0]
        return tensor

    def skip_forward(self, tensor: str) -> str:
        """``tensor`` followed through a chain of single pass-through consumers (to, e.g., a graph output)."""
        for _ in range(len(self.nodes) + 1):
            users = self._live_consumers(tensor)
            if tensor in self.output_names or len(users) != 1 or not self.is_pass_through(users[0]) \
                    or users[0].input[0] != tensor:
                break
            tensor = users[0].output[0]
        return tensor

    def is_output(self, tensor: str) -> bool:
        """Whether ``tensor``, followed through pass-through nodes, is a graph output."""
        return self.skip_forward(tensor) in self.output_names

    # ---------------------------------------------------------------------------------------- constants
    def constant_name(self, tensor: str) -> str | None:
        """The initializer or Constant output holding ``tensor``'s value (through Identity), else None."""
        for _ in range(len(self.nodes) + 1):
            if tensor in self.initializers:
                return tensor
            node = self._producer.get(tensor)
            if node is None:
                return None
            if node.op_type == "Constant":
                return tensor
            if node.op_type != "Identity" or not node.input:
                return None
            tensor = node.input[0]
        return None

    def constant_type(self, tensor: str) -> tuple[int, tuple[int, ...]] | None:
        """(ONNX data type, shape) of a constant tensor without reading its data; None for runtime tensors."""
        name = self.constant_name(tensor)
        if name is None:
            return None
        if name in self.initializers:
            t = self.initializers[name]
            return t.data_type, tuple(t.dims)
        node = self._producer[name]
        for a in node.attribute:
            if a.name == "value":
                return a.t.data_type, tuple(a.t.dims)
            if a.name in ("value_float", "value_floats"):
                return FLOAT, (() if a.name == "value_float" else (len(a.floats),))
            if a.name in ("value_int", "value_ints"):
                return 7, (() if a.name == "value_int" else (len(a.ints),))
        return None

    def constant(self, tensor: str) -> np.ndarray | None:
        """The value of a constant tensor (an initializer or a Constant node's output, through Identity);
        floating-point values as a float32 copy; None for a runtime tensor."""
        name = self.constant_name(tensor) if tensor else None
        if name is None:
            return self._reshaped_constant(tensor) if tensor else None
        from onnx import numpy_helper

        try:
            if name in self.initializers:
                value = numpy_helper.to_array(self.initializers[name])
            else:
                value = _constant_node_value(self._producer[name])
        except Exception as err:  # a damaged tensor: sizes that do not fit its data, an unknown type
            raise UserError(self.path, f"tensor {name!r}: cannot read its data ({_first_line(err)})") from None
        if value is None:
            return None
        self.used.add(name)
        value = np.asarray(value)
        if value.dtype.kind == "f" or value.dtype.name == "bfloat16":
            return value.astype(np.float32)
        return value.copy()

    def _reshaped_constant(self, tensor: str, depth: int = 0) -> np.ndarray | None:
        """A constant seen through the ops that only rearrange it (Reshape, Unsqueeze, Squeeze, Flatten,
        Transpose with constant operands), as exporters such as paddle2onnx write a PReLU slope or a bias;
        None when anything on the way is computed at run time. The element count never changes, so this
        cannot grow a value."""
        node = self._producer.get(tensor)
        if node is None or node.op_type not in RESHAPING or not node.input or depth > 8:
            return None
        data = self.constant(node.input[0]) if depth == 0 or self.constant_name(node.input[0]) else \
            self._reshaped_constant(node.input[0], depth + 1)
        if data is None:
            return None
        operand = self.constant(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        try:
            if node.op_type == "Reshape":
                if operand is None:
                    return None
                shape = [int(d) for d in operand.reshape(-1)]
                if not self.attr(node, "allowzero", 0):
                    shape = [data.shape[i] if d == 0 and i < data.ndim else d for i, d in enumerate(shape)]
                return data.reshape(shape)
            if node.op_type == "Flatten":
                axis = int(self.attr(node, "axis", 1)) % (data.ndim + 1) if data.ndim else 0
                return data.reshape(int(np.prod(data.shape[:axis])), -1)
            if node.op_type == "Transpose":
                perm = self.attr(node, "perm", None)
                return np.transpose(data, None if perm is None else [int(p) for p in perm])
            axes = operand if operand is not None else self.attr(node, "axes", None)
            if node.op_type == "Squeeze":
                return np.squeeze(data, None if axes is None else tuple(int(a) for a in np.reshape(axes, -1)))
            rank = data.ndim + len(np.reshape(axes, -1))
            for axis in sorted(int(a) % rank for a in np.reshape(axes, -1)):
                data = np.expand_dims(data, axis)
            return data
        except (ValueError, TypeError, IndexError, np.AxisError):
            return None

    def attr(self, node: Any, name: str, default: Any = None) -> Any:
        """Attribute ``name`` of ``node`` as a Python value, or ``default``."""
        return _attr(node, name, default)


def _constant_node_value(node: Any) -> np.ndarray | None:
    from onnx import numpy_helper

    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None  # sparse or string constants: never weights of these models


def _dims(value: Any) -> list[int | str]:
    dims: list[int | str] = []
    for d in value.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return dims


def _first_line(err: BaseException) -> str:
    return next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)[:200]


# ------------------------------------------------------------------------------------------------ reading
def read_onnx(path: str | Path) -> OnnxGraph:
    """Read a user's ``.onnx`` file (and its external data, from its folder only) without running anything
    from it; ``UserError`` with one line for anything that is not a readable float ONNX image model."""
    path = Path(path)
    if not path.exists():
        raise UserError(path, "no such file")
    if path.is_dir():
        raise UserError(path, "is a directory, not an ONNX model")
    try:
        size = path.stat().st_size
    except OSError as err:
        raise UserError(path, f"cannot read it ({err.strerror})") from None
    if size == 0:
        raise UserError(path, "empty file, not an ONNX model")
    if size > PROTOBUF_LIMIT:
        raise UserError(path, f"{size / 2**30:.1f} GiB: larger than protobuf can parse (2 GiB); a model that "
                        "large keeps its weights in external data files")
    model = _parse(path)
    _check_structure(path, model)
    _check_not_quantized(path, model)
    _load_external_data(path, model)
    _check_tensors(path, model)
    graph = OnnxGraph(path, model)
    _check_image_input(path, graph)
    return graph


def _parse(path: Path) -> Any:
    import onnx

    model = onnx.ModelProto()
    with reading(path, "ONNX model"):
        try:
            data = path.read_bytes()
        except OSError as err:
            raise UserError(path, f"cannot read it ({err.strerror})") from None
        try:
            model.ParseFromString(data)
        except Exception:  # protobuf's DecodeError (truncated or not protobuf), RecursionError, ...
            raise UserError(path, "not an ONNX model, or a truncated one (cannot parse the protobuf)") from None
    return model


def _check_structure(path: Path, model: Any) -> None:
    """The fields every ONNX model has, and a node order in which each input is defined before its use."""
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise UserError(path, "not an ONNX model (no IR version or no graph)")
    graph = model.graph
    if not graph.node:
        raise UserError(path, "not an ONNX model, or a truncated one (the graph has no nodes)")
    _check_text(path, model)
    if not any(o.domain in ("", "ai.onnx") and o.version > 0 for o in model.opset_import):
        raise UserError(path, "no opset for the default ONNX domain (a truncated file?)")
    if graph.sparse_initializer:
        raise UserError(path, f"sparse initializer {graph.sparse_initializer[0].values.name!r}: not supported")
    defined: set[str] = {v.name for v in graph.input}
    initializers: set[str] = set()
    for t in graph.initializer:
        if t.name in initializers:
            raise UserError(path, f"initializer {t.name!r} is defined twice")
        initializers.add(t.name)
    defined |= initializers
    for i, node in enumerate(graph.node):
        for name in node.input:
            if name and name not in defined:
                raise UserError(path, f"{_label(node, i)} reads {name!r}, which no input, initializer or "
                                "earlier node defines (a damaged or unsorted graph)")
        for name in node.output:
            if name in defined:
                raise UserError(path, f"{_label(node, i)} redefines tensor {name!r}")
            if name:
                defined.add(name)
    missing = [v.name for v in graph.output if v.name not in defined]
    if not graph.output or missing:
        raise UserError(path, f"graph output {missing[0]!r} is not computed by any node" if missing
                        else "the graph has no output")


def _check_text(path: Path, model: Any) -> None:
    """Every name is text: protobuf hands a string field that is not valid UTF-8 over as bytes."""
    graph = model.graph
    texts: list[Any] = [o.domain for o in model.opset_import]
    texts += [v.name for v in (*graph.input, *graph.output)]
    for t in graph.initializer:
        texts.append(t.name)
        texts += [x for e in t.external_data for x in (e.key, e.value)]
    for node in graph.node:
        texts += [node.op_type, node.name, node.domain, *node.input, *node.output]
        texts += [a.name for a in node.attribute]
    if not all(isinstance(t, str) for t in texts):
        raise UserError(path, "damaged ONNX model: a name or op type is not valid UTF-8 text")


def _check_not_quantized(path: Path, model: Any) -> None:
    graph = model.graph
    for i, node in enumerate(graph.node):
        op = node.op_type
        if op in QUANTIZED_OPS or op.startswith("QLinear") or op.endswith("Integer"):
            raise UserError(path, f"quantized graph ({_label(node, i)}) is not supported: import the float "
                            "model it was quantized from")
    for t in graph.initializer:
        if t.data_type in QUANTIZED_TYPES:
            raise UserError(path, f"quantized graph (initializer {t.name!r} is {QUANTIZED_TYPES[t.data_type]}) "
                            "is not supported: import the float model it was quantized from")


def _model_tensors(model: Any) -> Iterable[tuple[str, Any]]:
    """(name, TensorProto) of every initializer and Constant value of the main graph."""
    for t in model.graph.initializer:
        yield t.name, t
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    yield (node.output[0] if node.output else node.name), a.t


def _nbytes(t: Any) -> int | None:
    from onnx import helper

    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except Exception:  # an unknown data type number
        return None
    return math.prod(int(d) for d in t.dims) * itemsize


def _load_external_data(path: Path, model: Any) -> None:
    """Read every tensor stored outside the model into it, from files inside the model's folder only."""
    from onnx import TensorProto

    folder = path.resolve().parent
    for name, t in _model_tensors(model):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        where = f"tensor {name!r}: external data {location!r}"
        if not location or os.path.isabs(location) or Path(location).drive or ".." in Path(location).parts:
            raise UserError(path, f"{where}: only files inside the model's folder are read")
        file = (folder / location).resolve()
        if folder not in file.parents:
            raise UserError(path, f"{where}: leads outside the model's folder")
        if not file.is_file():
            raise UserError(path, f"{where}: no such file next to the model")
        try:
            offset = int(info.get("offset", 0))
            expected = _nbytes(t)
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise UserError(path, f"{where}: offset or length is not a number") from None
        if expected is None or any(d < 0 for d in t.dims):
            raise UserError(path, f"{where}: unsupported data type {t.data_type} or negative dims")
        size = file.stat().st_size
        length = expected if length is None else length
        if offset < 0 or length != expected or offset + length > size:
            raise UserError(path, f"{where}: {length} bytes at offset {offset} do not hold the "
                            f"{expected} bytes of dims {list(t.dims)} (file has {size} bytes)")
        with reading(path, where), open(file, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise UserError(path, f"{where}: file is shorter than it declares")
        t.raw_data = data
        del t.external_data[:]
        t.data_location = TensorProto.DEFAULT


def _check_tensors(path: Path, model: Any) -> None:
    """Dims are sizes. (Data that does not fit its dims is refused when the tensor is read: numpy then
    fails to shape the file's bytes, without allocating what the dims declare.)"""
    for name, t in _model_tensors(model):
        if any(d < 0 for d in t.dims):
            raise UserError(path, f"tensor {name!r}: negative dims {list(t.dims)}")


def _check_image_input(path: Path, graph: OnnxGraph) -> None:
    if len(graph.inputs) != 1:
        names = ", ".join(v.name for v in graph.inputs) or "none"
        raise UserError(path, f"{len(graph.inputs)} graph inputs ({names}); a recognition model has one, an "
                        "image batch [N, 3, H, W]")
    value = graph.inputs[0]
    dims = graph.input_shape
    kind = value.type.tensor_type.elem_type if value.type.HasField("tensor_type") else None
    if kind not in FLOAT_TYPES or len(dims) != 4 or (isinstance(dims[1], int) and dims[1] != 3):
        shape = "[" + ", ".join(map(str, dims)) + "]" if value.type.HasField("tensor_type") else "not a tensor"
        raise UserError(path, f"input {value.name!r} is {shape} of data type {kind}; a recognition model takes "
                        "a float image batch [N, 3, H, W]")
