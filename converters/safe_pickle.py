"""Restricted unpickling for files users hand us (``.pdparams``, ``.bin`` verification packs, training
checkpoints).

``pickle.load`` and ``paddle.load`` execute whatever a pickle asks for: a crafted file runs a shell
command on load. An allow-list of globals on top of ``pickle.Unpickler`` is not enough either: numpy's
own reconstruction (``ndarray.__setstate__``, ``dtype.__setstate__``) accepts forged state, e.g. a
structured dtype with an object field whose ``hasobject`` flag was cleared, or a field offset far past
the item, and then reads raw file bytes as object pointers (the process dies with SIGSEGV).

So this module does not use ``pickle.Unpickler`` at all. It is a small pickle interpreter of its own
that understands the opcodes of protocols 0-5 needed for plain data (None, bools, ints, floats, str,
bytes, tuples, lists, dicts, sets) and rebuilds numpy arrays itself from validated parts: a dtype from a
short allow-list of plain numeric types, a shape of non-negative ints, and a buffer whose length must
equal ``prod(shape) * itemsize``. No numpy ``__setstate__`` ever runs on file contents.

Everything is bounded (``Limits``): every declared length is checked against the bytes the file still
holds before anything is allocated, ints are short, containers are counted, nesting depth is capped,
and reference cycles are refused (a shared object is counted once, so a DAG with 2**64 paths is walked
in time proportional to its size). Each refusal names the limit.
"""

from __future__ import annotations

import codecs
import io
import math
import os
import pickle
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import UserError


class UnsafePickle(pickle.UnpicklingError):
    """Base of everything the restricted reader raises for a refused, malformed or oversized pickle."""


class RefusedPickle(UnsafePickle):
    """The pickle asked for something outside the allow-list (a global, an opcode, an array type)."""


class PickleLimit(UnsafePickle):
    """The pickle exceeds one of the reader's limits (``Limits``)."""


class CorruptPickle(UnsafePickle):
    """The bytes are not a well-formed pickle (truncated, garbled, inconsistent)."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what one pickle may make the reader build.

    ``max_bytes`` bounds the bytes of all strings, bytes objects and arrays together; ``None`` means a
    multiple (``bytes_per_file_byte``) of the input's size plus 1 MiB, which every honest pickle meets
    (its payload is in the file). Lengths that a file declares are in any case checked against the bytes
    it still holds before anything is read.
    """

    max_depth: int = 100
    max_objects: int = 20_000_000
    max_bytes: int | None = None
    bytes_per_file_byte: int = 2
    max_string: int = 1 << 31
    max_int_bytes: int = 64
    max_ndim: int = 32

    def byte_budget(self, input_size: int) -> int:
        if self.max_bytes is not None:
            return self.max_bytes
        return self.bytes_per_file_byte * input_size + (1 << 20)


DEFAULT_LIMITS = Limits()

# (module, name) pairs a weights or image pickle legitimately needs; each is interpreted by this module,
# never imported and called
NUMPY_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol-5 arrays
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how protocol 0-2 pickles spell bytes objects
    # plain built-in types that protocols 0-3 spell as calls (empty bytes, bytearray, sets)
    *((module, name) for module in ("builtins", "__builtin__") for name in ("bytes", "bytearray", "set", "frozenset")),
})

# the array element types a user file may hold: plain numbers and bools (no object, void, structured,
# string, datetime or subarray types); keys are numpy's ``dtype.str`` without the byte order
PLAIN_DTYPES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"})
_DTYPE_ALIASES = {"bool": "b1", "int8": "i1", "int16": "i2", "int32": "i4", "int64": "i8", "uint8": "u1",
                  "uint16": "u2", "uint32": "u4", "uint64": "u8", "float16": "f2", "float32": "f4",
                  "float64": "f8", "complex64": "c8", "complex128": "c16", "?": "b1"}


def check_plain_dtype(dtype: np.dtype, where: str = "array") -> np.dtype:
    """``dtype`` itself if it is a plain number or bool type; otherwise ``RefusedPickle``."""
    if (dtype.names is not None or dtype.subdtype is not None or dtype.hasobject
            or dtype.str[1:] not in PLAIN_DTYPES):
        raise RefusedPickle(f"refused a {where} of type {dtype!s} (only plain numeric and bool arrays are allowed)")
    return dtype


