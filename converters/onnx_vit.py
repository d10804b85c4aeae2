"""Reading an InsightFace ViT out of an ONNX graph by its structure: ``walk_vit(graph, start) -> Walk``.

The walk follows the eval-mode forward from the input tensor ``start`` and checks every node on the way:

    patch_embed.proj  Conv, kernel = stride = patch, no padding, 3 -> D channels, bias (in the Conv or a
                      following Add of a [1, D, 1, 1] constant)
    patch_embed       Reshape to [N, D, P] -> Transpose(0, 2, 1)      (P = (112 // patch)^2 patches)
    + pos_embed       Add of a constant [1, P, D]
    blocks.i          x + attn(norm1(x)), then x + mlp(norm2(x)):
      norm1, norm2    LayerNormalization, or its decomposition ReduceMean, Sub, Pow 2 (or Mul by itself),
                      ReduceMean, Add eps, Sqrt, Div, Mul weight, Add bias
      attn            qkv MatMul by a constant [D, 3D] (no bias) -> Reshape [N, P, 3, H, D/H] ->
                      Transpose(2, 0, 3, 1, 4) -> q, k, v by Gather or Slice+Squeeze on axis 0 ->
                      q @ Transpose(k, 0, 1, 3, 2) -> Mul by (D/H)^-0.5 (or Div by its inverse, then an
                      optional Add of 0) -> Softmax over the last axis -> @ v -> Transpose(0, 2, 1, 3) ->
                      Reshape [N, P, D] -> proj MatMul [D, D] + bias
      mlp             fc1 MatMul [D, hidden] + bias -> Clip(0, 6) -> fc2 MatMul [hidden, D] + bias
    norm              LayerNorm
    reshape           Reshape to [N, P * D] (or Flatten from axis 1)
    feature           Linear [P * D -> D] without bias -> BatchNorm1d -> Linear [D -> F] without bias ->
                      BatchNorm1d, whose output is a graph output

Identity, Dropout and float-to-float Cast nodes are looked through; Shape nodes and the shape arithmetic
feeding a Reshape are evaluated with a symbolic batch, so a reshape is checked for its meaning (a fixed
batch of 1, as an export traced without a dynamic batch has, is accepted too). A Linear is a MatMul by a
constant ``[in, out]`` (an initializer, or an initializer through Transpose/Reshape), or on 2-D input a
Gemm; its weight is returned in PyTorch's ``[out, in]`` layout. Weights are identified by their place in
this structure, never by initializer names or order.

A feature-head BatchNorm1d is read from a BatchNormalization (bare, or between Unsqueeze and Squeeze),
from an explicit Mul and Add by constants, or, when an exporter folded it into the Linear before it, from
the bias that Linear then has. The last two are represented exactly in the unfolded structure: weight = the
scale (1 when folded), bias = the shift, running_mean 0 and running_var = 1 - eps, so that
``(x - 0) / sqrt(var + eps) = x``; such modules are listed in ``Walk.folded``. A bias added between a
feature Linear and a BatchNormalization moves into its running_mean (``BN(x + b)`` with mean m is
``BN(x)`` with mean ``m - b``). Where a Linear's bias holds such a BatchNorm, the Linear's own output is in
no tensor of the graph and has no stage.

The LayerNorm epsilon is read from the graph and must be PyTorch's ``nn.LayerNorm`` default (1e-5, which
InsightFace's ViT keeps), the BatchNorm1d epsilon that of a registered ViT with these dimensions (2e-5), and
the number of heads (read from the qkv reshape) that of such a ViT. ``mask_token`` is used only in training
and is in no inference graph: it is returned as zeros.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

import architectures
from architectures import ViTSpec
from architectures.vit import IMG_SIZE

from .onnx_graph import GraphMismatch, Walk

if TYPE_CHECKING:
    from .onnx_graph import OnnxGraph

LN_EPS = 1e-5  # PyTorch's nn.LayerNorm default, which InsightFace's ViT keeps
_BATCH = 1_000_003  # the symbolic batch: a value no real dimension of these models takes
# what numpy raises when a graph's values do not fit an operation (numpy's AxisError is both)
_NUMPY_ERRORS = (IndexError, ValueError, TypeError, OverflowError, ZeroDivisionError)
_CONSTANT_OPS = ("Identity", "Cast", "Transpose", "Reshape", "Unsqueeze", "Squeeze", "Flatten")


def walk_vit(graph: OnnxGraph, start: str) -> Walk:
    """Match ``graph`` from the tensor ``start`` (the image input) against an InsightFace ViT's eval forward.

    Raises ``GraphMismatch`` at the first node that differs from it."""
    walk = _ViTWalk(graph)
    try:
        return walk.run(start)
    except (KeyError, *_NUMPY_ERRORS) as err:  # values no ViT has, that no check above caught: a mismatch too
        raise walk._fail(walk.last, f"expected an InsightFace ViT after this node ({type(err).__name__}: "
                         f"{err})") from err


def _input(node: Any, i: int) -> str:
    """Input ``i`` of ``node``, "" when it has none."""
    return node.input[i] if len(node.input) > i else ""


def _dims(shape: Sequence[int]) -> str:
    return "[" + ", ".join("N" if d == _BATCH else str(int(d)) for d in shape) + "]"


def _unsqueeze(data: np.ndarray, axes: list[int]) -> np.ndarray:
    rank = data.ndim + len(axes)
    for a in sorted(a % rank for a in axes):
        data = np.expand_dims(data, a)
    return data


def _squeeze(data: np.ndarray, axes: list[int]) -> np.ndarray:
    return np.squeeze(data, tuple(a % data.ndim for a in axes)) if axes else np.squeeze(data)


class _ViTWalk:
    def __init__(self, graph: OnnxGraph):
        self.g = graph
        self.shapes: dict[str, tuple[int, ...]] = {}  # canonical main-path tensor -> shape (batch = _BATCH)
        self.matched: set[int] = set()
        self.params: dict[str, np.ndarray] = {}
        self.stages: list[tuple[str, str]] = []
        self.folded: list[str] = []
        self._values: dict[str, np.ndarray] = {}
        self.last = graph.nodes[0] if graph.nodes else None  # the node matched last

    # ------------------------------------------------------------------------------------- graph helpers
    def _mark(self, node: Any) -> None:
        self.matched.add(self.g.index(node))
        self.last = node

    def attr(self, node: Any, name: str, default: Any = None) -> Any:
        return self.g.attr(node, name, default)

    def _fail(self, node: Any, message: str) -> GraphMismatch:
        return GraphMismatch(node, message, matched=len(self.matched))

    def canon(self, tensor: str) -> str:
        """``tensor`` with the pass-through nodes before it (Identity, Dropout, Cast to float) skipped."""
        return self.g.source(tensor)

    def users(self, tensor: str) -> list[Any]:
        """The live nodes computing with ``tensor`` (through pass-through nodes), Shape nodes left out."""
        return [n for n in self.g.real_consumers(tensor) if n.op_type != "Shape"]

    def only_user(self, tensor: str, ops: tuple[str, ...], what: str) -> Any:
        users = self.users(tensor)
        if len(users) == 1 and users[0].op_type in ops:
            return users[0]
        raise self._blame(tensor, users, ops, what)

    def _blame(self, tensor: str, users: list[Any], ops: tuple[str, ...], what: str) -> GraphMismatch:
        odd = [u for u in users if u.op_type not in ops]
        if odd:
            return self._fail(odd[0], f"expected {what}")
        if users:
            return self._fail(users[-1], f"expected {what} alone")
        node = self.g.producer(self.canon(tensor)) or self.g.nodes[0]
        ending = "the graph ends here" if self.g.is_output(tensor) else "nothing uses its output"
        return self._fail(node, f"expected {what} next, but {ending}")

    def data_input(self, node: Any, tensor: str) -> int | None:
        """Which input of ``node`` is ``tensor`` (through transparent nodes), or None."""
        target = self.canon(tensor)
        for i, name in enumerate(node.input):
            if name and self.canon(name) == target:
                return i
        return None

    def other_input(self, node: Any, tensor: str) -> str:
        """The input of a two-input node that is not ``tensor``."""
        i = self.data_input(node, tensor)
        if i is None or len(node.input) != 2:
            raise self._fail(node, f"expected a two-input {node.op_type} reading {tensor!r}")
        return node.input[1 - i]

    def out(self, node: Any, shape: tuple[int, ...] | None = None) -> str:
        """``node``'s output, marked matched, with its shape recorded."""
        self._mark(node)
        tensor = node.output[0]
        if shape is not None:
            self.shapes[tensor] = tuple(int(d) for d in shape)
        return tensor

    # --------------------------------------------------------------------------------- constant values
    def const(self, tensor: str) -> np.ndarray | None:
        """The float32 value of a constant tensor: an initializer or Constant, also through Identity,
        Cast, Transpose, Reshape, Unsqueeze, Squeeze and Flatten of one."""
        if not tensor:
            return None
        if tensor in self._values:
            return self._values[tensor]
        value = self.g.constant(tensor)
        node = self.g.producer(tensor)
        if value is None and node is not None and node.input and node.op_type in _CONSTANT_OPS:
            data = self.const(node.input[0])
            try:
                value = None if data is None else self._const_node(node, data)
            except _NUMPY_ERRORS:  # a value the operation does not fit: not a constant of a ViT
                value = None
            if value is not None:
                self._mark(node)
        if value is None:
            return None
        value = np.require(value, np.float32, "C")  # (np.ascontiguousarray would make a scalar 1-D)
        self._values[tensor] = value
        return value

    def _const_node(self, node: Any, data: np.ndarray) -> np.ndarray | None:
        op = node.op_type
        if op == "Transpose":
            return np.transpose(data, self.attr(node, "perm"))
        if op == "Reshape":
            shape = self.g.constant(node.input[1])
            if shape is None:
                return None
            copy = not self.attr(node, "allowzero", 0)
            target = [data.shape[i] if s == 0 and copy else int(s) for i, s in enumerate(shape.reshape(-1))]
            return data.reshape(target)
        if op in ("Unsqueeze", "Squeeze"):
            return (_unsqueeze if op == "Unsqueeze" else _squeeze)(data, self._axes(node))
        if op == "Flatten":
            axis = self.attr(node, "axis", 1) % max(data.ndim, 1)
            return data.reshape(int(np.prod(data.shape[:axis])), -1)
        return data  # Identity, Cast

    def _axes(self, node: Any) -> list[int]:
        axes = self.attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            value = self.g.constant(node.input[1])
            axes = [] if value is None else value.reshape(-1).astype(np.int64).tolist()
        return [int(a) for a in axes or []]

    def scalar(self, tensor: str) -> float | None:
        value = self.const(tensor)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None

    # ---------------------------------------------------------------------------------- shape arithmetic
    def shape_value(self, tensor: str) -> np.ndarray:
        """An int64 shape computation's value, the batch being the symbol ``_BATCH``."""
        value = self.g.constant(tensor)
        if value is not None:
            return value.astype(np.int64)
        node = self.g.producer(tensor)
        if node is None:
            raise self._fail(self.g.nodes[0], f"expected a shape computation for {tensor!r}, not an input")
        try:
            result = self._shape_node(node)
        except _NUMPY_ERRORS as err:  # inputs missing, or values that do not fit the operation
            raise self._fail(node, f"expected shape arithmetic that computes ({err})") from None
        self._mark(node)
        return np.asarray(result, dtype=np.int64)

    def _shape_node(self, node: Any) -> np.ndarray:
        op, ins = node.op_type, node.input
        if op == "Shape":
            source = self.canon(ins[0])
            if source not in self.shapes:
                raise self._fail(node, "expected the shape of a tensor on the ViT's path")
            shape = np.array(self.shapes[source], dtype=np.int64)
            start, end = self.attr(node, "start", 0), self.attr(node, "end")
            result = shape[start:end]
        elif op in ("Identity", "Cast", "Floor", "Ceil"):
            result = self.shape_value(ins[0])
        elif op == "Gather":
            data, indices = self.shape_value(ins[0]), self.shape_value(ins[1])
            result = np.take(data, indices, axis=self.attr(node, "axis", 0))
        elif op == "Slice":
            data = self.shape_value(ins[0])
            if len(ins) > 2:
                starts, ends = self.shape_value(ins[1]), self.shape_value(ins[2])
                axes = self.shape_value(ins[3]) if len(ins) > 3 and ins[3] else None
                steps = self.shape_value(ins[4]) if len(ins) > 4 and ins[4] else None
            else:
                starts, ends = self.attr(node, "starts"), self.attr(node, "ends")
                axes, steps = self.attr(node, "axes"), None
            if data.ndim != 1 or len(starts) != 1 or (axes is not None and int(axes[0]) not in (0, -1)):
                raise self._fail(node, "expected a slice of a 1-D shape")
            step = int(steps[0]) if steps is not None else 1
            result = data[int(starts[0]):int(min(ends[0], 2**62)):step]
        elif op == "Concat":
            result = np.concatenate([self.shape_value(t).reshape(-1) for t in ins])
        elif op in ("Unsqueeze", "Squeeze"):
            data = self.shape_value(ins[0])
            result = (_unsqueeze if op == "Unsqueeze" else _squeeze)(data, self._axes(node))
        elif op == "Reshape":
            target = self.shape_value(ins[1]).reshape(-1)
            data = self.shape_value(ins[0])
            result = data.reshape([int(s) for s in target]) if target.size else data.reshape(())
        elif op in ("Add", "Sub", "Mul", "Div"):
            a, b = self.shape_value(ins[0]), self.shape_value(ins[1])
            result = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.floor_divide}[op](a, b)
        else:
            raise self._fail(node, "expected shape arithmetic (Shape, Gather, Slice, Concat, Unsqueeze, ...)")
        return result

    def reshape(self, node: Any, tensor: str, expected: Sequence[int] | None, what: str) -> tuple[str, tuple]:
        """Check that ``node`` reshapes ``tensor`` to ``expected`` (None: to any shape, returned)."""
        source = self.shapes[self.canon(tensor)]
        if node.op_type == "Flatten":
            axis = self.attr(node, "axis", 1) % len(source)
            result = (int(np.prod(source[:axis])), int(np.prod(source[axis:])))
            if expected is not None and result != tuple(expected):
                raise self._fail(node, f"expected {what} to {_dims(expected)}, got {_dims(result)}")
            return self.out(node, result), result
        if len(node.input) < 2 or not node.input[1]:
            raise self._fail(node, f"expected {what}: a Reshape with a target shape")
        target = [int(s) for s in self.shape_value(node.input[1]).reshape(-1)]
        allowzero = self.attr(node, "allowzero", 0)

        def resolve(batch: int) -> tuple[int, ...]:
            src = tuple(batch if d == _BATCH else d for d in source)
            dims = [src[i] if s == 0 and not allowzero and i < len(src) else s for i, s in enumerate(target)]
            if dims.count(-1) == 1:
                known = int(np.prod([d for d in dims if d != -1]))
                dims[dims.index(-1)] = int(np.prod(src)) // known if known else -1
            return tuple(dims)

        # a dynamic batch, or the fixed batch of one of a graph traced without a dynamic batch
        dynamic, fixed = resolve(_BATCH), resolve(1)
        if expected is None:
            shape = dynamic if dynamic[:1] == (_BATCH,) or fixed[:1] != (1,) else (_BATCH,) + fixed[1:]
        elif dynamic == tuple(expected) or fixed == (1,) + tuple(expected)[1:]:
            shape = tuple(expected)
        else:
            raise self._fail(node, f"expected {what} to {_dims(expected)}, got {_dims(dynamic)}")
        return self.out(node, shape), shape

    # ----------------------------------------------------------------------------------------- layers
    def linear(self, x: str, din: int, dout: int | None, name: str, bias: str) -> tuple[str, int]:
        """A Linear reading ``x`` (last axis ``din``): MatMul by a constant ``[din, dout]`` or a Gemm.

        ``bias`` is "yes" (an Add of a constant [dout] must follow), "no", or "open" (an Add is taken when
        there is one; its value is returned under ``name + ".bias"``). Returns the output and ``dout``."""
        users = self.users(x)
        node = users[0] if len(users) == 1 else None
        ops = ("MatMul", "Gemm") if len(self.shapes[self.canon(x)]) == 2 else ("MatMul",)  # Gemm is 2-D only
        if node is None or node.op_type not in ops or self.data_input(node, x) != 0:
            raise self._blame(x, users, ops, f"{name}: a MatMul by a constant [{din}, "
                              f"{dout or 'out'}] weight")
        weight = self.const(_input(node, 1))
        if node.op_type == "Gemm":
            scales = (self.attr(node, "alpha", 1.0), self.attr(node, "beta", 1.0))
            if self.attr(node, "transA", 0) or scales != (1.0, 1.0):
                raise self._fail(node, f"expected {name}: a Gemm with transA 0, alpha 1 and beta 1")
            if weight is not None and weight.ndim == 2 and self.attr(node, "transB", 0):
                weight = weight.T
        shape_ok = weight is not None and weight.ndim == 2 and weight.shape[0] == din
        if not shape_ok or dout not in (None, weight.shape[1]):
            got = "no constant" if weight is None else f"a constant {list(weight.shape)}"
            raise self._fail(node, f"expected {name}: a MatMul by a constant [{din}, {dout or 'out'}] "
                             f"weight, got {got}")
        dout = weight.shape[1]
        self.params[f"{name}.weight"] = np.ascontiguousarray(weight.T)
        shape = self.shapes[self.canon(x)][:-1] + (dout,)
        out = self.out(node, shape)
        b = None
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
            b = self.const(node.input[2])
            if b is None or b.size != dout:
                raise self._fail(node, f"expected {name}: a Gemm with a constant [{dout}] bias")
        elif bias != "no":
            what = f"{name}: the bias, an Add of a constant [{dout}]"
            users = self.users(out)
            add = users[0] if len(users) == 1 and users[0].op_type == "Add" else None
            b = self.const(self.other_input(add, out)) if add is not None else None
            if b is not None and b.shape[-1:] == (dout,) and b.size == dout:
                out = self.out(add, shape)
            elif bias == "yes":
                raise self._fail(add, f"expected {what}") if add else self._blame(out, users, ("Add",), what)
            else:
                b = None
        if b is not None:
            if bias == "no":
                raise self._fail(node, f"expected {name} without a bias")
            self.params[f"{name}.bias"] = np.ascontiguousarray(b.reshape(dout))
        return out, dout

    def layer_norm(self, x: str, name: str) -> tuple[str, set[int]]:
        """A LayerNorm over the last axis of ``x``: the output and the indices of its nodes reading ``x``."""
        shape = self.shapes[self.canon(x)]
        d = shape[-1]
        users = self.users(x)
        fused = [u for u in users if u.op_type == "LayerNormalization"]
        if fused:
            node = fused[0]
            axis = self.attr(node, "axis", -1)
            scale = self.const(_input(node, 1))
            has_bias = len(node.input) > 2 and node.input[2]
            bias = self.const(node.input[2]) if has_bias else np.zeros(d, np.float32)
            if self.data_input(node, x) != 0 or axis % len(shape) != len(shape) - 1:
                raise self._fail(node, f"expected {name}: a LayerNorm over the last axis")
            self._check_eps(node, name, self.attr(node, "epsilon", 1e-5))
            self._ln_params(node, name, scale, bias, d)
            return self.out(node, shape), {self.g.index(node)}
        means = [u for u in users if u.op_type == "ReduceMean" and self.data_input(u, x) == 0]
        subs = [u for u in users if u.op_type == "Sub" and self.data_input(u, x) == 0]
        if not means or not subs:
            raise self._blame(x, users, ("LayerNormalization", "ReduceMean", "Sub", "Add"),
                              f"{name}: a LayerNorm (LayerNormalization, or ReduceMean and Sub)")
        mean, sub = means[0], subs[0]
        self._check_reduce(mean, shape, name)
        m = self.out(mean)
        if self.canon(_input(sub, 1)) != self.canon(m):
            raise self._fail(sub, f"expected {name}: x - mean(x)")
        c = self.out(sub)
        users_c = self.users(c)
        squares = [u for u in users_c if u.op_type in ("Pow", "Mul")]
        divs = [u for u in users_c if u.op_type == "Div" and self.data_input(u, c) == 0]
        if len(users_c) != 2 or len(squares) != 1 or len(divs) != 1:
            raise self._blame(c, users_c, ("Pow", "Mul", "Div"), f"{name}: the square and the division of "
                              "x - mean(x)")
        sq = squares[0]
        if sq.op_type == "Pow" and (self.data_input(sq, c) != 0 or self.scalar(_input(sq, 1)) != 2.0) or (
                sq.op_type == "Mul" and [self.canon(t) for t in sq.input] != [self.canon(c)] * 2):
            raise self._fail(sq, f"expected {name}: the square of x - mean(x)")
        var = self.only_user(self.out(sq), ("ReduceMean",), f"{name}: the mean of the squares")
        self._check_reduce(var, shape, name)
        add = self.only_user(self.out(var), ("Add",), f"{name}: variance + epsilon")
        eps = self.scalar(self.other_input(add, var.output[0]))
        if eps is None:
            raise self._fail(add, f"expected {name}: variance + a constant epsilon")
        self._check_eps(add, name, eps)
        sqrt = self.only_user(self.out(add), ("Sqrt",), f"{name}: the square root of variance + epsilon")
        div = divs[0]
        if self.canon(_input(div, 1)) != self.canon(self.out(sqrt)):
            raise self._fail(div, f"expected {name}: (x - mean) / sqrt(variance + epsilon)")
        y = self.out(div)
        mul = self.only_user(y, ("Mul",), f"{name}: the LayerNorm weight (a Mul)")
        scale = self.const(self.other_input(mul, y))
        y = self.out(mul)
        add = self.only_user(y, ("Add",), f"{name}: the LayerNorm bias (an Add)")
        bias = self.const(self.other_input(add, y))
        self._ln_params(add if bias is None else mul, name, scale, bias, d)
        return self.out(add, shape), {self.g.index(mean), self.g.index(sub)}

    def _check_reduce(self, node: Any, shape: tuple, name: str) -> None:
        axes = self._axes(node)
        if [a % len(shape) for a in axes] != [len(shape) - 1] or self.attr(node, "keepdims", 1) != 1:
            raise self._fail(node, f"expected {name}: a mean over the last axis, keeping it")

    def _check_eps(self, node: Any, name: str, eps: float) -> None:
        if np.float32(eps) != np.float32(LN_EPS):  # exporters store it as float32
            raise self._fail(node, f"expected {name}: LayerNorm epsilon {LN_EPS:g}, got {eps:g}")

    def _ln_params(self, node: Any, name: str, scale: Any, bias: Any, d: int) -> None:
        for what, value in (("weight", scale), ("bias", bias)):
            if value is None or value.size != d or value.shape[-1] != d:
                raise self._fail(node, f"expected {name}: a constant [{d}] LayerNorm {what}")
        self.params[f"{name}.weight"] = np.ascontiguousarray(scale.reshape(d))
        self.params[f"{name}.bias"] = np.ascontiguousarray(bias.reshape(d))

    def attention(self, h: str, p: str) -> tuple[str, Any]:
        """``attn(h)`` of block prefix ``p``: its output and the qkv Reshape node (that fixes the heads)."""
        n, t, d = self.shapes[self.canon(h)]
        qkv, _ = self.linear(h, d, 3 * d, f"{p}.attn.qkv", "no")
        what = f"{p}.attn: the qkv reshape to [N, {t}, 3, heads, {d} / heads]"
        reshape = self.only_user(qkv, ("Reshape",), what)
        _, dims = self.reshape(reshape, qkv, None, what)
        heads = dims[3] if len(dims) == 5 else 0
        if len(dims) != 5 or dims[:3] != (n, t, 3) or heads < 1 or heads * dims[4] != d:
            raise self._fail(reshape, f"expected {what}, got {_dims(dims)}")
        hd = d // heads
        what = f"{p}.attn: the qkv permutation (2, 0, 3, 1, 4)"
        perm = self.only_user(reshape.output[0], ("Transpose",), what)
        if list(self.attr(perm, "perm")) != [2, 0, 3, 1, 4]:
            raise self._fail(perm, f"expected {what}")
        qkv5 = self.out(perm, (3, n, heads, t, hd))
        q, k, v = self._split_qkv(qkv5, (n, heads, t, hd), p)
        kt = self.only_user(k, ("Transpose",), f"{p}.attn: k transposed (0, 1, 3, 2)")
        if list(self.attr(kt, "perm")) != [0, 1, 3, 2]:
            raise self._fail(kt, f"expected {p}.attn: k transposed (0, 1, 3, 2)")
        kt_out = self.out(kt, (n, heads, hd, t))
        qk = self.only_user(q, ("MatMul",), f"{p}.attn: q @ k^T")
        if self.data_input(qk, q) != 0 or self.data_input(qk, kt_out) != 1:
            raise self._fail(qk, f"expected {p}.attn: q @ k^T")
        s = self.out(qk, (n, heads, t, t))
        s = self._scale(s, hd ** -0.5, p)
        sm = self.only_user(s, ("Softmax",), f"{p}.attn: the softmax")
        if self.attr(sm, "axis", -1 if self.g.opset >= 13 else 1) % 4 != 3:
            raise self._fail(sm, f"expected {p}.attn: the softmax over the last axis")
        a = self.out(sm, (n, heads, t, t))
        av = self.only_user(a, ("MatMul",), f"{p}.attn: attention @ v")
        if self.data_input(av, a) != 0 or self.data_input(av, v) != 1 or len(self.users(v)) != 1:
            raise self._fail(av, f"expected {p}.attn: attention @ v")
        o = self.out(av, (n, heads, t, hd))
        tr = self.only_user(o, ("Transpose",), f"{p}.attn: the heads' outputs transposed (0, 2, 1, 3)")
        if list(self.attr(tr, "perm")) != [0, 2, 1, 3]:
            raise self._fail(tr, f"expected {p}.attn: the heads' outputs transposed (0, 2, 1, 3)")
        o = self.out(tr, (n, t, heads, hd))
        merge = self.only_user(o, ("Reshape",), f"{p}.attn: the heads merged to [N, {t}, {d}]")
        o, _ = self.reshape(merge, o, (n, t, d), f"{p}.attn: the heads merged")
        out, _ = self.linear(o, d, d, f"{p}.attn.proj", "yes")
        return out, reshape

    def _split_qkv(self, qkv5: str, shape: tuple, p: str) -> list[str]:
        """q, k and v: Gather(index i) or Slice(i, i + 1) + Squeeze on axis 0 of the permuted qkv."""
        parts: dict[int, str] = {}
        users = self.users(qkv5)
        for node in users:
            index = None
            first = self.data_input(node, qkv5) == 0
            if node.op_type == "Gather" and self.attr(node, "axis", 0) == 0 and first:
                value = self.const(_input(node, 1))
                if value is not None and value.ndim == 0:
                    index, tensor = int(value), self.out(node, shape)
            elif node.op_type == "Slice" and first:
                if len(node.input) >= 3:
                    starts, ends = self.const(_input(node, 1)), self.const(_input(node, 2))
                    axes = self.const(node.input[3]) if len(node.input) > 3 and node.input[3] else np.zeros(1)
                    steps = self.const(node.input[4]) if len(node.input) > 4 and node.input[4] else np.ones(1)
                else:  # opset < 10: attributes
                    starts, ends = (np.array(self.attr(node, key, [])) for key in ("starts", "ends"))
                    axes, steps = np.array(self.attr(node, "axes", [0])), np.ones(1)
                one = all(v is not None and v.size == 1 for v in (starts, ends, axes, steps))
                if one and (axes.item(), steps.item(), ends.item() - starts.item()) == (0, 1, 1):
                    squeeze = self.only_user(self.out(node), ("Squeeze",), f"{p}.attn: q, k or v squeezed")
                    if self._axes(squeeze) in ([0], []):
                        index, tensor = int(starts.item()), self.out(squeeze, shape)
            if index is None or index in parts or not 0 <= index < 3:
                raise self._fail(node, f"expected {p}.attn: q, k and v taken from the permuted qkv by Gather "
                                 "or Slice on axis 0")
            parts[index] = tensor
        if len(parts) != 3:
            raise self._blame(qkv5, users, ("Gather", "Slice"), f"{p}.attn: q, k and v taken from the qkv")
        return [parts[0], parts[1], parts[2]]

    def _scale(self, s: str, scale: float, p: str) -> str:
        node = self.only_user(s, ("Mul", "Div"), f"{p}.attn: the scores scaled by {scale:g}")
        c = self.scalar(self.other_input(node, s))
        if node.op_type == "Div" and self.data_input(node, s) != 0:
            c = None
        got = None if c is None else (c if node.op_type == "Mul" else 1.0 / c)
        if got is None or abs(got - scale) > 1e-6 * scale:
            raise self._fail(node, f"expected {p}.attn: the scores scaled by {scale:g}, got {got}")
        out = self.out(node, self.shapes[self.canon(s)])
        users = self.users(out)
        if len(users) == 1 and users[0].op_type == "Add":  # Paddle's scale op adds its bias, 0
            shift = self.scalar(self.other_input(users[0], out))
            if shift == 0.0:
                out = self.out(users[0], self.shapes[self.canon(s)])
        return out

    def mlp(self, h: str, p: str, hidden: int | None) -> tuple[str, int]:
        d = self.shapes[self.canon(h)][-1]
        x, hidden = self.linear(h, d, hidden, f"{p}.mlp.fc1", "yes")
        clip = self.only_user(x, ("Clip",), f"{p}.mlp.act: ReLU6 (a Clip to [0, 6])")
        if len(clip.input) > 1:
            lo = self.scalar(clip.input[1]) if clip.input[1] else None
            hi = self.scalar(clip.input[2]) if len(clip.input) > 2 and clip.input[2] else None
        else:
            lo, hi = self.attr(clip, "min"), self.attr(clip, "max")
        if lo != 0.0 or hi != 6.0:
            raise self._fail(clip, f"expected {p}.mlp.act: ReLU6 (a Clip to [0, 6]), got [{lo}, {hi}]")
        x = self.out(clip, self.shapes[self.canon(x)])
        out, _ = self.linear(x, hidden, d, f"{p}.mlp.fc2", "yes")
        return out, hidden

    def block_residual(self, x: str, users: list, ln_nodes, branch: str, p: str, what: str, norm: str) -> str:
        """``x + branch`` where ``branch`` hangs off ``norm(x)``: besides the LayerNorm's own nodes, ``x``'s
        only other user must be that residual Add."""
        rest = [u for u in users if self.g.index(u) not in ln_nodes]
        if len(rest) != 1 or self.data_input(rest[0], branch) is None:
            raise self._fail(rest[0] if rest else self.g.producer(x),
                             f"expected {p}: only the residual x + {what} besides {norm}")
        return self.residual(x, branch, p)

    def residual(self, x: str, branch: str, p: str) -> str:
        add = self.only_user(branch, ("Add",), f"{p}: the residual Add")
        if self.data_input(add, x) is None or len(add.input) != 2:
            raise self._fail(add, f"expected {p}: the residual x + branch")
        return self.out(add, self.shapes[self.canon(x)])

    def batch_norm_1d(self, x: str, c: int, name: str, eps: float, bias_before: np.ndarray | None) -> str:
        """A feature-head BatchNorm1d on ``x`` [N, c] (see the module docstring for the accepted forms).

        ``bias_before``: the bias of the Linear before it, which either is this BatchNorm folded into that
        Linear (no BatchNorm follows) or moves into the running mean of the BatchNorm that follows."""
        users = self.users(x)
        node = users[0] if len(users) == 1 else None
        wrapped = None
        if node is not None and node.op_type == "Unsqueeze":
            wrapped = node
            unsqueezed = self.out(node, self.shapes[self.canon(x)] + (1,) * len(self._axes(node)))
            node = self.only_user(unsqueezed, ("BatchNormalization",), f"{name}: a BatchNormalization")
        if node is not None and node.op_type == "BatchNormalization":
            if self.data_input(node, x if wrapped is None else wrapped.output[0]) != 0 or len(node.input) < 5:
                raise self._fail(node, f"expected {name}: a BatchNormalization of the features")
            values = [self.const(t) for t in node.input[1:5]]
            extra = [t for t in node.output[1:] if t and self.g.real_consumers(t)]
            training = self.attr(node, "training_mode", 0) or not self.attr(node, "spatial", 1) or extra
            if any(v is None or v.size != c for v in values) or training:
                raise self._fail(node, f"expected {name}: an inference BatchNormalization with constant "
                                 f"[{c}] parameters")
            got = self.attr(node, "epsilon", 1e-5)
            if np.float32(got) != np.float32(eps):
                raise self._fail(node, f"expected {name}: BatchNorm epsilon {eps:g}, got {got:g}")
            weight, bias, mean, var = (v.reshape(c) for v in values)
            if bias_before is not None:  # BN(x + b) with mean m is BN(x) with mean m - b
                mean = mean - bias_before
            self._put_bn(name, weight, bias, mean, var)
            out = self.out(node)
            if wrapped is not None:
                squeeze = self.only_user(out, ("Squeeze",), f"{name}: a Squeeze after the BatchNormalization")
                if self._axes(squeeze) != self._axes(wrapped):
                    raise self._fail(squeeze, f"expected {name}: a Squeeze of the axes unsqueezed before it")
                out = self.out(squeeze)
            self.shapes[out] = self.shapes[self.canon(x)]
            return out
        if bias_before is not None:  # folded into the Linear before it: x + shift
            scale, shift = np.ones(c, np.float32), bias_before
        elif node is not None and node.op_type == "Mul":  # x * scale + shift
            scale = self.const(self.other_input(node, x))
            if scale is None or scale.size != c or scale.shape[-1] != c:
                raise self._fail(node, f"expected {name}: a BatchNorm scale, a Mul by a constant [{c}]")
            y = self.out(node, self.shapes[self.canon(x)])
            add = self.only_user(y, ("Add",), f"{name}: a BatchNorm shift, an Add of a constant [{c}]")
            shift = self.const(self.other_input(add, y))
            if shift is None or shift.size != c or shift.shape[-1] != c:
                raise self._fail(add, f"expected {name}: a BatchNorm shift, an Add of a constant [{c}]")
            x = self.out(add, self.shapes[self.canon(x)])
        else:
            raise self._blame(x, users, ("BatchNormalization", "Unsqueeze", "Mul"),
                              f"{name}: a BatchNorm1d (BatchNormalization, or Mul and Add by constants)")
        var = np.full(c, np.float32(1.0) - np.float32(eps), np.float32)  # var + eps = 1
        self._put_bn(name, scale.reshape(c), shift.reshape(c), np.zeros(c, np.float32), var)
        self.folded.append(name)
        return x

    def _put_bn(self, name: str, *values: np.ndarray) -> None:
        for key, value in zip(("weight", "bias", "running_mean", "running_var"), values):
            self.params[f"{name}.{key}"] = np.ascontiguousarray(value, dtype=np.float32)

    # ------------------------------------------------------------------------------------------- walk
    def run(self, start: str) -> Walk:
        x = self.canon(start)
        for image in (x, self.g.input_name):  # the input itself when the graph normalises it first
            self.shapes[image] = (_BATCH, 3, IMG_SIZE, IMG_SIZE)
        x, d, patch = self.patch_embed(x)
        t = self.shapes[x][1]

        depth, hidden, heads, head_node = 0, None, None, None
        while True:
            # a block's input also feeds its residual Add; the last block's output only the final norm
            users = self.users(x)
            p = f"blocks.{depth}"
            if not any(u.op_type == "Add" for u in users):
                norm_out, _ = self.layer_norm(x, "norm")
                self.stages.append(("norm", norm_out))
                break
            norm_out, ln_nodes = self.layer_norm(x, f"{p}.norm1")
            self.stages.append((f"{p}.norm1", norm_out))
            a, reshape = self.attention(norm_out, p)
            self.stages.append((f"{p}.attn", a))
            x = self.block_residual(x, users, ln_nodes, a, p, "attn(norm1(x))", "norm1")
            users = self.users(x)
            h, ln_nodes = self.layer_norm(x, f"{p}.norm2")
            self.stages.append((f"{p}.norm2", h))
            m, hidden = self.mlp(h, p, hidden)
            self.stages.append((f"{p}.mlp", m))
            x = self.block_residual(x, users, ln_nodes, m, p, "mlp(norm2(x))", "norm2")
            self.stages.append((p, x))
            block_heads = self.shapes[self.canon(reshape.output[0])][3]
            if heads is not None and block_heads != heads:
                raise self._fail(reshape, f"expected {p}.attn: {heads} heads as blocks.0, got {block_heads}")
            heads, head_node = block_heads, head_node or reshape
            depth += 1
        if depth == 0:
            raise self._fail(self.g.producer(x), "expected a transformer block after the patch embedding")

        spec = self._spec(d, depth, heads, patch, hidden, head_node)
        flat = self.only_user(norm_out, ("Reshape", "Flatten"), f"the reshape of the tokens to [N, {t * d}]")
        flat, _ = self.reshape(flat, norm_out, (_BATCH, t * d), "the reshape of the tokens")
        y = self.feature_head(flat, t * d, d, spec.bn_eps)
        if not self.g.is_output(y):
            users = self.users(y)
            raise self._fail(users[0] if users else self.g.producer(y),
                             "expected the embedding (feature.3) to be the graph's output")
        num_features = self.shapes[self.canon(y)][-1]
        arrays = self._arrays(spec, num_features)
        return Walk("vit", arrays, list(self.folded), list(self.stages), len(self.matched))

    def patch_embed(self, x: str) -> tuple[str, int, int]:
        conv = self.only_user(x, ("Conv",), "patch_embed.proj: the patch-embedding Conv of the input")
        weight = self.const(conv.input[1]) if len(conv.input) > 1 else None
        if weight is None or weight.ndim != 4 or weight.shape[1] != 3 or weight.shape[2] != weight.shape[3]:
            raise self._fail(conv, "expected patch_embed.proj: a Conv by a constant [D, 3, p, p] weight")
        d, patch = weight.shape[0], weight.shape[2]
        pads = self.attr(conv, "pads", [0, 0, 0, 0])
        strides, dilations = self.attr(conv, "strides", [1, 1]), self.attr(conv, "dilations", [1, 1])
        padding = any(pads) or self.attr(conv, "auto_pad", "NOTSET") not in ("NOTSET", "VALID")
        if (list(strides) != [patch, patch] or padding or self.attr(conv, "group", 1) != 1 or patch > IMG_SIZE
                or list(dilations) != [1, 1]):
            raise self._fail(conv, f"expected patch_embed.proj: a {patch}x{patch} Conv with stride {patch}, "
                             "no padding, dilation 1, group 1")
        grid = IMG_SIZE // patch
        shape = (_BATCH, d, grid, grid)
        out = self.out(conv, shape)
        bias = self.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        if len(conv.input) > 2 and conv.input[2] and (bias is None or bias.size != d):
            raise self._fail(conv, f"expected patch_embed.proj: a constant [{d}] bias")
        users = self.users(out)
        if bias is None and len(users) == 1 and users[0].op_type == "Add":  # the bias added after the Conv
            value = self.const(self.other_input(users[0], out))
            if value is not None and value.size == d and value.shape[-3:] == (d, 1, 1):
                bias, out = value, self.out(users[0], shape)
        self.params["patch_embed.proj.weight"] = weight
        self.params["patch_embed.proj.bias"] = np.zeros(d, np.float32) if bias is None else bias.reshape(d)
        self.stages.append(("patch_embed.proj", out))
        flat = self.only_user(out, ("Reshape",), f"patch_embed: the flattening to [N, {d}, {grid * grid}]")
        flat, _ = self.reshape(flat, out, (_BATCH, d, grid * grid), "patch_embed: the flattening")
        tr = self.only_user(flat, ("Transpose",), "patch_embed: the transposition (0, 2, 1)")
        if list(self.attr(tr, "perm")) != [0, 2, 1]:
            raise self._fail(tr, "expected patch_embed: the transposition (0, 2, 1)")
        tokens = self.out(tr, (_BATCH, grid * grid, d))
        self.stages.append(("patch_embed", tokens))
        add = self.only_user(tokens, ("Add",), f"pos_embed: an Add of a constant [1, {grid * grid}, {d}]")
        pos = self.const(self.other_input(add, tokens))
        if pos is None or pos.size != grid * grid * d or pos.shape[-2:] != (grid * grid, d):
            raise self._fail(add, f"expected pos_embed: an Add of a constant [1, {grid * grid}, {d}]")
        self.params["pos_embed"] = pos.reshape(1, grid * grid, d)
        return self.out(add, (_BATCH, grid * grid, d)), d, patch

    def feature_head(self, x: str, din: int, d: int, eps: float) -> str:
        """feature.0 (Linear, no bias) -> feature.1 (BatchNorm1d) -> feature.2 (Linear) -> feature.3."""
        for linear, norm, size in (("feature.0", "feature.1", d), ("feature.2", "feature.3", None)):
            x, size = self.linear(x, din, size, linear, "open")
            bias = self.params.pop(f"{linear}.bias", None)  # InsightFace's feature Linears have none
            if bias is None:  # else the Linear's own output is in no tensor of the graph
                self.stages.append((linear, x))
            x = self.batch_norm_1d(x, size, norm, eps, bias)
            self.stages.append((norm, x))
            din = size
        return x

    def _spec(self, d: int, depth: int, heads: int, patch: int, hidden: int, node: Any) -> ViTSpec:
        """The registered ViT with these dimensions (its BatchNorm epsilon and heads are checked), or a spec
        of them when none is registered (architecture detection then names the nearest)."""
        same = [architectures.spec_of(name) for name in architectures.names()
                if architectures.family_of(name) == "vit"]
        dims = (d, depth, patch, hidden)
        same = [s for s in same if (s.embed_dim, s.depth, s.patch_size, s.mlp_hidden) == dims]
        if same and all(s.num_heads != heads for s in same):
            want = " or ".join(str(h) for h in sorted({s.num_heads for s in same}))
            raise self._fail(node, f"expected {want} attention heads as the registered ViT of dim {d}, depth "
                             f"{depth}, patch {patch} has, got {heads}")
        match = [s for s in same if s.num_heads == heads]
        if match:
            return match[0]
        spec = ViTSpec(d, depth, num_heads=heads, patch_size=patch, mlp_ratio=hidden / d)
        if spec.mlp_hidden != hidden:
            raise self._fail(node, f"expected an MLP width that is a multiple of the width {d}, got {hidden}")
        return spec

    def _arrays(self, spec: ViTSpec, num_features: int) -> OrderedDict[str, np.ndarray]:
        arrays: OrderedDict[str, np.ndarray] = OrderedDict()
        for param in spec.layout(num_features):
            if param.dtype == "int64":
                arrays[param.key] = np.zeros(param.shape, np.int64)
            elif param.key == "mask_token":  # training only: in no inference graph
                arrays[param.key] = np.zeros(param.shape, np.float32)
            else:
                value = self.params.pop(param.key)
                assert value.shape == tuple(param.shape), (param.key, value.shape, param.shape)
                arrays[param.key] = np.ascontiguousarray(value, dtype=np.float32)
        assert not self.params, sorted(self.params)
        return arrays
