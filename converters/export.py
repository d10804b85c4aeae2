"""Export a backbone for deployment (Paddle Inference or ONNX in InsightFace's layout), checked against the model.

    python converters/export.py --weights W [--arch NAME] --format paddle-inference|onnx [--out DIR_OR_FILE]
                                [--opset N] [--via paddle|torch] [--verify] [--input random|PACK.bin]
                                [--batch N] [--seed N] [--threads N]
                                [--precision fp32|bf16|int8 --calibration PACK.bin|FOLDER
                                 [--calibration-images N] [--min-cosine C]]

``W`` is a ``.pth`` or ``.pdparams`` of any registered architecture, read by ``converters.weights``.

- ``paddle-inference``: ``paddle.jit.save`` of the Paddle model in eval mode (a ViT's training-only patch
  masking and stochastic depth are left out of the graph) with a dynamic batch, input ``x``
  ``[None, 3, 112, 112]``: a folder holding ``model.json`` and ``model.pdiparams`` (default
  ``<W>-paddle-inference/`` beside the weights), for a ``paddle.inference`` predictor.
- ``onnx``: one ``.onnx`` file (default ``<W>.onnx`` beside the weights) in InsightFace's layout: input ``data``
  ``[None, 3, 112, 112]`` (batch dimension named ``None``), RGB normalised outside the graph as
  ``(pixel - 127.5) / 127.5``, one output ``embedding`` ``[None, D]``, node names that
  ``insightface.model_zoo`` does not mistake for an in-graph normalisation. ``--via paddle`` (default)
  converts the Paddle Inference graph with paddle2onnx (opset 11 unless an operator needs a later one;
  ``--opset`` up to 21), ``--via torch`` exports the PyTorch reference as arcface_torch does (the
  legacy ``torch.onnx`` exporter, opset 11; ``--opset`` up to 20).

Every export is run on the written files and compared with the framework model it came from (the Paddle
dygraph model, or the PyTorch reference for ``--via torch``), computed before exporting: seeded images at
batch 1 and ``--batch`` (the dynamic batch), and ``--batch`` real faces with ``--input PACK.bin``; the gates
are the conversion's (worst relative error <= 5e-5, cosine >= 0.999999 per embedding). ``--verify`` also
compares it with the other framework's model on the same inputs. Nothing is downloaded or installed.

Reduced precision (``--precision``), compared with fp32 on ``--calibration`` faces (a ``.bin`` pack or a
folder of aligned faces, up to ``--calibration-images``, default 512):

- ``bf16`` (``--format paddle-inference``, a CPU with AVX-512): the graph for Paddle Inference's oneDNN
  bfloat16, each PReLU written as ``alpha * x + (1 - alpha) * relu(x)`` (Paddle's bf16 ``prelu`` kernel
  reads its float32 slopes as bfloat16 and returns NaN); run it with ``PaddlePredictor(precision="bf16")``.
- ``int8``, calibrated on the faces: ``--format paddle-inference``, ``paddle.quantization.PTQ`` on the Paddle
  model saved as a legacy program (``model.pdmodel`` + ``model.pdiparams``, int8 weights) that Paddle
  Inference runs with oneDNN int8 kernels (``PaddlePredictor(precision="int8")``); ``--format onnx``,
  onnxruntime's static quantization of the ONNX export.

The fp32 export is checked against the framework model first (the gates above), then the reduced one is
compared with it on the calibration faces; an export whose smallest embedding cosine there is below
``--min-cosine`` (default 0.995) is refused. A Paddle Inference folder holds ``export.json`` (arch,
embedding size, precision, calibration, the guard's numbers); an ONNX file at reduced precision holds the same
as ``arcface_bridge.*`` metadata entries.

Exit codes: 0 exported and checked, 1 a gate or the guard failed (nothing is left under the output name), 2
a problem with the input or an option.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

# Run as a file, sys.path[0] is this folder, whose modules would shadow others even when the project is
# installed (train/train.py would be imported as `train`); the project root goes there instead, which also
# lets a plain clone run without installing.
if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import architectures  # noqa: E402
from converters.binfile import IMAGE_SIZE  # noqa: E402
from converters.cli import ArgumentParser, float_range, int_range, random_seed, thread_count  # noqa: E402
from converters.errors import UserError, run_cli  # noqa: E402
from converters.quantize import DEFAULT_LIMIT, DEFAULT_MINIMUM  # noqa: E402

FORMATS = ("paddle-inference", "onnx")
PRECISIONS = ("fp32", "bf16", "int8")
DEFAULT_MIN_COSINE = 0.995  # a reduced-precision export below this min cosine to fp32 on its faces is refused
VIAS = ("paddle", "torch")
INPUT_SHAPE = (3, IMAGE_SIZE, IMAGE_SIZE)  # every backbone takes [N, 3, 112, 112] RGB in [-1, 1]
PADDLE_INPUT = "x"  # the Paddle Inference input handle
ONNX_INPUT, ONNX_OUTPUT = "data", "embedding"
BATCH_DIM = "None"  # InsightFace's name for the dynamic batch dimension
DEFAULT_OPSET = 11
MIN_OPSET = 11
MAX_OPSET = {"paddle": 21, "torch": 20}  # paddle2onnx 2.1.0 aborts the process above 21
ONNX_MAX_BYTES = 2**31 - 2**24  # one protobuf message holds < 2 GiB; leave room for the graph itself
# insightface.model_zoo's ArcFaceONNX reads a graph whose first nodes are named Sub*/_minus* and Mul*/_mul*
# as normalising inside (then feeds raw pixels, mean 0 std 1); no node of an export may be named so
INSIGHTFACE_NORMALISATION_NAMES = ("Sub", "_minus", "Mul", "_mul")
REL_GATE, COSINE_GATE = 5e-5, 0.999999  # as converters.parity: EVAL_LAYER_REL, EMBEDDING_COSINE


class GateFailed(Exception):
    """Raised inside the atomic write so that a failed check leaves nothing under the output name."""


class ExportFailed(RuntimeError):
    """An exporter failed on a registered architecture: a bug or an unsupported library version."""


# ------------------------------------------------------------------------------------- Paddle Inference
def save_paddle_inference(model: Any, prefix: str | Path, name: str | Path | None = None,
                          precision: str = "fp32") -> Path:
    """``paddle.jit.save`` an eval-mode Paddle backbone with a dynamic batch: ``<prefix>.json`` and
    ``<prefix>.pdiparams``, input ``x`` ``[None, 3, 112, 112]`` float32. Returns ``prefix``.

    ``precision="bf16"`` writes the graph for oneDNN bfloat16: each PReLU is traced as
    ``alpha * x + (1 - alpha) * relu(x)`` (``paddle_models.layers.LinearPReLU``), because Paddle's bf16
    ``prelu`` kernel reads its float32 slopes as bfloat16 and returns NaN embeddings. The graph is float32
    like any other (within one rounding per PReLU of the fp32 graph); ``model`` is left as it was.

    ``paddle.jit.save`` ignores failed writes (a full disk leaves a truncated ``model.json`` and parameters
    and no error): the files are checked, and an incomplete export is a ``UserError`` naming ``name``."""
    import paddle

    prefix = Path(prefix)
    if model.training:
        raise ValueError("export an eval-mode model: training mode would trace the ViT's masking and drop path")
    data_bytes = sum(int(np.prod(v.shape)) * 4 for v in model.state_dict().values())
    spec = [paddle.static.InputSpec([None, *INPUT_SHAPE], "float32", PADDLE_INPUT)]
    if precision not in ("fp32", "bf16"):  # int8 is quantize_paddle_int8's own program
        raise ValueError(f"precision {precision!r}: expected fp32 or bf16")
    from converters.runtime import onednn_flag_off
    from paddle_models.layers import prelu_as_linear, restore_prelu

    swapped = prelu_as_linear(model) if precision == "bf16" else []
    try:
        with onednn_flag_off():
            paddle.jit.save(model, str(prefix), input_spec=spec)
    finally:
        restore_prelu(swapped)
    try:
        json.loads(prefix.with_suffix(".json").read_text())
        complete = prefix.with_suffix(".pdiparams").stat().st_size >= data_bytes
    except (OSError, ValueError):
        complete = False
    if not complete:
        raise UserError(name or prefix.parent,
                        "cannot write: the exported model is incomplete (no space left on the device?)")
    return prefix


class PaddlePredictor:
    """A ``paddle.inference`` predictor on ``<prefix>.json`` + ``<prefix>.pdiparams``: a batch
    ``[N, 3, 112, 112]`` float32 in, ``[N, D]`` out. On CPU: oneDNN and ``threads`` math threads.

    ``precision="bf16"`` runs oneDNN in bfloat16 (``enable_mkldnn_bfloat16``) on the graph exported for it
    (``save_paddle_inference(..., precision="bf16")``; a graph holding ``prelu`` is refused). Paddle enables
    bf16 only on a CPU with AVX-512 (``avx512_core``) and otherwise silently keeps float32, so on any other CPU
    this raises ``RuntimeError`` instead of returning a float32 predictor under the bf16 name.

    ``precision="int8"`` runs ``converters.quantize.quantize_paddle_int8``'s model (``<prefix>.pdmodel`` +
    ``<prefix>.pdiparams``) with oneDNN int8 kernels (``paddle_int8_config``).

    A reduced-precision batch with a non-finite embedding raises ``RuntimeError``."""

    PRECISIONS = ("fp32", "bf16", "int8")

    def __init__(self, prefix: str | Path, threads: int, device: str = "cpu", precision: str = "fp32"):
        import paddle.inference as pi

        if precision not in self.PRECISIONS:
            raise ValueError(f"precision {precision!r}: expected one of {', '.join(self.PRECISIONS)}")
        if precision != "fp32" and device != "cpu":
            raise ValueError(f"precision {precision!r} is a CPU (oneDNN) precision")
        if precision == "bf16":
            if not self.bf16_supported():
                raise RuntimeError("Paddle Inference bf16 needs a CPU with AVX-512 (avx512_core); this CPU has "
                                   "none, and enable_mkldnn_bfloat16 would silently run float32")
            if graph_has_prelu(prefix):
                raise RuntimeError("the graph holds PReLU operators, which Paddle's oneDNN bf16 kernel computes "
                                   "with its float32 slopes read as bfloat16 (NaN embeddings); export it for bf16 "
                                   "(export.py --precision bf16)")
        self.precision = precision
        if precision == "int8":
            from converters.quantize import PADDLE_MODEL_SUFFIX, paddle_int8_config

            program = Path(str(prefix) + PADDLE_MODEL_SUFFIX)
            if not program.is_file():
                raise RuntimeError(f"no {program.name}: an int8 predictor runs a model quantized for Paddle "
                                   "Inference (export.py --precision int8)")
            config = paddle_int8_config(prefix, threads)
        else:
            config = pi.Config(str(prefix) + ".json", str(prefix) + ".pdiparams")
            if device == "gpu":
                config.enable_use_gpu(256, 0)
            else:
                config.disable_gpu()
                config.set_cpu_math_library_num_threads(threads)
                config.enable_mkldnn()  # oneDNN: the fast CPU path (never FLAGS_use_mkldnn with to_static)
                if precision == "bf16":
                    config.enable_mkldnn_bfloat16()
            config.disable_glog_info()
        self.predictor = pi.create_predictor(config)
        self.input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self.output_name = self.predictor.get_output_names()[0]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.input.reshape(list(batch.shape))
        self.input.copy_from_cpu(np.ascontiguousarray(batch, dtype=np.float32))
        self.predictor.run()
        out = self.predictor.get_output_handle(self.output_name).copy_to_cpu()
        if self.precision != "fp32" and not np.isfinite(out).all():
            raise RuntimeError(f"the {self.precision} predictor returned non-finite embeddings for "
                               f"{int((~np.isfinite(out).all(axis=1)).sum())} of {len(out)} images")
        return out

    @staticmethod
    def int8_supported() -> bool:
        """Whether Paddle Inference runs oneDNN int8 kernels on this CPU."""
        from paddle.base import core

        return bool(core.supports_int8())

    @staticmethod
    def bf16_supported() -> bool:
        """Whether Paddle Inference would run oneDNN in bfloat16 on this CPU (it needs ``avx512_core``)."""
        from paddle.base import core

        return bool(core.supports_bfloat16())


def graph_has_prelu(prefix: str | Path) -> bool:
    """Whether the Paddle Inference graph ``<prefix>.json`` holds a ``prelu`` operator."""
    return '"#":"1.prelu"' in Path(str(prefix) + ".json").read_text()


# ------------------------------------------------------------------------------------------------- ONNX
def _rename_value(graph: Any, old: str, new: str) -> None:
    """Rename the tensor ``old`` to ``new`` wherever the graph names it."""
    if old == new:
        return
    for node in graph.node:
        node.input[:] = [new if v == old else v for v in node.input]
        node.output[:] = [new if v == old else v for v in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new


def insightface_normalises_inside(model: Any) -> bool:
    """Whether ``insightface.model_zoo`` would read ``model`` as normalising its input inside the graph
    (and so feed it raw pixels): a node named Sub*/_minus* and one named Mul*/_mul* among the first 8."""
    names = [node.name for node in model.graph.node[:8]]
    return (any(n.startswith(INSIGHTFACE_NORMALISATION_NAMES[:2]) for n in names)
            and any(n.startswith(INSIGHTFACE_NORMALISATION_NAMES[2:]) for n in names))


def conform_to_insightface(model: Any, num_features: int) -> Any:
    """Give an exported graph InsightFace's interface and check it (``onnx.checker``); returns ``model``.

    One image input renamed ``data`` ``[None, 3, 112, 112]`` and one output renamed ``embedding``
    ``[None, num_features]`` (batch dimension named ``None``); every node that has no name, or one starting
    like an in-graph normalisation (``Sub``, ``_minus``, ``Mul``, ``_mul``), is named ``node<i>_<OpType>``."""
    import onnx

    graph = model.graph
    initialisers = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initialisers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ExportFailed(f"expected one input and one output, the export has {len(inputs)} and "
                           f"{len(graph.output)}")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4 or [d.dim_value for d in dims[1:]] != list(INPUT_SHAPE):
        raise ExportFailed(f"unexpected input shape {[d.dim_param or d.dim_value for d in dims]}")
    out_dims = graph.output[0].type.tensor_type.shape.dim
    if len(out_dims) != 2 or out_dims[1].dim_value not in (0, num_features):
        raise ExportFailed(f"unexpected output shape {[d.dim_param or d.dim_value for d in out_dims]}, "
                           f"expected [N, {num_features}]")
    for dim in (dims[0], out_dims[0]):
        dim.dim_param = BATCH_DIM  # clears dim_value (a oneof)
    out_dims[1].dim_value = num_features
    _rename_value(graph, inputs[0].name, ONNX_INPUT)
    _rename_value(graph, graph.output[0].name, ONNX_OUTPUT)
    for i, node in enumerate(graph.node):
        if not node.name or node.name.startswith(INSIGHTFACE_NORMALISATION_NAMES):
            node.name = f"node{i}_{node.op_type}"
    onnx.checker.check_model(model, full_check=True)
    return model


def _write_onnx(model: Any, num_features: int, path: str | Path) -> Path:
    import onnx

    conform_to_insightface(model, num_features)
    onnx.save_model(model, str(path))
    return Path(path)


def onnx_via_torch(model: Any, num_features: int, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Export the PyTorch reference ``model`` (eval mode) as arcface_torch's ``torch2onnx.py`` does: the
    legacy exporter, opset 11, input ``data``, normalisation outside the graph; then InsightFace's
    interface (``conform_to_insightface``).

    The batch is declared dynamic while tracing (``dynamic_axes``), not only marked on the input afterwards
    as arcface_torch does: that works for the ResNets, but a ViT's attention reshapes would keep the traced
    batch of one and fail on any other batch.
    """
    import onnx
    import torch

    if model.training:
        raise ValueError("export an eval-mode model")
    buffer = io.BytesIO()
    dummy = torch.zeros((1, *INPUT_SHAPE), dtype=torch.float32)
    with warnings.catch_warnings(), torch.no_grad():
        # the ViT checks the image size in Python: fixed at 112 x 112 here, so a constant in the graph is right
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is arcface_torch's recipe
        torch.onnx.export(model, dummy, buffer, opset_version=opset, input_names=[ONNX_INPUT],
                          output_names=[ONNX_OUTPUT], keep_initializers_as_inputs=False, dynamo=False,
                          dynamic_axes={ONNX_INPUT: {0: BATCH_DIM}, ONNX_OUTPUT: {0: BATCH_DIM}})
    return _write_onnx(onnx.load_from_string(buffer.getvalue()), num_features, path)