# ------------------------------------------------------------------------------------------ internals
class _Marker:
    """A resolved allowed global: what the interpreter does when it is called with REDUCE."""

    def __init__(self, kind: str, qualname: str):
        self.kind, self.qualname = kind, qualname

    def __repr__(self) -> str:
        return self.qualname


_HANDLERS = {
    "_reconstruct": "reconstruct", "scalar": "scalar", "_frombuffer": "frombuffer", "ndarray": "ndarray",
    "dtype": "dtype", "OrderedDict": "ordereddict", "encode": "encode", "bytes": "bytes",
    "bytearray": "bytearray", "set": "set", "frozenset": "frozenset",
}


class _DtypeRef:
    """A dtype under construction: ``dtype('f4', False, True)`` then BUILD with its byte order."""

    __slots__ = ("dtype", "built")

    def __init__(self, dtype: np.dtype):
        self.dtype, self.built = dtype, False


class _PendingArray:
    """``_reconstruct(ndarray, (0,), b'b')``: an array whose BUILD state has not been applied yet."""

    __slots__ = ("array",)

    def __init__(self):
        self.array: np.ndarray | None = None


class _Mark:
    __slots__ = ()


_MARK = _Mark()


class _Interpreter:
    def __init__(self, fh: IO[bytes], size: int, allowed: frozenset, limits: Limits, encoding: str):
        self.fh = fh
        self.end = size
        self.allowed = allowed
        self.limits = limits
        self.encoding = encoding
        self.budget = limits.byte_budget(size)
        self.used = 0
        self.stack: list[Any] = []
        self.marks: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.pending: list[_PendingArray] = []

    # ------------------------------------------------------------------ reading
    def remaining(self) -> int:
        return self.end - self.fh.tell()

    def read(self, n: int) -> bytes:
        if n < 0:
            raise CorruptPickle(f"negative length {n}")
        left = self.remaining()
        if n > left:
            raise CorruptPickle(f"declares {n} bytes but only {left} remain (truncated or forged)")
        data = self.fh.read(n)
        if len(data) != n:
            raise CorruptPickle("truncated")
        return data

    def read_into_bytearray(self, n: int) -> bytearray:
        left = self.remaining()
        if n > left:
            raise CorruptPickle(f"declares {n} bytes but only {left} remain (truncated or forged)")
        self.charge(n)
        buf = bytearray(n)
        if self.fh.readinto(buf) != n:
            raise CorruptPickle("truncated")
        return buf

    def readline(self, limit: int = 1 << 16) -> bytes:
        line = self.fh.readline(limit + 1)
        if not line.endswith(b"\n"):
            raise CorruptPickle("unterminated or over-long text line")
        return line[:-1]

    def charge(self, n: int) -> None:
        self.used += n
        if self.used > self.budget:
            raise PickleLimit(f"the pickle declares more than {self.budget} bytes of data in total (limit "
                              "max_bytes; a small file cannot honestly hold that much)")

    def sized(self, n: int, what: str) -> bytes:
        if n > self.remaining():
            raise CorruptPickle(f"a {what} declares {n} bytes but only {self.remaining()} remain (truncated "
                                "or forged)")
        if n > self.limits.max_string:
            raise PickleLimit(f"a {what} of {n} bytes exceeds the limit of {self.limits.max_string} (max_string)")
        self.charge(n)
        return self.read(n)

    def text(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as err:
            raise CorruptPickle(f"invalid UTF-8 in a string: {err.reason}") from None

    def py2_string(self, raw: bytes) -> Any:
        """A Python-2 ``str``: bytes with ``encoding='bytes'``, else text if it is ASCII, else bytes."""
        if self.encoding == "bytes":
            return raw
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            return raw

    def small_int(self, raw: bytes) -> int:
        if len(raw) > self.limits.max_int_bytes:
            raise PickleLimit(f"an integer of {len(raw)} bytes exceeds the limit of {self.limits.max_int_bytes}")
        return int.from_bytes(raw, "little", signed=True)

    # ------------------------------------------------------------------ stack
    def pop(self) -> Any:
        if not self.stack:
            raise CorruptPickle("stack underflow")
        return self.stack.pop()

    def top(self) -> Any:
        if not self.stack:
            raise CorruptPickle("stack underflow")
        return self.stack[-1]

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise CorruptPickle("no MARK on the stack")
        items = self.stack
        self.stack = self.marks.pop()
        return items

    def get(self, index: int) -> Any:
        try:
            return self.memo[index]
        except KeyError:
            raise CorruptPickle(f"memo entry {index} was never stored") from None

    def put(self, index: int) -> None:
        if len(self.memo) >= self.limits.max_objects and index not in self.memo:
            raise PickleLimit(f"more than {self.limits.max_objects} memo entries (max_objects)")
        self.memo[index] = self.top()

    # ------------------------------------------------------------------ globals and calls
    def find_global(self, module: str, name: str) -> _Marker:
        if (module, name) not in self.allowed or name not in _HANDLERS:
            raise RefusedPickle(f"refused to load {module}.{name} (only numpy arrays and plain containers "
                                "are allowed; the file may be malicious)")
        return _Marker(_HANDLERS[name], f"{module}.{name}")

    def call(self, func: Any, args: Any) -> Any:
        if not isinstance(func, _Marker):
            raise RefusedPickle(f"refused to call a {type(func).__name__} (only allowed numpy and container "
                                "constructors can be called)")
        if not isinstance(args, tuple):
            raise CorruptPickle(f"{func.qualname} called with a {type(args).__name__}, not a tuple")
        kind = func.kind
        if kind == "dtype":
            return _DtypeRef(_dtype_from_spec(args))
        if kind == "reconstruct":
            if not (len(args) == 3 and isinstance(args[0], _Marker) and args[0].kind == "ndarray"):
                raise RefusedPickle(f"{func.qualname} may only rebuild a plain numpy.ndarray")
            pending = _PendingArray()
            self.pending.append(pending)
            return pending
        if kind == "frombuffer":
            if len(args) != 4:
                raise CorruptPickle(f"{func.qualname} expects (buffer, dtype, shape, order)")
            buf, dtype, shape, order = args
            if order not in ("C", "F"):
                raise CorruptPickle(f"array order {order!r}")
            return self.array(buf, dtype, shape, order == "F")
        if kind == "scalar":
            if len(args) != 2:
                raise CorruptPickle(f"{func.qualname} expects (dtype, bytes)")
            dtype = self.resolved_dtype(args[0])
            data = _raw_bytes(args[1])
            if data is None or len(data) != dtype.itemsize:
                raise CorruptPickle(f"a {dtype} scalar needs exactly {dtype.itemsize} bytes")
            return np.frombuffer(data, dtype=dtype, count=1)[0]
        if kind == "ordereddict":
            if args == ():
                return OrderedDict()
            if len(args) == 1 and isinstance(args[0], list) and all(
                    isinstance(p, (list, tuple)) and len(p) == 2 for p in args[0]):
                try:
                    return OrderedDict(args[0])
                except TypeError as err:
                    raise CorruptPickle(f"OrderedDict items: {err}") from None
            raise CorruptPickle("OrderedDict expects no arguments or a list of pairs")
        if kind == "encode":
            if not (len(args) in (1, 2) and isinstance(args[0], str)
                    and (len(args) == 1 or args[1] in ("latin1", "latin-1", "iso-8859-1"))):
                raise RefusedPickle("_codecs.encode is only allowed as (str, 'latin1'), how pickles spell bytes")
            try:
                return args[0].encode("latin1")
            except UnicodeEncodeError:
                raise CorruptPickle("a byte string with characters above U+00FF") from None
        if kind in ("bytes", "bytearray"):
            if args == ():
                return b"" if kind == "bytes" else bytearray()
            if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
                return bytes(args[0]) if kind == "bytes" else bytearray(args[0])
            if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin-1", "latin1"):
                return self.call(_Marker(kind, func.qualname), (self.call(_Marker("encode", "encode"), args),))
            raise RefusedPickle(f"{func.qualname} is only allowed with bytes or (str, 'latin-1')")
        if kind in ("set", "frozenset"):
            items = args[0] if len(args) == 1 else () if args == () else None
            if not isinstance(items, (list, tuple)):
                raise RefusedPickle(f"{func.qualname} is only allowed with a list of items")
            try:
                return set(items) if kind == "set" else frozenset(items)
            except TypeError as err:
                raise CorruptPickle(f"bad set item: {err}") from None
        raise RefusedPickle(f"refused to call {func.qualname}")

    def resolved_dtype(self, value: Any) -> np.dtype:
        if not isinstance(value, _DtypeRef):
            raise CorruptPickle(f"expected a numpy dtype, found a {type(value).__name__}")
        return value.dtype

    def array(self, buf: Any, dtype_ref: Any, shape: Any, fortran: bool, native: bool = False) -> np.ndarray:
        dtype = self.resolved_dtype(dtype_ref)
        if isinstance(shape, int) and not isinstance(shape, bool):
            shape = (shape,)
        if not (isinstance(shape, tuple) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
            raise CorruptPickle("array shape is not a tuple of integers")
        if len(shape) > self.limits.max_ndim:
            raise PickleLimit(f"an array with {len(shape)} dimensions exceeds the limit of {self.limits.max_ndim}")
        if any(d < 0 for d in shape):
            raise CorruptPickle(f"negative array dimension in {list(shape)}")
        expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
        if isinstance(buf, bytearray):
            raw: Any = buf
        else:
            raw = _raw_bytes(buf)
            if raw is None:
                raise RefusedPickle(f"array data is a {type(buf).__name__}, not bytes (object arrays are refused)")
        if len(raw) != expected:
            raise CorruptPickle(f"array of shape {list(shape)} and type {dtype} needs {expected} bytes, "
                                f"the file gives {len(raw)}")
        count = expected // dtype.itemsize if dtype.itemsize else 0
        flat = np.frombuffer(raw, dtype=dtype, count=count)
        if native and not dtype.isnative:  # numpy's protocol 0-4 unpickling gives native byte order (same values)
            self.charge(expected)
            flat = flat.astype(dtype.newbyteorder("="))
        elif not isinstance(raw, bytearray):  # an immutable buffer: a writable copy, as numpy's unpickling gives
            self.charge(expected)
            flat = flat.copy()
        return flat.reshape(shape, order="F" if fortran else "C")

    def build(self, target: Any, state: Any) -> None:
        if isinstance(target, _DtypeRef):
            if target.built:
                raise CorruptPickle("a dtype built twice")
            target.dtype = _dtype_with_state(target.dtype, state)
            target.built = True
            return
        if isinstance(target, _PendingArray):
            if target.array is not None:
                raise CorruptPickle("an array built twice")
            if not isinstance(state, tuple) or len(state) not in (4, 5):
                raise CorruptPickle("array state is not (version, shape, dtype, is_fortran, data)")
            if len(state) == 5:
                version, shape, dtype, fortran, data = state
                if version != 1:
                    raise CorruptPickle(f"array state version {version!r}")
            else:
                shape, dtype, fortran, data = state
            if fortran not in (0, 1):
                raise CorruptPickle("array is_fortran flag is not a bool")
            target.array = self.array(data, dtype, shape, bool(fortran), native=True)
            return
        raise RefusedPickle(f"refused to set the state of a {type(target).__name__} (BUILD is only allowed "
                            "for numpy arrays and dtypes)")

    # ------------------------------------------------------------------ the loop
    def run(self) -> Any:
        read, stack = self.read, self.stack
        ops = 0
        while True:
            code = self.fh.read(1)
            if not code:
                raise CorruptPickle("ran out of input before STOP")
            ops += 1
            if ops > self.limits.max_objects * 4:
                raise PickleLimit(f"more than {self.limits.max_objects * 4} opcodes (max_objects)")
            op = code[0]
            stack = self.stack
            if op == 0x2E:  # STOP
                result = self.pop()
                return self.finish(result)
            handler = _OPS.get(op)
            if handler is None:
                name = _REFUSED_OPS.get(op)
                if name:
                    raise RefusedPickle(f"refused opcode {name} (it builds arbitrary objects or external references)")
                raise CorruptPickle(f"unknown opcode 0x{op:02x} at byte {self.fh.tell() - 1}")
            handler(self, read, stack)

    # ------------------------------------------------------------------ the result
    def finish(self, root: Any) -> Any:
        """Check the object graph and resolve pending arrays: no cycles, bounded depth, and a bounded
        number of objects as a naive recursive walk would see them.

        One post-order walk visits each container once (a DAG costs its size, not its number of paths)
        and records each container's height and expanded size (the objects reachable through every
        path), so the limits hold along every path through shared objects: a 1 KB list DAG with 2**64
        paths is refused at once, and a consumer that recurses through the result stays bounded."""
        for pending in self.pending:
            if pending.array is None:
                raise CorruptPickle("an array was created but never given its data")
        root = _resolve(root)
        if not _is_container(root):
            _check_leaf(root)
            return root
        limits = self.limits
        seen: dict[int, tuple[int, int]] = {}  # id -> (height, expanded size)
        on_path = {id(root)}
        frames: list[list[Any]] = [[root, _children(root), 0, 1]]  # container, children, height, size
        while frames:
            frame = frames[-1]
            child = next(frame[1], _MARK)
            if child is _MARK:  # every child done: the container's height and size are known
                frames.pop()
                on_path.discard(id(frame[0]))
                seen[id(frame[0])] = (frame[2] + 1, frame[3])
                if frames:
                    self._absorb(frames, frames[-1], frame[2] + 1, frame[3])
                continue
            if not _is_container(child):
                _check_leaf(child)
                self._absorb(frames, frame, 0, 1)
                continue
            key = id(child)
            if key in on_path:
                raise RefusedPickle("refused a reference cycle (a container that contains itself)")
            if key in seen:  # shared: measured once, counted along this path too
                self._absorb(frames, frame, *seen[key])
                continue
            if len(frames) >= limits.max_depth:
                raise PickleLimit(f"containers nested deeper than {limits.max_depth} levels (max_depth)")
            on_path.add(key)
            frames.append([child, _children(child), 0, 1])
        return root

    def _absorb(self, frames: list, frame: list, height: int, size: int) -> None:
        """Add a finished child (``height``, expanded ``size``) to its parent ``frame``."""
        frame[2] = max(frame[2], height)
        frame[3] += size
        limits = self.limits
        if len(frames) + height > limits.max_depth:
            raise PickleLimit(f"containers nested deeper than {limits.max_depth} levels (max_depth)")
        if frame[3] > limits.max_objects:
            raise PickleLimit(f"more than {limits.max_objects} objects, counting every path through shared "
                              "references (max_objects)")


def _resolve(value: Any) -> Any:
    if isinstance(value, _PendingArray):
        if value.array is None:
            raise CorruptPickle("an array was used before it was given its data")
        return value.array
    return value


def _is_container(value: Any) -> bool:
    return isinstance(value, (list, tuple, dict, set, frozenset))


def _children(value: Any):
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield item
    elif _is_container(value):
        yield from value


def _check_leaf(value: Any) -> None:
    if isinstance(value, (_DtypeRef, _Marker, _PendingArray)):
        what = "numpy dtype" if isinstance(value, _DtypeRef) else repr(value)
        raise RefusedPickle(f"refused a bare {what} outside an array")


def _raw_bytes(value: Any) -> bytes | bytearray | None:
    if isinstance(value, (bytes, bytearray)):
        return value
    if isinstance(value, str):  # a Python-2 str read as text keeps its bytes in latin-1
        try:
            return value.encode("latin1")
        except UnicodeEncodeError:
            return None
    return None


def _dtype_from_spec(args: tuple) -> np.dtype:
    if not args or len(args) > 3:
        raise CorruptPickle("numpy.dtype expects (spec, align, copy)")
    spec = args[0]
    if isinstance(spec, bytes):
        spec = spec.decode("ascii", "replace")
    if not isinstance(spec, str):
        raise RefusedPickle(f"refused a numpy dtype built from a {type(spec).__name__}")
    code = _DTYPE_ALIASES.get(spec, spec.lstrip("<>|="))
    if code not in PLAIN_DTYPES:
        raise RefusedPickle(f"refused an array of type {spec!r} (only plain numeric and bool arrays are allowed)")
    return np.dtype(code)


def _dtype_with_state(dtype: np.dtype, state: Any) -> np.dtype:
    """Apply a dtype's pickled state after checking it describes a plain type: ``(3, '<', None, None,
    None, -1, -1, 0)`` (version 4 adds a metadata slot that must be empty)."""
    if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)):
        raise RefusedPickle("refused a numpy dtype state that is not a plain type's")
    _, order, subarray, names, fields, elsize, alignment, flags = state[:8]
    if len(state) == 9 and state[8] not in (None, {}):
        raise RefusedPickle("refused a numpy dtype with metadata")
    if subarray is not None or names is not None or fields is not None:
        raise RefusedPickle("refused a structured or subarray numpy dtype (only plain numeric types are allowed)")
    if elsize not in (-1, dtype.itemsize) or alignment not in (-1, dtype.alignment) or flags not in (0, 1):
        raise RefusedPickle("refused a numpy dtype whose size, alignment or flags were altered")
    if isinstance(order, bytes):
        order = order.decode("ascii", "replace")
    if order not in ("<", ">", "|", "="):
        raise RefusedPickle(f"refused a numpy dtype with byte order {order!r}")
    if order in ("<", ">") and dtype.itemsize > 1:
        dtype = dtype.newbyteorder(order)
    return check_plain_dtype(dtype)


