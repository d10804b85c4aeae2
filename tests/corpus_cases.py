"""The bad-input corpus: every command-line tool handed crafted, damaged or careless input.

Each ``Case`` writes its bad input(s) into an empty folder ``d`` and returns the tool's arguments. The
harness (tests/test_bad_input_corpus.py) then requires of every case: exit code 2, exactly one stderr
line ``error: ...`` naming ``names`` (any one of them; ``{d}`` is the case folder), no traceback, no file
created or changed under ``d`` (inputs hashed before and after), no ``PWNED`` marker from a hostile
payload, and all of it within 30 s.

The crafted files are built here, from first principles (raw pickle opcodes, hand-made ``.npy`` headers,
a hand-made PNG), so that they do not depend on the code under test.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ARCFACE_SHARED_DATA", ROOT.parent / "shared" / "data"))
MARKER = "PWNED"  # a hostile payload touches {d}/PWNED
META_KEY = "__arcface_bridge__"
ARCH, FEATURES = "mbf", 128  # the smallest model: a valid checkpoint is ~4 MB


# ===================================================================================== crafted payloads
class RunsCommand:
    """Unpickling this runs ``touch <marker>`` through ``os.system``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class RunsEval:
    """Unpickling this runs ``builtins.eval`` of code that touches the marker."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import builtins

        return (builtins.eval, (f"__import__('os').system('touch {self.marker}')",))


class _ForgedDtype:
    """Pickles as ``numpy.dtype(*args)`` followed by ``dtype.__setstate__(state)`` with a state we choose."""

    def __init__(self, args: tuple, state: tuple):
        self.args, self.state = args, state

    def __reduce__(self):
        return (np.dtype, self.args, self.state)


class _ForgedArray:
    """Pickles as numpy's own ``_reconstruct`` + ``ndarray.__setstate__`` with a forged dtype and raw bytes."""

    def __init__(self, shape: tuple, dtype: _ForgedDtype, raw: bytes):
        self.shape, self.dtype, self.raw = shape, dtype, raw

    def __reduce__(self):
        try:
            from numpy._core.multiarray import _reconstruct  # numpy 2
        except ImportError:
            from numpy.core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (0,), b"b"), (1, self.shape, self.dtype, False, self.raw))


def forged_hasobject(n: int = 4) -> _ForgedArray:
    """A structured array with an object field whose ``hasobject`` flag was cleared through
    ``dtype.__setstate__``: its raw bytes (0x41...) would be read as PyObject pointers."""
    state = (3, "|", None, ("a", "b"), {"a": (np.dtype("O"), 0), "b": (np.dtype("<f4"), 8)}, 12, 1, 0)
    return _ForgedArray((n,), _ForgedDtype(("V12", False, True), state), b"\x41" * (12 * n))


def forged_offset(shape: tuple = (4,)) -> _ForgedArray:
    """A float32 array whose dtype has a field 1 GiB past its 4-byte item."""
    n = int(np.prod(shape))
    state = (3, "<", None, ("a",), {"a": (np.dtype("<f4"), 1 << 30)}, 4, 4, 0)
    return _ForgedArray(shape, _ForgedDtype(("f4", False, True), state), b"\0" * (4 * n))


def cycle_pickle() -> bytes:
    """24 bytes: protocol 4, one frame, a list that contains itself four times (``l = []; l += [l] * 4``)."""
    body = b"]\x94(h\x00h\x00h\x00h\x00e."
    return b"\x80\x04\x95" + struct.pack("<Q", len(body)) + body


def cycle_pickle_v2() -> bytes:
    """24 bytes, protocol 2 (no FRAME opcode, which torch's weights-only unpickler refuses before reading on):
    a list that contains itself eight times."""
    return b"\x80\x02]q\x00(" + b"h\x00" * 8 + b"e."


def dag_pickle(levels: int = 64, protocol: int = 4) -> bytes:
    """~400 bytes: 64 levels of ``[a, a]``, each level memo-referencing the one below: 2**64 paths to the bottom."""
    node: list = []
    for _ in range(levels):
        node = [node, node]
    return pickle.dumps(node, protocol=protocol)


def size_bomb_pickle() -> bytes:
    """11 bytes: protocol 4, BINBYTES8 declaring a 2**64 - 1 byte string."""
    return b"\x80\x04\x8e" + b"\xff" * 8


def size_bomb_pickle_v2() -> bytes:
    """7 bytes, protocol 2: BINUNICODE declaring a 4 GiB string (the largest length protocol 2 can declare)."""
    return b"\x80\x02X" + b"\xff" * 4