def export_onnx(arrays: Any, arch: str, num_features: int, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """``onnx_via_torch`` of the PyTorch reference ``arch`` holding the InsightFace-named ``arrays``."""
    from converters.models import torch_model

    return onnx_via_torch(torch_model(arch, arrays, num_features, share=True), num_features, path, opset)


def _paddle2onnx(prefix: Path, opset: int, upgrade: bool) -> bytes:
    import paddle2onnx

    before = os.environ.get("POLYGRAPHY_AUTOINSTALL_DEPS")
    try:
        # optimize_tool "None": with its default ("polygraphy") paddle2onnx sets POLYGRAPHY_AUTOINSTALL_DEPS=1,
        # and Polygraphy then pip-installs onnx_graphsurgeon into the running environment
        data = paddle2onnx.export(str(prefix.with_suffix(".json")), str(prefix.with_suffix(".pdiparams")),
                                  save_file=None, opset_version=opset, auto_upgrade_opset=upgrade,
                                  enable_onnx_checker=True, optimize_tool="None")
    except Exception as err:  # it logs its own failures and then fails returning an unset result
        raise ExportFailed(f"paddle2onnx could not convert the model ({type(err).__name__}: {err})") from None
    finally:  # nothing may change how this process (or a later install) behaves
        if before is None:
            os.environ.pop("POLYGRAPHY_AUTOINSTALL_DEPS", None)
        else:
            os.environ["POLYGRAPHY_AUTOINSTALL_DEPS"] = before
    if not isinstance(data, bytes) or not data:
        raise ExportFailed("paddle2onnx returned no model")
    return data


def onnx_via_paddle(model: Any, num_features: int, path: str | Path, opset: int = DEFAULT_OPSET,
                    upgrade: bool = True) -> Path:
    """Export the Paddle ``model`` (eval mode): ``save_paddle_inference`` into a temporary folder beside
    ``path``, paddle2onnx (``opset``; a later one where an operator needs it unless ``upgrade`` is False),
    then InsightFace's interface (``conform_to_insightface``)."""
    import onnx

    from converters.outputs import temp_path

    path = Path(path)
    work = temp_path(path.with_name(path.name + ".paddle"))
    try:
        work.mkdir()
        prefix = save_paddle_inference(model, work / "model", name=path)
        data = _paddle2onnx(prefix, opset, upgrade)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _write_onnx(onnx.load_from_string(data), num_features, path)


class OnnxRunner:
    """onnxruntime on an exported ``.onnx``: a batch ``[N, 3, 112, 112]`` float32 in, ``[N, D]`` out."""

    def __init__(self, path: str | Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]


# ---------------------------------------------------------------------------------------------- checking
@dataclass
class CheckRow:
    reference: str
    input: str
    shape: tuple[int, ...]
    rel: float
    cosine: float

    @property
    def passed(self) -> bool:
        return bool(self.rel <= REL_GATE and self.cosine >= COSINE_GATE)


def check_inputs(spec: str, batch: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """Seeded images at batch 1 and ``batch`` (another seed), and ``batch`` faces of a ``.bin`` pack."""
    from converters.inputs import faces_from_bin, seeded_images

    inputs = [(f"seeded [-1, 1], seed {seed}", seeded_images(1, seed)),
              (f"seeded [-1, 1], seed {seed + 1}", seeded_images(batch, seed + 1))]
    if spec != "random":
        inputs.append((f"faces of {Path(spec).name}", faces_from_bin(spec, batch)))
    return inputs


def paddle_forward(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    import paddle

    def run(x: np.ndarray) -> np.ndarray:
        with paddle.no_grad():
            return model(paddle.to_tensor(x)).numpy()

    return run


def torch_forward(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return run


def compare(run: Callable[[np.ndarray], np.ndarray], references: dict[str, list[np.ndarray]],
            inputs: Sequence[tuple[str, np.ndarray]]) -> list[CheckRow]:
    """The exported model's embeddings against each reference's, input by input."""
    from converters.parity import compare_arrays

    outputs = [run(x) for _, x in inputs]
    rows = []
    for reference, expected in references.items():
        for (label, x), out, ref in zip(inputs, outputs, expected):
            if out.shape != ref.shape:
                rows.append(CheckRow(reference, label, tuple(x.shape), float("inf"), 0.0))
                continue
            _, rel, cosine = compare_arrays(ref, out)
            rows.append(CheckRow(reference, label, tuple(x.shape), rel, cosine))
    return rows


def file_sizes(path: Path) -> dict[str, float]:
    """MiB of the file ``path``, or of every file in the folder ``path``."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return {p.name: p.stat().st_size / 2**20 for p in files}


def results_table(rows: Sequence[CheckRow], fmt: str, sizes: dict[str, float]) -> str:
    from tabulate import tabulate

    files = ", ".join(f"{name} {mib:.1f}" for name, mib in sizes.items())
    table = [[fmt if i == 0 else "", files if i == 0 else "", r.reference, r.input, "x".join(map(str, r.shape)),
              f"{r.rel:.2e}", f"{r.cosine:.9f}", "PASS" if r.passed else "FAIL"] for i, r in enumerate(rows)]
    return tabulate(table, headers=["format", "files (MiB)", "against", "input", "shape", "worst rel",
                                    "min cosine", f"rel <= {REL_GATE:g}, cos >= {COSINE_GATE}"],
                    disable_numparse=True)


# ------------------------------------------------------------------------------------------ command line
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="export.py", description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="backbone weights (.pth/.pt or .pdparams)")
    parser.add_argument("--arch", choices=architectures.names(), help="expected architecture (default: detected)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    parser.add_argument("--out", type=Path, help="folder (paddle-inference; default <weights>-paddle-inference "
                        "beside the weights) or .onnx file (onnx; default <weights>.onnx)")
    parser.add_argument("--via", choices=VIAS, default=None,
                        help="onnx: convert the Paddle graph with paddle2onnx (default) or export the PyTorch "
                        "reference as arcface_torch does")
    parser.add_argument("--opset", type=int_range(MIN_OPSET, max(MAX_OPSET.values())), default=None,
                        help=f"onnx: ONNX opset (default {DEFAULT_OPSET}; up to {MAX_OPSET['paddle']} via paddle, "
                        f"{MAX_OPSET['torch']} via torch)")
    low = parser.add_argument_group("reduced precision")
    low.add_argument("--precision", choices=PRECISIONS, default="fp32",
                     help="fp32 (default); bf16: a paddle-inference graph for oneDNN bfloat16 (CPUs with "
                     "AVX-512); int8: calibrated on --calibration, paddle-inference (paddle.quantization.PTQ, "
                     "oneDNN int8) or onnx (onnxruntime's static quantization)")
    low.add_argument("--calibration", type=Path, metavar="PACK.bin|FOLDER",
                     help="aligned 112x112 faces (a .bin pack, or an image folder): int8 is calibrated on them, "
                     "and a reduced-precision export is compared with fp32 on them")
    low.add_argument("--calibration-images", type=int_range(DEFAULT_MINIMUM, 100000), default=DEFAULT_LIMIT,
                     metavar="N", help=f"faces read from --calibration (default {DEFAULT_LIMIT})")
    low.add_argument("--min-cosine", type=float_range(-1.0, 1.0), default=None,
                     help="refuse a reduced-precision export whose smallest embedding cosine to fp32 on the "
                     f"calibration faces is below this (default {DEFAULT_MIN_COSINE})")
    group = parser.add_argument_group("checking")
    group.add_argument("--verify", action="store_true",
                       help="also compare the export with the other framework's model")
    group.add_argument("--input", default="random", metavar="random|PACK.bin",
                       help="also check on real faces from a .bin pack (default: seeded images only)")
    group.add_argument("--batch", type=int_range(1, 1024), default=4,
                       help="images of the larger seeded batch and faces from --input (default 4)")
    group.add_argument("--seed", type=random_seed, default=0, help="seed of the seeded images (default 0)")
    group.add_argument("--threads", type=thread_count, default=None, help="CPU threads (default: $ARCFACE_THREADS, else all cores)")
    return parser.parse_args(argv)


def default_out(weights: Path, fmt: str) -> Path:
    return weights.with_name(f"{weights.stem}-paddle-inference") if fmt == "paddle-inference" \
        else weights.with_name(f"{weights.stem}.onnx")


def _route(args: argparse.Namespace) -> str:
    """The framework the export comes from (``paddle`` or ``torch``), after refusing options that do not go
    together."""
    if args.format == "paddle-inference":
        if args.via is not None:
            raise UserError("--via", "applies only to --format onnx (Paddle Inference exports the Paddle model)")
        if args.opset is not None:
            raise UserError("--opset", "applies only to --format onnx")
        return "paddle"
    via = args.via or "paddle"
    if args.opset is not None and args.opset > MAX_OPSET[via]:
        raise UserError("--opset", f"must be at most {MAX_OPSET[via]} with --via {via}, got {args.opset}")
    return via


def _check_precision(args: argparse.Namespace) -> None:
    """Refuse precision options that do not go together, before any work."""
    if args.precision == "fp32":
        for option, value in (("--calibration", args.calibration), ("--min-cosine", args.min_cosine)):
            if value is not None:
                raise UserError(option, "applies only to --precision bf16|int8")
        return
    if args.precision == "int8" and args.format == "paddle-inference" and not PaddlePredictor.int8_supported():
        raise UserError("--precision", "int8 for Paddle Inference needs a CPU with oneDNN int8 support (AVX-512 "
                        "or AVX-VNNI); use --format onnx")
    if args.precision == "bf16" and args.format != "paddle-inference":
        raise UserError("--precision", "bf16 is Paddle Inference's oneDNN bfloat16; use --format paddle-inference")
    if args.precision == "bf16" and not PaddlePredictor.bf16_supported():
        raise UserError("--precision", "bf16 needs a CPU with AVX-512 (avx512_core); on this one Paddle "
                        "Inference would silently run float32")
    if args.calibration is None:
        what = "calibrate on and compare with fp32 on" if args.precision == "int8" else "compare with fp32 on"
        raise UserError("--calibration", f"--precision {args.precision} needs aligned faces (PACK.bin or an image "
                        f"folder) to {what}")


@dataclass
class Guard:
    """A reduced-precision export against the fp32 model on the calibration faces."""

    precision: str
    calibration: str
    images: int
    cosine_min: float
    cosine_mean: float
    min_cosine: float

    @property
    def passed(self) -> bool:
        return bool(self.cosine_min >= self.min_cosine)

    def table(self) -> str:
        from tabulate import tabulate

        return tabulate([[self.precision, self.calibration, self.images, f"{self.cosine_min:.6f}",
                          f"{self.cosine_mean:.6f}", f">= {self.min_cosine:g}", "PASS" if self.passed else "FAIL"]],
                        headers=["precision", "faces", "images", "min cosine to fp32", "mean cosine",
                                 "--min-cosine", "verdict"], disable_numparse=True)

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images, "cosine_min": self.cosine_min, "cosine_mean": self.cosine_mean,
                "min_cosine": self.min_cosine}


class GuardFailed(Exception):
    """A reduced-precision export fell below ``--min-cosine``: nothing is written."""


def batched(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int = 32) -> np.ndarray:
    """``run`` over ``images`` ``batch`` at a time, concatenated."""
    from converters.quantize import batches

    return np.concatenate([run(x) for x in batches(images, batch)])


def reduce_precision(path: Path, args: argparse.Namespace, threads: int, calibration: np.ndarray,
                     reference: np.ndarray, source_name: str) -> Guard:
    """Make the checked fp32 export at ``path`` the ``args.precision`` one and measure it against
    ``reference``, the fp32 model's embeddings of ``calibration``: int8 ONNX, quantize the file in place;
    int8 Paddle Inference, the quantized model in ``path/int8`` replaces the fp32 graph; bf16, the graph is
    already the one for bf16."""
    from converters.parity import cosines

    if args.precision == "int8" and args.format == "paddle-inference":
        for name in ("model.json", "model.pdiparams"):
            (path / name).unlink()
        for item in (path / "int8").iterdir():
            os.replace(item, path / item.name)
        (path / "int8").rmdir()
        runner: Callable[[np.ndarray], np.ndarray] = PaddlePredictor(path / "model", threads, precision="int8")
    elif args.precision == "int8":
        from converters.quantize import quantize_onnx_int8

        quantized = path.with_name(path.name + ".int8")
        try:
            quantize_onnx_int8(path, quantized, calibration)
            os.replace(quantized, path)
        finally:
            quantized.unlink(missing_ok=True)
        runner = OnnxRunner(path, threads)
    else:
        runner = PaddlePredictor(path / "model", threads, precision="bf16")
    cos = cosines(reference, batched(runner, calibration))
    threshold = DEFAULT_MIN_COSINE if args.min_cosine is None else args.min_cosine
    return Guard(args.precision, source_name, len(calibration), float(cos.min()), float(cos.mean()), threshold)


def write_metadata(path: Path, folder: bool, fields: dict[str, Any]) -> None:
    """Record what an export is: ``export.json`` in a Paddle Inference folder; ``metadata_props`` entries
    named ``arcface_bridge.<field>`` in an ONNX file (strings; nested values as JSON)."""
    if folder:
        (path / "export.json").write_text(json.dumps(fields, indent=2) + "\n")
        return
    import onnx

    model = onnx.load(str(path))
    for key, value in fields.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"arcface_bridge.{key}", value if isinstance(value, str) else json.dumps(value)
    onnx.save_model(model, str(path))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from converters.outputs import atomic_directory, atomic_output, check_outputs

    via = _route(args)
    _check_precision(args)
    out = args.out or default_out(args.weights, args.format)
    folder = args.format == "paddle-inference"
    check_outputs({"--weights": args.weights, "--input": None if args.input == "random" else Path(args.input),
                   "--calibration": args.calibration}, {"--out": out}, folders=folder)  # before any work
    if folder and os.path.isdir(out) and any(out.iterdir()):
        raise UserError(out, "already exists and is not an empty folder; choose a new --out")
    if not folder and out.suffix.lower() != ".onnx":
        raise UserError(out, "an ONNX file name must end in .onnx (insightface.model_zoo.get_model loads only "
                        "such paths)")
    from converters.runtime import set_threads

    threads = set_threads(args.threads, paddle=True, torch=via == "torch" or args.verify)

    from converters.conversion_check import log
    from converters.models import paddle_model, torch_model
    from converters.weights import read_weights

    source = read_weights(args.weights, args.arch)
    arch, features = source.name, source.num_features
    if args.format == "onnx" and architectures.parameter_count(arch, features) * 4 > ONNX_MAX_BYTES:
        raise UserError(args.weights, f"{arch} holds more than 2 GiB of float32 weights, more than one ONNX "
                        "file can hold; use --format paddle-inference")
    log(f"{args.weights}: {arch}, {source.arch.description}")
    inputs = check_inputs(args.input, args.batch, args.seed)
    calibration = calibration_name = None
    if args.precision != "fp32":
        from converters.quantize import calibration_images, calibration_key

        calibration = calibration_images(args.calibration, args.calibration_images)
        calibration_name = f"{args.calibration.name} ({len(calibration)} faces, sha256 {calibration_key(args.calibration)})"

    # the references run before anything is exported (tracing must not be what is compared against)
    names = {"paddle": "Paddle dygraph", "torch": "PyTorch reference"}
    frameworks = [via, *(f for f in VIAS if f != via and args.verify)]
    models: dict[str, Any] = {}
    if "torch" in frameworks:
        models["torch"] = torch_model(arch, source.torch_state(), features, share=True)
    if "paddle" in frameworks:
        models["paddle"] = paddle_model(arch, source.paddle_state(), features, release=True)
    references = {}
    for framework in frameworks:
        run = (paddle_forward if framework == "paddle" else torch_forward)(models[framework])
        references[names[framework]] = [run(x) for _, x in inputs]
    low_reference = None
    if calibration is not None:  # the fp32 model the export comes from, on the calibration faces
        low_reference = batched((paddle_forward if via == "paddle" else torch_forward)(models[via]), calibration)
    opset = args.opset or DEFAULT_OPSET
    if args.format == "paddle-inference":
        what = "Paddle Inference (paddle.jit.save)"
    else:
        what = f"ONNX via {'paddle2onnx' if via == 'paddle' else 'torch.onnx (legacy exporter)'}, opset {opset}"
    log(f"exporting {arch} as {what}")

    writer = atomic_directory(out) if folder else atomic_output(out)
    try:
        with writer as tmp:
            t0 = time.perf_counter()
            if folder:
                save_paddle_inference(models["paddle"], tmp / "model", name=out,
                                      precision="bf16" if args.precision == "bf16" else "fp32")
                if args.precision == "int8":  # quantized from the dygraph model, checked after the fp32 graph
                    from converters.quantize import quantize_paddle_int8

                    log(f"int8: quantizing with paddle.quantization.PTQ, calibrated on {calibration_name}")
                    (tmp / "int8").mkdir()
                    quantize_paddle_int8(models["paddle"], tmp / "int8" / "model", calibration)
            elif via == "paddle":
                onnx_via_paddle(models["paddle"], features, tmp, opset, upgrade=args.opset is None)
            else:
                onnx_via_torch(models["torch"], features, tmp, opset)
            seconds = time.perf_counter() - t0
            models.clear()
            source.release()
            runner = PaddlePredictor(tmp / "model", threads) if folder else OnnxRunner(tmp, threads)
            rows = compare(runner, references, inputs)
            sizes = file_sizes(tmp)
            if not folder:
                sizes = {out.name: sizes[tmp.name]}
                opset = _opset_of(tmp)
            print(results_table(rows, args.format, sizes))
            if not all(r.passed for r in rows):
                raise GateFailed
            guard = None
            if calibration is not None:
                log(f"{args.precision}: comparing with fp32 on {calibration_name}")
                guard = reduce_precision(tmp, args, threads, calibration, low_reference, calibration_name)
                print(guard.table())
                if not guard.passed:
                    raise GuardFailed(guard)
                if folder:
                    sizes = file_sizes(tmp)
                else:
                    sizes, opset = {out.name: tmp.stat().st_size / 2**20}, _opset_of(tmp)
            metadata = {"arch": arch, "num_features": features, "precision": args.precision,
                        "calibration": calibration_name, "guard": guard.to_json() if guard else None}
            if folder or guard is not None:  # an ONNX file without these entries is fp32
                write_metadata(tmp, folder, {k: v for k, v in metadata.items() if v is not None})
    except GateFailed:
        print(f"error: {out}: not written, a gate failed (rel <= {REL_GATE:g}, cosine >= {COSINE_GATE})",
              file=sys.stderr, flush=True)
        return 1
    except GuardFailed as failed:
        g = failed.args[0]
        print(f"error: {out}: not written, the {g.precision} export's min embedding cosine to fp32 on "
              f"{g.images} calibration faces is {g.cosine_min:.6f}, below --min-cosine {g.min_cosine:g}",
              file=sys.stderr, flush=True)
        return 1
    detail = "" if folder else f", opset {opset}, input {ONNX_INPUT} [{BATCH_DIM}, 3, 112, 112], " \
        f"output {ONNX_OUTPUT} [{BATCH_DIM}, {features}]"
    if args.precision != "fp32":
        detail += f", {args.precision}"
    print(f"wrote {out} ({arch}, {args.format}{detail}; {sum(sizes.values()):.1f} MiB), exported in "
          f"{seconds:.1f} s, checked against the {' and the '.join(references)} on {len(inputs)} inputs")
    return 0


def _opset_of(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


if __name__ == "__main__":
    run_cli(lambda: main())