# ------------------------------------------------------------------------------------------ opcodes
def _unpack(fmt: str):
    s = struct.Struct(fmt)
    return lambda data: s.unpack(data)[0]


_u1, _u2, _u4, _u8 = (_unpack(f) for f in ("<B", "<H", "<I", "<Q"))
_i4 = _unpack("<i")
_f8 = _unpack(">d")


def _op_mark(vm, read, stack):
    vm.marks.append(stack)
    vm.stack = []


def _op_pop(vm, read, stack):
    if stack:
        stack.pop()
    else:
        vm.pop_mark()


def _op_pop_mark(vm, read, stack):
    vm.pop_mark()


def _op_dup(vm, read, stack):
    stack.append(vm.top())


def _op_int(vm, read, stack):
    line = vm.readline(vm.limits.max_int_bytes * 3)
    if line == b"00":
        stack.append(False)
    elif line == b"01":
        stack.append(True)
    else:
        try:
            stack.append(int(line))
        except ValueError:
            raise CorruptPickle("bad INT literal") from None


def _op_long(vm, read, stack):
    line = vm.readline(vm.limits.max_int_bytes * 3)
    try:
        stack.append(int(line[:-1] if line.endswith(b"L") else line))
    except ValueError:
        raise CorruptPickle("bad LONG literal") from None