def npy_bomb() -> bytes:
    """A .npy header declaring float32 10**12 x 512 (2 PB), followed by 64 bytes of data."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 512), }"
    header += " " * (64 - (10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\0" * 64


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A 1-bit greyscale PNG of width x height zeros: ~110 KB on disk, 2.7 GB decoded as BGR."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    block = row * 1000
    body = b"".join(comp.compress(block) for _ in range(height // 1000)) + comp.compress(row * (height % 1000))
    body += comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def jpeg(seed: int) -> bytes:
    import cv2

    image = np.random.default_rng(seed).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    return buf.tobytes()


def onnx_fixed_batch() -> bytes:
    """An ONNX model that loads and declares input [1, 3, 112, 112] -> [1, 8] (batch fixed to 1): it
    passes every static check and fails inside onnxruntime as soon as a batch of more than one image runs."""
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [3, 8], np.ones(24, np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["data"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["fc1"])],
        "fixed_batch", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 8])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model.SerializeToString()


# ================================================================================ valid material, cached
class Resources:
    """Valid inputs shared by the cases (built once per session in ``scratch``)."""

    def __init__(self, scratch: Path, runner: Callable | None = None):
        self.scratch = scratch
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.runner = runner  # (cli, argv) -> Outcome, for the training run that makes a real checkpoint
        self._cache: dict = {}

    def _once(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    # -- weights
    def torch_state(self) -> OrderedDict:
        """A complete mbf-128 InsightFace state_dict (zeros, ones for BN variances and weights)."""
        def make():
            import torch

            from converters.mapping import layout

            state = OrderedDict()
            for e in layout(ARCH, FEATURES):
                dtype = torch.int64 if e.torch_dtype == "int64" else torch.float32
                fill = 1 if e.torch_key.endswith(("running_var", "bn.weight")) else 0
                state[e.torch_key] = torch.full(e.torch_shape, fill, dtype=dtype)
            return state
        return OrderedDict(self._once("torch_state", make))

    def pth_bytes(self, state=None) -> bytes:
        import torch

        buf = io.BytesIO()
        torch.save(self.torch_state() if state is None else state, buf)
        return buf.getvalue()

    def paddle_arrays(self) -> OrderedDict:
        def make():
            from converters.mapping import layout

            return OrderedDict((e.paddle_key, np.zeros(e.paddle_shape, np.float32))
                               for e in layout(ARCH, FEATURES) if e.paddle_key)
        return OrderedDict(self._once("paddle_arrays", make))

    def pdparams_bytes(self, meta=None, **replace) -> bytes:
        payload = self.paddle_arrays()
        payload.update(replace)
        payload[META_KEY] = {"arch": ARCH, "num_features": FEATURES} if meta is None else meta
        return pickle.dumps(dict(payload), protocol=2)

    def first_key(self) -> str:
        """The first weight of the model (a convolution), the same name in both frameworks."""
        return next(iter(self.paddle_arrays()))

    # -- images and packs
    def jpegs(self) -> list[bytes]:
        return self._once("jpegs", lambda: [jpeg(i) for i in range(12)])

    def png_bomb(self) -> bytes:
        return self._once("png_bomb", png_bomb)

    def bin_pack(self, bins=None, issame=None) -> bytes:
        """A verification pack (pickle of (bins, issame)): 10 pairs of valid JPEGs unless replaced."""
        bins = list(self.jpegs()[:4]) * 5 if bins is None else bins
        issame = [True, False] * 5 if issame is None else issame
        return pickle.dumps((bins, issame), protocol=2)

    def embeddings(self, d: Path) -> tuple[Path, Path]:
        """Valid precomputed embeddings (40 rows x 8) and issame (20 pairs) in ``d``."""
        rng = np.random.default_rng(0)
        emb, same = d / "emb.npy", d / "issame.npy"
        np.save(emb, rng.normal(size=(40, 8)).astype(np.float32))
        np.save(same, np.array([True, False] * 10))
        return emb, same

    def rec_pack(self, out: Path, payloads: list[bytes]) -> Path:
        """An InsightFace RecordIO pack (train.rec, train.idx, property) of ``payloads``, one class each."""
        from train.data.layout import write_pack

        out.mkdir(parents=True, exist_ok=True)
        write_pack(out, list(range(len(payloads))), iter(payloads), (112, 112))
        return out

    def shared_rec(self, out: Path) -> Path:
        src = SHARED_DATA / "small_dataset_rec"
        if not src.is_dir():
            import pytest

            if os.environ.get("CI"):
                pytest.fail(f"shared sample data not found: {src} (CI is set, so this is an error)")
            pytest.skip(f"shared sample data not found: {src}")
        shutil.copytree(src, out)
        return out

    # -- training
    def checkpoint(self) -> dict:
        """A real training checkpoint (one step of the corpus config), read back as plain containers."""
        def make():
            run = self.scratch / "template-run"
            shutil.rmtree(run, ignore_errors=True)
            run.mkdir()
            cfg = write_train_config(self.scratch / "template.py")
            outcome = self.runner("train", [cfg, "--output", run, "--max-steps", 1])
            ckpt = run / "checkpoint_rank0.pdckpt"
            if outcome.code != 0 or not ckpt.is_file():
                raise RuntimeError(f"the template training run failed ({outcome.describe()}):\n{outcome.stderr[-3000:]}")
            with open(ckpt, "rb") as fh:
                return pickle.load(fh)  # noqa: S301 (our own file, just written)
        return self._once("checkpoint", make)

    def checkpoint_bytes(self, edit: Callable[[dict], object] | None = None) -> bytes:
        import copy

        state = copy.deepcopy(self.checkpoint())
        if edit is not None:
            state = edit(state) or state
        return pickle.dumps(state, protocol=4)


TRAIN_CONFIG = """\
network = "mbf"
embedding_size = 128
batch_size = 5
num_workers = 0
rec = "{rec}"
num_classes = 10
num_image = 10
num_epoch = 2
lr = 0.02
frequent = 1
val_targets = []
{extra}"""


def write_train_config(path: Path, rec: str = "synthetic", extra: str = "") -> Path:
    path.write_text(TRAIN_CONFIG.format(rec=rec, extra=extra))
    return path


# ============================================================================================ the cases
@dataclass
class Case:
    id: str
    cli: str  # torch2paddle, paddle2torch, verify, train, recordio
    kind: str  # the class of failure
    bad: str  # the bad input, for the README table
    build: Callable[[Path, Resources], list]  # writes into d, returns argv
    names: tuple[str, ...]  # the error line must contain one of these ({d}: the case folder)
    word: str | None = None  # and, if given, this
    fresh: bool = False  # run as a fresh `python tool.py` process (sees import-time warnings)
    needs: tuple[str, ...] = field(default_factory=tuple)  # "onnx", "mount", "shared"


def put(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def marker(d: Path) -> Path:
    return d / MARKER


CASES: list[Case] = []


def case(id, cli, kind, bad, names, word=None, fresh=False, needs=()):
    def register(build):
        CASES.append(Case(id, cli, kind, bad, build, tuple([names] if isinstance(names, str) else names),
                          word, fresh, tuple(needs)))
        return build
    return register


# -------------------------------------------------------------------------------------- torch2paddle.py
def t2p(src, d, *extra):
    return ["--src", src, "--out", d / "out.pdparams", "--no-verify", *extra]


@case("t2p-hostile-system", "torch2paddle", "hostile pickle", ".pth whose pickle calls os.system", "{d}/evil.pth")
def _(d, r):
    return t2p(put(d / "evil.pth", r.pth_bytes({"state_dict": {"conv1.weight": RunsCommand(marker(d))}})), d)


@case("t2p-cycle", "torch2paddle", "cyclic pickle", "--src: 24-byte self-referencing list pickle (protocol 2)", "{d}/cycle.pth")
def _(d, r):
    return t2p(put(d / "cycle.pth", cycle_pickle_v2()), d)


@case("t2p-dag", "torch2paddle", "DAG pickle", "--src: ~400-byte list DAG with 2^64 paths (protocol 2)", "{d}/dag.pth")
def _(d, r):
    return t2p(put(d / "dag.pth", dag_pickle(protocol=2)), d)


@case("t2p-size-bomb", "torch2paddle", "declared-size bomb", "--src: 7-byte pickle declaring a 4 GiB string (protocol 2)",
      "{d}/bomb.pth")
def _(d, r):
    return t2p(put(d / "bomb.pth", size_bomb_pickle_v2()), d)


@case("t2p-zero-stride-fp16", "torch2paddle", "zero-stride bomb",
      "--src: fp16 zero-stride tensor of 2^34 elements (64 GiB once cast) in a small .pth", "{d}/stride.pth")
def _(d, r):
    import torch

    state = r.torch_state()
    state["fc.weight"] = torch.zeros(1, dtype=torch.float16).as_strided((1 << 17, 1 << 17), (0, 0))
    return t2p(put(d / "stride.pth", r.pth_bytes(state)), d)


@case("t2p-sparse", "torch2paddle", "sparse tensor", "--src: state_dict with a sparse COO tensor", "{d}/sparse.pth")
def _(d, r):
    state = r.torch_state()
    key = r.first_key()
    state[key] = state[key].to_sparse()
    return t2p(put(d / "sparse.pth", r.pth_bytes(state)), d)


@case("t2p-truncated", "torch2paddle", "truncated file", "--src: a valid .pth cut in half", "{d}/half.pth")
def _(d, r):
    data = r.pth_bytes()
    return t2p(put(d / "half.pth", data[: len(data) // 2]), d)


@case("t2p-garbage-zip", "torch2paddle", "garbage file", "--src: zip magic followed by random bytes",
      "{d}/garbage.pth")
def _(d, r):
    return t2p(put(d / "garbage.pth", b"PK\x03\x04" + np.random.default_rng(1).bytes(4000)), d)


@case("t2p-wrong-arch", "torch2paddle", "wrong architecture", "--arch r50 with an mbf checkpoint", "{d}/mbf.pth",
      word="r50")
def _(d, r):
    return t2p(put(d / "mbf.pth", r.pth_bytes()), d, "--arch", "r50")


@case("t2p-out-is-src", "torch2paddle", "output = input", "--out equal to --src", "{d}/model.pth")
def _(d, r):
    src = put(d / "model.pth", r.pth_bytes())
    return ["--src", src, "--out", src, "--no-verify"]


@case("t2p-report-is-out", "torch2paddle", "output = output", "--report equal to --out",
      ("{d}/out.pdparams", "--report"))
def _(d, r):
    return t2p(put(d / "model.pth", r.pth_bytes()), d, "--report", d / "out.pdparams")


@case("t2p-report-is-src", "torch2paddle", "output = input", "--report equal to --src", ("{d}/model.pth", "--report"))
def _(d, r):
    src = put(d / "model.pth", r.pth_bytes())
    return t2p(src, d, "--report", src)


@case("t2p-out-read-only", "torch2paddle", "output path", "--out in a read-only directory (ro tmpfs)",
      "{d}/ro/out.pdparams", needs=("mount",))
def _(d, r):
    return ["--src", put(d / "model.pth", r.pth_bytes()), "--out", d / "ro" / "out.pdparams", "--no-verify"]


@case("t2p-out-is-dir", "torch2paddle", "output path", "--out is an existing directory", "{d}/outdir")
def _(d, r):
    (d / "outdir").mkdir()
    return ["--src", put(d / "model.pth", r.pth_bytes()), "--out", d / "outdir", "--no-verify"]


@case("t2p-out-under-file", "torch2paddle", "output path", "--out under a regular file",
      ("{d}/notes.txt/out.pdparams", "{d}/notes.txt"))
def _(d, r):
    put(d / "notes.txt", "a file, not a folder\n")
    return ["--src", put(d / "model.pth", r.pth_bytes()), "--out", d / "notes.txt" / "out.pdparams", "--no-verify"]


@case("t2p-out-long-name", "torch2paddle", "output path", "--out with a 300-character file name",
      "{d}/" + "n" * 291 + ".pdparams")
def _(d, r):
    return ["--src", put(d / "model.pth", r.pth_bytes()), "--out", d / ("n" * 291 + ".pdparams"), "--no-verify"]


@case("t2p-threads-negative", "torch2paddle", "out-of-range argument", "--threads -1", "--threads", fresh=True)
def _(d, r):
    return t2p(put(d / "model.pth", r.pth_bytes()), d, "--threads", "-1")


@case("t2p-batch-zero", "torch2paddle", "out-of-range argument", "--batch 0 (with verification)", "--batch")
def _(d, r):
    return ["--src", put(d / "model.pth", r.pth_bytes()), "--out", d / "out.pdparams", "--batch", "0"]


@case("t2p-input-cycle-bin", "torch2paddle", "cyclic pickle", "--input: self-referencing list as the .bin pack",
      "{d}/cycle.bin")
def _(d, r):
    return ["--src", put(d / "model.pth", r.pth_bytes()), "--out", d / "out.pdparams",
            "--input", put(d / "cycle.bin", cycle_pickle())]


@case("t2p-input-png-bomb", "torch2paddle", "decompression bomb", "--input: .bin pack with a 30000x30000 PNG",
      "{d}/bomb.bin")
def _(d, r):
    return ["--src", put(d / "model.pth", r.pth_bytes()), "--out", d / "out.pdparams",
            "--input", put(d / "bomb.bin", r.bin_pack([r.png_bomb()] + r.jpegs()[:3], [True, False]))]


# -------------------------------------------------------------------------------------- paddle2torch.py
def p2t(src, d, *extra):
    return ["--src", src, "--out", d / "out.pth", *extra]


@case("p2t-forged-hasobject", "paddle2torch", "forged numpy dtype",
      ".pdparams array: object field with hasobject cleared via dtype.__setstate__", "{d}/forged.pdparams")
def _(d, r):
    return p2t(put(d / "forged.pdparams", r.pdparams_bytes(**{r.first_key(): forged_hasobject()})), d)


@case("p2t-forged-offset", "paddle2torch", "forged numpy dtype",
      ".pdparams array: float32 field at offset 1 GiB past the 4-byte item", "{d}/forged.pdparams")
def _(d, r):
    key = r.first_key()
    return p2t(put(d / "forged.pdparams", r.pdparams_bytes(**{key: forged_offset(r.paddle_arrays()[key].shape)})), d)


@case("p2t-cycle", "paddle2torch", "cyclic pickle", "--src: 24-byte self-referencing list pickle", "{d}/cycle.pdparams")
def _(d, r):
    return p2t(put(d / "cycle.pdparams", cycle_pickle()), d)


@case("p2t-cycle-in-dict", "paddle2torch", "cyclic pickle", "--src: state dict whose metadata contains itself",
      "{d}/cycle.pdparams")
def _(d, r):
    loop: dict = {}
    loop["self"] = loop
    return p2t(put(d / "cycle.pdparams", r.pdparams_bytes(meta=loop)), d)


@case("p2t-dag", "paddle2torch", "DAG pickle", "--src: ~400-byte list DAG with 2^64 paths", "{d}/dag.pdparams")
def _(d, r):
    return p2t(put(d / "dag.pdparams", dag_pickle()), d)


@case("p2t-size-bomb", "paddle2torch", "declared-size bomb", "--src: 11-byte pickle declaring a 2^64-byte string",
      "{d}/bomb.pdparams")
def _(d, r):
    return p2t(put(d / "bomb.pdparams", size_bomb_pickle()), d)


@case("p2t-array-size-bomb", "paddle2torch", "declared-size bomb",
      "--src: array header declaring 2^40 float32 over 16 bytes of data", "{d}/bomb.pdparams")
def _(d, r):
    fake = _ForgedArray((1 << 40,), _ForgedDtype(("f4", False, True), (3, "<", None, None, None, -1, -1, 0)),
                        b"\0" * 16)
    return p2t(put(d / "bomb.pdparams", pickle.dumps({"conv1.weight": fake}, protocol=2)), d)


@case("p2t-hostile-system", "paddle2torch", "hostile pickle", ".pdparams calling os.system", "{d}/evil.pdparams")
def _(d, r):
    return p2t(put(d / "evil.pdparams", r.pdparams_bytes(**{"conv1.weight": RunsCommand(marker(d))})), d)


@case("p2t-hostile-eval", "paddle2torch", "hostile pickle", ".pdparams calling builtins.eval (protocol 4)",
      "{d}/evil.pdparams")
def _(d, r):
    return p2t(put(d / "evil.pdparams", pickle.dumps({"conv1.weight": RunsEval(marker(d))}, protocol=4)), d)


@case("p2t-object-array", "paddle2torch", "object array", ".pdparams with a numpy object array",
      "{d}/objects.pdparams")
def _(d, r):
    return p2t(put(d / "objects.pdparams", r.pdparams_bytes(**{"fc.weight": np.array([1, "a", None], object)})), d)


@case("p2t-meta-string", "paddle2torch", "metadata schema", f"{META_KEY} holding a string", "{d}/meta.pdparams",
      fresh=True)
def _(d, r):
    return p2t(put(d / "meta.pdparams", r.pdparams_bytes(meta="r50")), d)


@case("p2t-meta-list", "paddle2torch", "metadata schema", f"{META_KEY} holding a list", "{d}/meta.pdparams")
def _(d, r):
    return p2t(put(d / "meta.pdparams", r.pdparams_bytes(meta=[1, 2, 3])), d)


@case("p2t-meta-huge-int", "paddle2torch", "metadata schema", f"{META_KEY} holding 10**30", "{d}/meta.pdparams")
def _(d, r):
    return p2t(put(d / "meta.pdparams", r.pdparams_bytes(meta=10 ** 30)), d)


@case("p2t-meta-tracked-huge", "paddle2torch", "metadata schema",
      f"{META_KEY}.num_batches_tracked holding 10**30", "{d}/meta.pdparams")
def _(d, r):
    from converters.mapping import layout

    tracked = {e.torch_key: 10 ** 30 for e in layout(ARCH, FEATURES) if e.paddle_key is None}
    return p2t(put(d / "meta.pdparams", r.pdparams_bytes(meta={"num_batches_tracked": tracked})), d)


@case("p2t-meta-tracked-string", "paddle2torch", "metadata schema",
      f"{META_KEY}.num_batches_tracked holding a string", "{d}/meta.pdparams")
def _(d, r):
    return p2t(put(d / "meta.pdparams", r.pdparams_bytes(meta={"num_batches_tracked": "many"})), d)


@case("p2t-truncated", "paddle2torch", "truncated file", "--src: a valid .pdparams cut in half", "{d}/half.pdparams")
def _(d, r):
    data = r.pdparams_bytes()
    return p2t(put(d / "half.pdparams", data[: len(data) // 2]), d)


@case("p2t-garbage", "paddle2torch", "garbage file", "--src: a text file", "{d}/notes.pdparams")
def _(d, r):
    return p2t(put(d / "notes.pdparams", "these are not weights\n" * 10), d)


@case("p2t-wrong-arch", "paddle2torch", "wrong architecture", "--arch r18 with mbf weights", "{d}/mbf.pdparams",
      word="r18")
def _(d, r):
    return p2t(put(d / "mbf.pdparams", r.pdparams_bytes()), d, "--arch", "r18")


@case("p2t-out-is-src", "paddle2torch", "output = input", "--out equal to --src", "{d}/model.pdparams")
def _(d, r):
    src = put(d / "model.pdparams", r.pdparams_bytes())
    return ["--src", src, "--out", src]


@case("p2t-report-is-out", "paddle2torch", "output = output", "--report equal to --out", ("{d}/out.pth", "--report"))
def _(d, r):
    return p2t(put(d / "model.pdparams", r.pdparams_bytes()), d, "--report", d / "out.pth")


@case("p2t-out-is-check-against", "paddle2torch", "output = input", "--out equal to --check-against",
      "{d}/original.pth")
def _(d, r):
    original = put(d / "original.pth", r.pth_bytes())
    return ["--src", put(d / "model.pdparams", r.pdparams_bytes()), "--out", original, "--check-against", original]


@case("p2t-check-against-hostile", "paddle2torch", "hostile pickle", "--check-against: .pth calling os.system",
      "{d}/evil.pth")
def _(d, r):
    evil = put(d / "evil.pth", r.pth_bytes({"conv1.weight": RunsCommand(marker(d))}))
    return p2t(put(d / "model.pdparams", r.pdparams_bytes()), d, "--check-against", evil)


@case("p2t-out-is-dir", "paddle2torch", "output path", "--out is an existing directory", "{d}/outdir")
def _(d, r):
    (d / "outdir").mkdir()
    return ["--src", put(d / "model.pdparams", r.pdparams_bytes()), "--out", d / "outdir"]


@case("p2t-out-read-only", "paddle2torch", "output path", "--out in a read-only directory (ro tmpfs)",
      "{d}/ro/out.pth", needs=("mount",))
def _(d, r):
    return ["--src", put(d / "model.pdparams", r.pdparams_bytes()), "--out", d / "ro" / "out.pth"]


# -------------------------------------------------------------------------------------- eval/verify.py
def ev_weights(weights, d, r, *extra):
    return ["--weights", weights, "--data", put(d / "lfw.bin", r.bin_pack()), "--backend", "paddle",
            "--no-progress", *extra]


def ev_data(pack, d, r, *extra):
    return ["--weights", put(d / "model.pdparams", r.pdparams_bytes()), "--data", pack, "--backend", "paddle",
            "--no-progress", *extra]


@case("ev-weights-cycle", "verify", "cyclic pickle", "--weights: 24-byte self-referencing list pickle",
      "{d}/cycle.pdparams")
def _(d, r):
    return ev_weights(put(d / "cycle.pdparams", cycle_pickle()), d, r)


@case("ev-weights-forged-hasobject", "verify", "forged numpy dtype",
      "--weights: .pdparams object field with hasobject cleared", "{d}/forged.pdparams")
def _(d, r):
    return ev_weights(put(d / "forged.pdparams", r.pdparams_bytes(**{"fc.weight": forged_hasobject()})), d, r)


@case("ev-weights-hostile-pth", "verify", "hostile pickle", "--weights: .pth calling os.system", "{d}/evil.pth")
def _(d, r):
    return ev_weights(put(d / "evil.pth", r.pth_bytes({"conv1.weight": RunsCommand(marker(d))})), d, r)


@case("ev-weights-zero-stride", "verify", "zero-stride bomb",
      "--weights: .pth whose float32 tensors are zero-stride views of 2^33 elements", "{d}/stride.pth")
def _(d, r):
    import torch

    state = r.torch_state()
    for key in ("fc.weight", "features.weight", "features.bias"):
        state[key] = torch.zeros(1).as_strided((1 << 33,), (0,))
    return ev_weights(put(d / "stride.pth", r.pth_bytes(state)), d, r)


@case("ev-weights-sparse", "verify", "sparse tensor", "--weights: .pth with a sparse tensor", "{d}/sparse.pth")
def _(d, r):
    state = r.torch_state()
    key = r.first_key()
    state[key] = state[key].to_sparse()
    return ev_weights(put(d / "sparse.pth", r.pth_bytes(state)), d, r)


@case("ev-weights-wrong-arch", "verify", "wrong architecture", "--arch r34 with mbf weights", "{d}/mbf.pdparams",
      word="r34")
def _(d, r):
    return ev_weights(put(d / "mbf.pdparams", r.pdparams_bytes()), d, r, "--arch", "r34")


@case("ev-weights-onnx-garbage", "verify", "garbage file", "--weights: random bytes named .onnx", "{d}/model.onnx")
def _(d, r):
    return ev_weights(put(d / "model.onnx", np.random.default_rng(2).bytes(3000)), d, r)


@case("ev-onnx-fails-at-inference", "verify", "ONNX inference failure",
      "--weights: ONNX model with batch fixed to 1 (valid file, fails in onnxruntime)", "{d}/fixed.onnx",
      needs=("onnx",))
def _(d, r):
    return ["--weights", put(d / "fixed.onnx", onnx_fixed_batch()), "--data", put(d / "lfw.bin", r.bin_pack()),
            "--no-progress"]


@case("ev-data-forged-hasobject", "verify", "forged numpy dtype",
      ".bin pack image: object field with hasobject cleared", "{d}/lfw.bin")
def _(d, r):
    return ev_data(put(d / "lfw.bin", r.bin_pack([forged_hasobject(8)] + r.jpegs()[:3], [True, False])), d, r)


@case("ev-data-forged-offset", "verify", "forged numpy dtype", ".bin pack issame: field offset 1 GiB past the item",
      "{d}/lfw.bin")
def _(d, r):
    return ev_data(put(d / "lfw.bin", r.bin_pack(r.jpegs()[:4], forged_offset((2,)))), d, r)


@case("ev-data-cycle", "verify", "cyclic pickle", ".bin pack: 24-byte self-referencing list", "{d}/lfw.bin")
def _(d, r):
    return ev_data(put(d / "lfw.bin", cycle_pickle()), d, r)


@case("ev-data-dag", "verify", "DAG pickle", ".bin pack: list DAG with 2^64 paths as the image list",
      "{d}/lfw.bin")
def _(d, r):
    node: list = [b"x"]
    for _ in range(64):
        node = [node, node]
    return ev_data(put(d / "lfw.bin", pickle.dumps((node, [True]), protocol=4)), d, r)


@case("ev-data-size-bomb", "verify", "declared-size bomb", ".bin pack: 11-byte pickle declaring a 2^64-byte string",
      "{d}/lfw.bin")
def _(d, r):
    return ev_data(put(d / "lfw.bin", size_bomb_pickle()), d, r)


@case("ev-data-hostile", "verify", "hostile pickle", ".bin pack calling os.system", "{d}/lfw.bin")
def _(d, r):
    return ev_data(put(d / "lfw.bin", pickle.dumps(([RunsCommand(marker(d))], [True]), protocol=2)), d, r)


@case("ev-data-png-bomb", "verify", "decompression bomb", ".bin pack with a 30000x30000 PNG (~110 KB)",
      "{d}/lfw.bin")
def _(d, r):
    return ev_data(put(d / "lfw.bin", r.bin_pack([r.png_bomb()] + r.jpegs()[:3], [True, False])), d, r)


@case("ev-data-truncated", "verify", "truncated file", ".bin pack cut in half", "{d}/lfw.bin")
def _(d, r):
    data = r.bin_pack()
    return ev_data(put(d / "lfw.bin", data[: len(data) // 2]), d, r)


@case("ev-data-object-array", "verify", "object array", ".bin pack whose image is a numpy object array",
      "{d}/lfw.bin")
def _(d, r):
    return ev_data(put(d / "lfw.bin", r.bin_pack([np.array([b"x"], object)] + r.jpegs()[:3], [True, False])), d, r)


@case("ev-emb-npy-bomb", "verify", "declared-size bomb", "--embeddings: .npy header declaring 10^12 x 512",
      "{d}/emb.npy")
def _(d, r):
    _, same = r.embeddings(d)
    return ["--embeddings", put(d / "emb.npy", npy_bomb()), "--issame", same]


@case("ev-emb-npz", "verify", "wrong format", "--embeddings: an .npz archive", "{d}/emb.npz", fresh=True)
def _(d, r):
    emb, same = r.embeddings(d)
    np.savez(d / "emb.npz", emb=np.load(emb))
    emb.unlink()
    return ["--embeddings", d / "emb.npz", "--issame", same]


@case("ev-emb-object-hostile", "verify", "object array",
      "--embeddings: .npy object array whose pickle calls os.system", "{d}/emb.npy")
def _(d, r):
    _, same = r.embeddings(d)
    np.save(d / "emb.npy", np.array([RunsCommand(marker(d)), 1], dtype=object), allow_pickle=True)
    return ["--embeddings", d / "emb.npy", "--issame", same]


@case("ev-emb-truncated", "verify", "truncated file", "--embeddings: .npy cut short", "{d}/emb.npy")
def _(d, r):
    emb, same = r.embeddings(d)
    emb.write_bytes(emb.read_bytes()[:200])
    return ["--embeddings", emb, "--issame", same]


@case("ev-json-is-embeddings", "verify", "output = input", "--json equal to --embeddings", ("{d}/emb.npy", "--json"))
def _(d, r):
    emb, same = r.embeddings(d)
    return ["--embeddings", emb, "--issame", same, "--json", emb]


@case("ev-results-is-dir", "verify", "results file", "--results is a directory", "{d}/results")
def _(d, r):
    emb, same = r.embeddings(d)
    (d / "results").mkdir()
    return ["--embeddings", emb, "--issame", same, "--results", d / "results"]


@case("ev-results-binary", "verify", "results file", "--results is a binary file", "{d}/results.txt")
def _(d, r):
    emb, same = r.embeddings(d)
    put(d / "results.txt", np.random.default_rng(3).bytes(500))
    return ["--embeddings", emb, "--issame", same, "--results", d / "results.txt"]


@case("ev-batch-size-zero", "verify", "out-of-range argument", "--batch-size 0", "--batch-size")
def _(d, r):
    return ev_weights(put(d / "model.pdparams", r.pdparams_bytes()), d, r, "--batch-size", "0")


@case("ev-threads-negative", "verify", "out-of-range argument", "--threads -1 (with --embeddings)", "--threads")
def _(d, r):
    emb, same = r.embeddings(d)
    return ["--embeddings", emb, "--issame", same, "--threads", "-1"]


# -------------------------------------------------------------------------------------- train/train.py
def tr(d, *extra, rec="synthetic", cfg_extra="", overrides=()):
    cfg = write_train_config(d / "cfg.py", rec, cfg_extra)
    (d / "run").mkdir(exist_ok=True)
    return [cfg, *overrides, "--output", d / "run", *extra]


def tr_resume(d, data: bytes):
    argv = tr(d, "--resume")
    put(d / "run" / "checkpoint_rank0.pdckpt", data)
    return argv


CKPT = "{d}/run/checkpoint_rank0.pdckpt"


@case("tr-config-deep", "train", "deep nesting", "config: a value nested 100k levels deep", "{d}/cfg.py")
def _(d, r):
    return tr(d, cfg_extra="seed = " + "-" * 100_000 + "1\n")


@case("tr-config-num-classes-huge", "train", "out-of-range config", "config: num_classes = 10**11", "{d}/cfg.py",
      word="num_classes", fresh=True)
def _(d, r):
    return tr(d, cfg_extra="num_classes = 100000000000\n")


@case("tr-config-non-utf8", "train", "encoding", "config: Latin-1 bytes (not UTF-8)", "{d}/cfg.py")
def _(d, r):
    argv = tr(d)
    with open(d / "cfg.py", "ab") as fh:
        fh.write('notes = "caf\xe9 \xff"\n'.encode("latin-1"))
    return argv


@case("tr-config-injection", "train", "config code injection", "config: lr = __import__('os').system(...)",
      "{d}/cfg.py")
def _(d, r):
    return tr(d, cfg_extra=f"lr = __import__('os').system('touch {marker(d)}')\n")


@case("tr-override-injection", "train", "config code injection", "override lr=__import__('os').system(...)", "lr")
def _(d, r):
    return tr(d, overrides=[f"lr=__import__('os').system('touch {marker(d)}')"])


@case("tr-lr-negative", "train", "out-of-range config", "override lr=-0.1", "lr")
def _(d, r):
    return tr(d, overrides=["lr=-0.1"])


@case("tr-threads-negative", "train", "out-of-range argument", "--threads -1", "--threads")
def _(d, r):
    return tr(d, "--threads", "-1")


@case("tr-output-under-file", "train", "output path", "--output under a regular file", "{d}/notes.txt")
def _(d, r):
    argv = tr(d)
    put(d / "notes.txt", "a file\n")
    argv[argv.index("--output") + 1] = d / "notes.txt" / "run"
    return argv


@case("tr-init-cycle", "train", "cyclic pickle", "--init: 24-byte self-referencing list .pdparams",
      "{d}/cycle.pdparams")
def _(d, r):
    return tr(d, "--init", put(d / "cycle.pdparams", cycle_pickle()))


@case("tr-init-dag", "train", "DAG pickle", "--init: list DAG with 2^64 paths", "{d}/dag.pdparams")
def _(d, r):
    return tr(d, "--init", put(d / "dag.pdparams", dag_pickle()))


@case("tr-init-forged-hasobject", "train", "forged numpy dtype", "--init: .pdparams object field, hasobject cleared",
      "{d}/forged.pdparams")
def _(d, r):
    return tr(d, "--init", put(d / "forged.pdparams", r.pdparams_bytes(**{r.first_key(): forged_hasobject()})))


@case("tr-init-forged-offset", "train", "forged numpy dtype", "--init: .pdparams field offset 1 GiB past the item",
      "{d}/forged.pdparams")
def _(d, r):
    key = r.first_key()
    forged = r.pdparams_bytes(**{key: forged_offset(r.paddle_arrays()[key].shape)})
    return tr(d, "--init", put(d / "forged.pdparams", forged))


@case("tr-init-hostile-pth", "train", "hostile pickle", "--init: .pth calling os.system", "{d}/evil.pth")
def _(d, r):
    return tr(d, "--init", put(d / "evil.pth", r.pth_bytes({"conv1.weight": RunsCommand(marker(d))})))


@case("tr-init-size-bomb", "train", "declared-size bomb", "--init: 11-byte pickle declaring a 2^64-byte string",
      "{d}/bomb.pdparams")
def _(d, r):
    return tr(d, "--init", put(d / "bomb.pdparams", size_bomb_pickle()))


@case("tr-resume-cycle", "train", "cyclic pickle", "--resume: checkpoint is a self-referencing list", CKPT)
def _(d, r):
    return tr_resume(d, cycle_pickle())


@case("tr-resume-dag", "train", "DAG pickle", "--resume: checkpoint is a list DAG with 2^64 paths", CKPT)
def _(d, r):
    return tr_resume(d, dag_pickle())


@case("tr-resume-forged-hasobject", "train", "forged numpy dtype",
      "--resume: checkpoint backbone array with hasobject cleared", CKPT)
def _(d, r):
    def edit(state):
        key = next(iter(state["backbone"]))
        state["backbone"][key] = forged_hasobject()
    return tr_resume(d, r.checkpoint_bytes(edit))


@case("tr-resume-forged-offset", "train", "forged numpy dtype",
      "--resume: checkpoint optimizer array with a field 1 GiB past the item", CKPT)
def _(d, r):
    def edit(state):
        key = next(k for k, v in state["optimizer"].items() if isinstance(v, np.ndarray) and v.size > 1)
        state["optimizer"][key] = forged_offset(state["optimizer"][key].shape)
    return tr_resume(d, r.checkpoint_bytes(edit))


@case("tr-resume-hostile", "train", "hostile pickle", "--resume: checkpoint calling os.system", CKPT)
def _(d, r):
    def edit(state):
        state["rng"] = RunsCommand(marker(d))
    return tr_resume(d, r.checkpoint_bytes(edit))


@case("tr-resume-missing-keys", "train", "checkpoint schema", "--resume: checkpoint without world_size/config/backbone",
      CKPT)
def _(d, r):
    def edit(state):
        for key in ("world_size", "config", "backbone", "rng"):
            del state[key]
    return tr_resume(d, r.checkpoint_bytes(edit))


@case("tr-resume-wrong-shapes", "train", "checkpoint schema", "--resume: checkpoint backbone arrays of wrong shape",
      CKPT)
def _(d, r):
    def edit(state):
        state["backbone"] = {k: np.zeros(3, np.float32) for k in state["backbone"]}
        state["pfc"] = {k: np.zeros(2, np.float32) for k in state["pfc"]}
    return tr_resume(d, r.checkpoint_bytes(edit))


@case("tr-resume-config-not-dict", "train", "checkpoint schema", "--resume: checkpoint config is a string", CKPT)
def _(d, r):
    def edit(state):
        state["config"] = "network = r50"
    return tr_resume(d, r.checkpoint_bytes(edit))


@case("tr-resume-step-string", "train", "checkpoint schema", "--resume: checkpoint step is a string, rng a list",
      CKPT)
def _(d, r):
    def edit(state):
        state["step"] = "seven"
        state["rng"] = {"pfc_scores": [1, 2]}
    return tr_resume(d, r.checkpoint_bytes(edit))


@case("tr-resume-truncated", "train", "truncated file", "--resume: checkpoint cut in half", CKPT)
def _(d, r):
    data = r.checkpoint_bytes()
    return tr_resume(d, data[: len(data) // 2])


@case("tr-rec-png-bomb", "train", "decompression bomb", "training pack (RecordIO) with a 30000x30000 PNG",
      ("{d}/pack", "{d}/pack/train.rec"))
def _(d, r):
    pack = r.rec_pack(d / "pack", [r.png_bomb()] + r.jpegs()[:9])
    return tr(d, rec=str(pack), cfg_extra="num_epoch = 1\n")


@case("tr-rec-corrupt-workers", "train", "loader worker failure",
      "training pack with a corrupt record, num_workers = 2", ("{d}/pack", "{d}/pack/train.rec"))
def _(d, r):
    pack = r.rec_pack(d / "pack", r.jpegs()[:6] + [b"\xff\xd8\xff not a jpeg" * 20] + r.jpegs()[6:9])
    return tr(d, rec=str(pack), cfg_extra="num_workers = 2\nnum_epoch = 1\n")


# ------------------------------------------------------------------------------ python -m train.data.recordio
@case("rio-dump-truncated", "recordio", "truncated file", "dump: train.rec cut inside a record",
      ("{d}/pack/train.rec", "{d}/pack"), fresh=True, needs=("shared",))
def _(d, r):
    pack = r.shared_rec(d / "pack")
    rec = pack / "train.rec"
    rec.write_bytes(rec.read_bytes()[: rec.stat().st_size // 2 + 3])
    return ["dump", pack]


@case("rio-dump-huge-length", "recordio", "declared-size bomb", "dump: a record header declaring 512 MiB",
      ("{d}/pack/train.rec", "{d}/pack"))
def _(d, r):
    pack = d / "pack"
    put(pack / "train.rec", struct.pack("<II", 0xCED7230A, (1 << 29) - 1) + b"\0" * 32)
    put(pack / "train.idx", "0\t0\n")
    return ["dump", pack]


@case("rio-dump-garbage-idx", "recordio", "garbage file", "dump: train.idx of random bytes",
      ("{d}/pack/train.idx", "{d}/pack"), needs=("shared",))
def _(d, r):
    pack = r.shared_rec(d / "pack")
    (pack / "train.idx").write_bytes(np.random.default_rng(4).bytes(300))
    return ["dump", pack]


@case("rio-verify-no-rec", "recordio", "missing file", "verify: a folder without train.rec", "{d}/empty")
def _(d, r):
    (d / "empty").mkdir()
    return ["verify", d / "empty"]


@case("rio-pack-png-bomb", "recordio", "decompression bomb", "pack: an image folder whose first image is a 30000x30000 PNG",
      ("{d}/src/0/a.png", "{d}/src"))
def _(d, r):
    put(d / "src" / "0" / "a.png", r.png_bomb())
    put(d / "src" / "1" / "b.jpg", r.jpegs()[0])
    return ["pack", d / "src", d / "out"]


@case("rio-pack-non-utf8-labels", "recordio", "encoding", "pack: label.txt whose label field is non-UTF-8 bytes",
      "{d}/src/label.txt")
def _(d, r):
    put(d / "src" / "a.jpg", r.jpegs()[0])
    put(d / "src" / "b.jpg", r.jpegs()[1])
    put(d / "src" / "label.txt", b"a.jpg\t0\nb.jpg\t\xe9\xff\n")
    return ["pack", d / "src" / "label.txt", d / "out"]


@case("rio-unpack-out-is-pack", "recordio", "output = input", "unpack: OUT equal to the pack folder", "{d}/pack",
      needs=("shared",))
def _(d, r):
    pack = r.shared_rec(d / "pack")
    return ["unpack", pack, pack]


@case("rio-shuffle-out-is-file", "recordio", "output path", "shuffle: OUT is an existing regular file",
      "{d}/out.txt", needs=("shared",))
def _(d, r):
    pack = r.shared_rec(d / "pack")
    put(d / "out.txt", "keep me\n")
    return ["shuffle", pack, d / "out.txt"]


@case("rio-unpack-out-under-file", "recordio", "output path", "unpack: OUT under a regular file",
      ("{d}/notes.txt/out", "{d}/notes.txt"), needs=("shared",))
def _(d, r):
    pack = r.shared_rec(d / "pack")
    put(d / "notes.txt", "a file\n")
    return ["unpack", pack, d / "notes.txt" / "out"]


@case("rio-dump-limit-negative", "recordio", "out-of-range argument", "dump --limit -1", "--limit", needs=("shared",))
def _(d, r):
    return ["dump", r.shared_rec(d / "pack"), "--limit", "-1"]


def by_id() -> dict[str, Case]:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    return {c.id: c for c in CASES}