def _op_float(vm, read, stack):
    try:
        stack.append(float(vm.readline(64)))
    except ValueError:
        raise CorruptPickle("bad FLOAT literal") from None


def _op_string(vm, read, stack):
    line = vm.readline(vm.limits.max_string).rstrip()
    if len(line) < 2 or line[0] != line[-1] or line[:1] not in (b"'", b'"'):
        raise CorruptPickle("STRING literal is not quoted")
    vm.charge(len(line))
    try:
        stack.append(vm.py2_string(codecs.escape_decode(line[1:-1])[0]))
    except ValueError:
        raise CorruptPickle("bad STRING escape") from None


def _op_unicode(vm, read, stack):
    line = vm.readline(vm.limits.max_string)
    vm.charge(len(line))
    try:
        stack.append(line.decode("raw-unicode-escape"))
    except UnicodeDecodeError:
        raise CorruptPickle("bad UNICODE literal") from None


def _push(fn):
    return lambda vm, read, stack: stack.append(fn(vm, read))


def _op_append(vm, read, stack):
    value = vm.pop()
    target = vm.top()
    if not isinstance(target, list):
        raise RefusedPickle(f"refused APPEND to a {type(target).__name__}")
    target.append(_resolve(value))


def _op_appends(vm, read, stack):
    items = vm.pop_mark()
    target = vm.top()
    if not isinstance(target, list):
        raise RefusedPickle(f"refused APPENDS to a {type(target).__name__}")
    target.extend(_resolve(v) for v in items)


def _setitems(vm, items):
    if len(items) % 2:
        raise CorruptPickle("odd number of items for SETITEMS")
    target = vm.top()
    if not isinstance(target, dict):
        raise RefusedPickle(f"refused SETITEM on a {type(target).__name__}")
    try:
        for i in range(0, len(items), 2):
            target[_resolve(items[i])] = _resolve(items[i + 1])
    except TypeError as err:
        raise CorruptPickle(f"bad dict key: {err}") from None


def _op_setitem(vm, read, stack):
    value = vm.pop()
    key = vm.pop()
    _setitems(vm, [key, value])


def _op_setitems(vm, read, stack):
    _setitems(vm, vm.pop_mark())


def _op_dict(vm, read, stack):
    items = vm.pop_mark()
    vm.stack.append({})
    _setitems(vm, items)


def _op_list(vm, read, stack):
    items = vm.pop_mark()  # (replaces vm.stack: read it only afterwards)
    vm.stack.append([_resolve(v) for v in items])


def _op_tuple(vm, read, stack):
    items = vm.pop_mark()
    vm.stack.append(tuple(_resolve(v) for v in items))


def _tuple_n(n):
    def op(vm, read, stack):
        if len(stack) < n:
            raise CorruptPickle("stack underflow")
        items = tuple(_resolve(v) for v in stack[len(stack) - n:])
        del stack[len(stack) - n:]
        stack.append(items)
    return op


def _op_additems(vm, read, stack):
    items = vm.pop_mark()
    target = vm.top()
    if not isinstance(target, set):
        raise RefusedPickle(f"refused ADDITEMS on a {type(target).__name__}")
    try:
        target.update(_resolve(v) for v in items)
    except TypeError as err:
        raise CorruptPickle(f"bad set item: {err}") from None


def _op_frozenset(vm, read, stack):
    items = vm.pop_mark()
    try:
        vm.stack.append(frozenset(_resolve(v) for v in items))
    except TypeError as err:
        raise CorruptPickle(f"bad set item: {err}") from None


def _op_get(vm, read, stack):
    try:
        stack.append(vm.get(int(vm.readline(32))))
    except ValueError:
        raise CorruptPickle("bad GET index") from None


def _op_put(vm, read, stack):
    try:
        vm.put(int(vm.readline(32)))
    except ValueError:
        raise CorruptPickle("bad PUT index") from None


def _op_memoize(vm, read, stack):
    vm.put(len(vm.memo))


def _op_global(vm, read, stack):
    module = vm.readline(256).decode("utf-8", "replace")
    name = vm.readline(256).decode("utf-8", "replace")
    stack.append(vm.find_global(module, name))


def _op_stack_global(vm, read, stack):
    name = vm.pop()
    module = vm.pop()
    if not (isinstance(module, str) and isinstance(name, str)):
        raise CorruptPickle("STACK_GLOBAL needs two strings")
    stack.append(vm.find_global(module, name))


def _op_reduce(vm, read, stack):
    args = vm.pop()
    func = vm.pop()
    vm.stack.append(vm.call(func, args))


def _op_build(vm, read, stack):
    state = _resolve(vm.pop())
    vm.build(vm.top(), state)


def _op_proto(vm, read, stack):
    proto = read(1)[0]
    if proto > 5:
        raise CorruptPickle(f"unsupported pickle protocol {proto}")


def _op_frame(vm, read, stack):
    length = _u8(read(8))
    if length > vm.remaining():
        raise CorruptPickle(f"a frame of {length} bytes but only {vm.remaining()} remain (truncated or forged)")


def _op_long_n(size_fn, nbytes):
    def op(vm, read, stack):
        n = size_fn(read(nbytes))
        if n > vm.limits.max_int_bytes:
            raise PickleLimit(f"an integer of {n} bytes exceeds the limit of {vm.limits.max_int_bytes}")
        stack.append(vm.small_int(read(n)))
    return op


def _bytes_op(size_fn, nbytes, kind):
    def op(vm, read, stack):
        n = size_fn(read(nbytes))
        if kind == "bytearray":
            if n > vm.limits.max_string and n <= vm.remaining():
                raise PickleLimit(f"a bytearray of {n} bytes exceeds the limit of {vm.limits.max_string}")
            stack.append(vm.read_into_bytearray(n))
        elif kind == "bytes":
            stack.append(vm.sized(n, "bytes object"))
        elif kind == "str":
            stack.append(vm.text(vm.sized(n, "string")))
        else:  # a Python-2 str
            stack.append(vm.py2_string(vm.sized(n, "string")))
    return op


def _op_binstring(vm, read, stack):
    n = _i4(read(4))
    if n < 0:
        raise CorruptPickle("negative BINSTRING length")
    stack.append(vm.py2_string(vm.sized(n, "string")))


_OPS = {
    ord("("): _op_mark,
    ord("0"): _op_pop,
    ord("1"): _op_pop_mark,
    ord("2"): _op_dup,
    ord("F"): _op_float,
    ord("I"): _op_int,
    ord("J"): _push(lambda vm, read: _i4(read(4))),
    ord("K"): _push(lambda vm, read: read(1)[0]),
    ord("M"): _push(lambda vm, read: _u2(read(2))),
    ord("L"): _op_long,
    ord("N"): _push(lambda vm, read: None),
    ord("R"): _op_reduce,
    ord("S"): _op_string,
    ord("T"): _op_binstring,
    ord("U"): _bytes_op(lambda b: b[0], 1, "py2str"),
    ord("V"): _op_unicode,
    ord("X"): _bytes_op(_u4, 4, "str"),
    ord("a"): _op_append,
    ord("b"): _op_build,
    ord("c"): _op_global,
    ord("d"): _op_dict,
    ord("}"): _push(lambda vm, read: {}),
    ord("e"): _op_appends,
    ord("g"): _op_get,
    ord("h"): _push(lambda vm, read: vm.get(read(1)[0])),
    ord("j"): _push(lambda vm, read: vm.get(_u4(read(4)))),
    ord("l"): _op_list,
    ord("]"): _push(lambda vm, read: []),
    ord("p"): _op_put,
    ord("q"): lambda vm, read, stack: vm.put(read(1)[0]),
    ord("r"): lambda vm, read, stack: vm.put(_u4(read(4))),
    ord("s"): _op_setitem,
    ord("t"): _op_tuple,
    ord(")"): _push(lambda vm, read: ()),
    ord("u"): _op_setitems,
    ord("G"): _push(lambda vm, read: _f8(read(8))),
    0x80: _op_proto,
    0x85: _tuple_n(1),
    0x86: _tuple_n(2),
    0x87: _tuple_n(3),
    0x88: _push(lambda vm, read: True),
    0x89: _push(lambda vm, read: False),
    0x8A: _op_long_n(lambda b: b[0], 1),
    0x8B: _op_long_n(_i4, 4),
    ord("B"): _bytes_op(_u4, 4, "bytes"),
    ord("C"): _bytes_op(lambda b: b[0], 1, "bytes"),
    0x8C: _bytes_op(lambda b: b[0], 1, "str"),
    0x8D: _bytes_op(_u8, 8, "str"),
    0x8E: _bytes_op(_u8, 8, "bytes"),
    0x8F: _push(lambda vm, read: set()),
    0x90: _op_additems,
    0x91: _op_frozenset,
    0x93: _op_stack_global,
    0x94: _op_memoize,
    0x95: _op_frame,
    0x96: _bytes_op(_u8, 8, "bytearray"),
}

_REFUSED_OPS = {
    ord("P"): "PERSID", ord("Q"): "BINPERSID", ord("i"): "INST", ord("o"): "OBJ", 0x81: "NEWOBJ",
    0x92: "NEWOBJ_EX", 0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4", 0x97: "NEXT_BUFFER", 0x98: "READONLY_BUFFER",
}


# ------------------------------------------------------------------------------------------ public API
def _load(fh: IO[bytes], size: int, allowed: frozenset, limits: Limits | None, encoding: str) -> Any:
    try:
        return _Interpreter(fh, size, allowed, limits or DEFAULT_LIMITS, encoding).run()
    except UnsafePickle:
        raise
    except MemoryError:
        raise PickleLimit("not enough memory for what the pickle declares") from None
    except (struct.error, OverflowError, ValueError, TypeError, IndexError) as err:
        raise CorruptPickle(f"{type(err).__name__}: {str(err)[:160]}") from None


def safe_loads(data: bytes, encoding: str = "ASCII", allowed: frozenset = NUMPY_GLOBALS,
               limits: Limits | None = None) -> Any:
    """Unpickle bytes with the allow-list; ``encoding='bytes'`` keeps every Python-2 ``str`` as bytes
    (by default an ASCII one becomes ``str`` and any other stays ``bytes``)."""
    return _load(io.BytesIO(data), len(data), allowed, limits, "bytes" if encoding == "bytes" else "ASCII")


def safe_load(path: str | Path, allowed: frozenset = NUMPY_GLOBALS, limits: Limits | None = None) -> Any:
    """Unpickle a file with the ``allowed`` globals and ``limits``; raises ``UnsafePickle`` subclasses.

    The file is streamed, not read into memory first: array data is read straight into the arrays'
    buffers (protocol 5), so they are the only copy of the data.
    """
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        return _load(fh, size, allowed, limits, "ASCII")


def load_user_pickle(path: str | Path, what: str, allowed: frozenset = NUMPY_GLOBALS,
                     limits: Limits | None = None) -> Any:
    """``safe_load`` for a user's file: a refused, oversized or unreadable pickle is a one-line
    ``UserError`` naming the file and ``what`` it should have been (e.g. ``".pdparams file"``)."""
    try:
        return safe_load(path, allowed, limits)
    except (RefusedPickle, PickleLimit) as err:
        raise UserError(path, f"refused: {err}") from None
    except CorruptPickle as err:
        raise UserError(path, f"not a readable {what} ({err})") from None
    except IsADirectoryError:
        raise UserError(path, f"is a directory, expected a {what}") from None
    except FileNotFoundError:
        raise UserError(path, "no such file") from None
    except OSError as err:
        raise UserError(path, f"cannot read: {err.strerror or err}") from None
