"""Checking an ONNX import stage by stage: the imported Paddle model against onnxruntime on the original graph.

    report = verify_onnx_import(path_or_model, imported, None, images, args)

``imported`` is what ``converters.onnx_import.import_onnx`` returns: ``.arch`` (name, num_features),
``.arrays`` (InsightFace-named state_dict), ``.stages`` (``(module name, ONNX tensor name)`` pairs, the
tensor equal to the module's eval-mode output: a residual block's is its Add node's), ``.normalisation`` (``{"mean", "std"}`` when the graph normalises raw pixels itself, else
``None``) and ``.input_name``. onnxruntime runs the original graph with every stage tensor added to its
outputs (``run_onnx_stages``; graph optimisations off, so no fused node hides a tensor), the Paddle model
holding the imported weights runs on the same images, and each stage becomes one row of a
``converters.parity.ParityReport`` under the forward gates (float32 rel <= 5e-5 per stage, embedding cosine
>= 0.999999), with onnxruntime as the reference.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from .checkpoint import PaddleWeights
from .errors import UserError
from .parity import EMBEDDING_COSINE, EVAL_LAYER_REL, OUTPUT, ParityReport, _missing, _row, capture_paddle
from .runtime import default_threads

if TYPE_CHECKING:
    import onnx

    from .onnx_graph import OnnxGraph

# protobuf refuses to serialise a message of 2 GiB or more: a larger model reaches onnxruntime as a file
# in a temporary folder with its weights stored beside it
_PROTOBUF_LIMIT = 2**31 - 1


# ------------------------------------------------------------------------------------------- onnxruntime
def add_onnx_stage_outputs(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs also list ``tensors`` (intermediate values); ``model`` is
    left unchanged.

    An output is added as a ``ValueInfoProto`` holding only its name: onnxruntime infers its type and shape
    while it resolves the graph. A name that no node, input or initialiser produces raises ``KeyError``."""
    import onnx

    graph = model.graph
    known = {name for node in graph.node for name in node.output}
    known.update(v.name for v in graph.input)
    known.update(t.name for t in graph.initializer)
    unknown = [t for t in tensors if t not in known]
    if unknown:
        raise KeyError(f"no tensor named {unknown[0]!r} in the graph ({len(unknown)} of {len(tensors)} unknown)")
    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    present = {o.name for o in extended.graph.output}
    for name in dict.fromkeys(tensors):
        if name not in present:
            extended.graph.output.append(onnx.ValueInfoProto(name=name))
    return extended


def run_onnx_stages(onnx_path: str | Path | onnx.ModelProto | OnnxGraph, input_name: str | None, x: np.ndarray,
                    tensors: Sequence[str], threads: int | None = None) -> dict[str, np.ndarray]:
    """``{tensor: value}`` of every named tensor when onnxruntime runs the graph on ``x`` (the graph's input,
    float32, e.g. ``[N, 3, 112, 112]``).

    ``onnx_path`` is a file (read with its external data by ``converters.onnx_graph.read_onnx``), what
    ``read_onnx`` returned, or an ``onnx.ModelProto`` already holding its weights; none is modified. onnxruntime runs on the CPU
    with ``threads`` intra-op threads (default: ``runtime.default_threads()``) and graph optimisations off, so that no fused
    node hides an intermediate tensor. A graph whose input declares a fixed batch (1 in some exports) runs
    ``x`` in pieces of that batch. ``input_name`` ``None`` takes the graph's first input."""
    model, path = _model_and_path(onnx_path)
    return _run(model, path, input_name, x, tensors, threads)


def _run(model: onnx.ModelProto, path: Path | None, input_name: str | None, x: np.ndarray,
         tensors: Sequence[str], threads: int | None) -> dict[str, np.ndarray]:
    """``run_onnx_stages`` on a model already read; ``path`` names the file in errors."""
    if input_name is None:
        initialisers = {t.name for t in model.graph.initializer}
        input_name = next(v.name for v in model.graph.input if v.name not in initialisers)
    batch = _fixed_batch(model, input_name) or len(x)
    extended = add_onnx_stage_outputs(model, tensors)
    names = list(dict.fromkeys(tensors))
    with _session(extended, path, threads) as (session, run_options):
        pieces = []
        for start in range(0, len(x), batch):
            feed = {input_name: np.ascontiguousarray(x[start:start + batch], dtype=np.float32)}
            try:
                pieces.append(session.run(names, feed, run_options))
            except Exception as err:  # onnxruntime's own types (InvalidArgument, Fail, RuntimeException, ...)
                raise UserError(path, f"onnxruntime failed running the graph on a batch of "
                                f"{list(feed[input_name].shape)} ({_first_line(err)})") from None
    return {name: np.concatenate([p[i] for p in pieces]) if len(pieces) > 1 else pieces[0][i]
            for i, name in enumerate(names)}


def _model_and_path(source: str | Path | onnx.ModelProto | OnnxGraph) -> tuple[onnx.ModelProto, Path | None]:
    """The model and the file it came from (None for a ModelProto): a path is read by ``read_onnx``, with its
    external data; an ``OnnxGraph`` (``read_onnx``'s result, also ``ImportedGraph.graph``) is used as read."""
    import onnx

    from .onnx_graph import OnnxGraph, read_onnx

    if isinstance(source, OnnxGraph):
        return source.model, source.path
    if isinstance(source, onnx.ModelProto):
        external = [t.name for t in source.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        if external:
            raise ValueError(f"the ModelProto's initialiser {external[0]!r} (and {len(external) - 1} more) is "
                             "stored outside it: read the model with its external data")
        return source, None
    graph = read_onnx(source)
    return graph.model, graph.path


def _fixed_batch(model: onnx.ModelProto, input_name: str) -> int | None:
    for value in model.graph.input:
        if value.name == input_name and value.type.tensor_type.shape.dim:
            first = value.type.tensor_type.shape.dim[0]
            return first.dim_value if first.HasField("dim_value") and first.dim_value > 0 else None
    return None


def _first_line(err: Exception) -> str:
    return next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)[:240]


@contextlib.contextmanager
def _session(model: onnx.ModelProto, path: Path | None, threads: int | None) -> Iterator[tuple[Any, Any]]:
    """An onnxruntime session on ``model`` and its run options. The session reads ``model`` from memory, or,
    when it is too large to serialise, from a temporary copy with its weights beside it (removed on exit);
    saving that copy moves ``model``'s weights out of it, so ``model`` must be the caller's own copy."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = int(threads or default_threads())
    options.inter_op_num_threads = 1
    # 3 would silence the warning for each output whose declared batch is 1; 4 also keeps onnxruntime from
    # logging a failure that is then reported as this project's one-line error
    options.log_severity_level = 4
    with contextlib.ExitStack() as stack:
        if model.ByteSize() < _PROTOBUF_LIMIT:
            source: Any = model.SerializeToString()
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="onnx-check-")))
            source = str(folder / "model.onnx")
            onnx.save_model(model, source, save_as_external_data=True, location="model.data")
        try:
            session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's own exception types (InvalidGraph, Fail, ...)
            raise UserError(path, f"onnxruntime cannot load it ({_first_line(err)})") from None
        del source
        run_options = ort.RunOptions()
        run_options.log_severity_level = 4
        yield session, run_options


# ------------------------------------------------------------------------------------------------ inputs
def stage_inputs(images: np.ndarray, normalisation: Mapping[str, Any] | None
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(onnxruntime's input, Paddle's input, a description) for the same images.

    ``images`` are uint8 RGB pixels ``[N, H, W, 3]`` (as decoded from a pack) or the project's normalised
    float32 ``[N, 3, H, W]`` (RGB, ``(pixel - 127.5) / 127.5``). A graph taking normalised input
    (``normalisation`` None) gets what the project's models get (``converters.images.normalize``), and so
    does Paddle. A graph that normalises itself gets the pixels as float32 ``[N, 3, H, W]`` in 0..255, RGB,
    and Paddle the same pixels normalised with the graph's own mean and std (a number or one per RGB channel).
    """
    from .images import normalize

    images = np.asarray(images)
    if images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] == 3:
        normalised = normalize(images)
        pixels = np.ascontiguousarray(np.moveaxis(images, -1, 1), dtype=np.float32)
        kind = "uint8 RGB pixels"
    elif images.dtype.kind == "f" and images.ndim == 4 and images.shape[1] == 3:
        normalised = np.ascontiguousarray(images, dtype=np.float32)
        pixels = normalised * np.float32(127.5) + np.float32(127.5)
        kind = "normalised RGB"
    else:
        raise ValueError(f"images of shape {list(images.shape)} and dtype {images.dtype}: expected uint8 "
                         "[N, H, W, 3] or normalised float [N, 3, H, W]")
    info: dict[str, Any] = {"images": kind, "shape": list(normalised.shape)}
    if normalisation is None:
        onnx_x = paddle_x = normalised
        info["onnx_input"] = "normalised (pixel - 127.5) / 127.5, as the project's models take"
    else:
        mean = _per_channel(normalisation["mean"])
        std = _per_channel(normalisation["std"])
        onnx_x, paddle_x = pixels, (pixels - mean) / std
        info["onnx_input"] = "RGB pixels 0..255: the graph normalises them"
        info["normalisation"] = {"mean": _plain(normalisation["mean"]), "std": _plain(normalisation["std"])}
    info["sha256"] = hashlib.sha256(np.ascontiguousarray(onnx_x).tobytes()).hexdigest()
    return onnx_x, paddle_x, info


def _per_channel(value: Any) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float32)
    return arr.reshape(1, -1, 1, 1) if arr.size > 1 else arr.reshape(())


def _plain(value: Any) -> float | list[float]:
    arr = np.asarray(value, dtype=np.float64)
    return arr.tolist() if arr.size > 1 else float(arr.reshape(()))


# ------------------------------------------------------------------------------------------ verification
def verify_onnx_import(onnx_model: str | Path | onnx.ModelProto | OnnxGraph, imported: Any,
                       paddle_weights: PaddleWeights | None, images: np.ndarray,
                       options: Any = None) -> ParityReport:
    """Every stage of the Paddle model holding the imported weights against onnxruntime on the original graph,
    printed as a per-stage table and a verdict (as ``conversion_check.run_parity`` prints a conversion's).

    ``onnx_model``: the ``.onnx`` file, ``imported.graph`` (the file as the importer read it) or a ModelProto.
    ``paddle_weights``: the Paddle-named weights to check (``None``: ``imported.arrays`` mapped here by
    ``converters.mapping.torch_to_paddle``; given weights are left untouched). ``images``: see
    ``stage_inputs``. ``options``: an ``argparse.Namespace`` or anything with ``threads`` (onnxruntime's
    intra-op threads, default ``runtime.default_threads()``; Paddle's are the process's, set by ``converters.runtime.set_threads``
    as the converter CLIs do) and ``table`` (``full``, ``failures`` or ``none``; default full).
    Rows: one per ``imported.stages`` entry in that order, then ``(embedding)``, the graph's output against
    the Paddle model's, which also carries the cosine gate."""
    from .conversion_check import log, print_report
    from .mapping import torch_to_paddle
    from .models import paddle_model

    threads = getattr(options, "threads", None)
    table = getattr(options, "table", "full")
    arch = imported.arch
    onnx_model, path = _model_and_path(onnx_model)
    onnx_x, paddle_x, info = stage_inputs(images, imported.normalisation)
    stages = list(imported.stages)
    output_name = onnx_model.graph.output[0].name
    log(f"verifying the {arch.name} import against onnxruntime: {info['images']}, input {tuple(onnx_x.shape)}, "
        f"{len(stages)} stages")
    t0 = time.perf_counter()

    release = paddle_weights is None
    if paddle_weights is None:
        paddle_weights = torch_to_paddle(imported.arrays, arch.name, arch.num_features, path or "<onnx model>")
    reference = _run(onnx_model, path, imported.input_name, onnx_x, [t for _, t in stages] + [output_name],
                     threads)
    model = paddle_model(arch.name, paddle_weights, arch.num_features, release=release)
    wanted = {name for name, _ in stages} | {OUTPUT}
    outputs: dict[str, np.ndarray] = {}

    def keep(label: str, value: np.ndarray) -> None:
        if label in wanted:
            outputs[label] = np.array(value, copy=True)

    capture_paddle(model, paddle_x, keep)
    del model

    rows = []
    for name, tensor in [*stages, (OUTPUT, output_name)]:
        ref = reference[tensor]
        if name not in outputs:
            row = _missing(name, ref.shape, "Paddle")
            row.note += f"; onnx {tensor}"
        else:
            row = _row(name, ref, outputs[name], EVAL_LAYER_REL, EMBEDDING_COSINE if name == OUTPUT else None,
                       note=f"onnx {tensor}")
        rows.append(row)
    embedding = reference[output_name]
    norms = [float(np.linalg.norm(np.asarray(e, np.float64))) for e in embedding.reshape(len(embedding), -1)]
    info.update(reference="onnxruntime on the original graph", seconds=round(time.perf_counter() - t0, 2))
    report = ParityReport("onnx-import", "float32", rows,
                          {"layer_rel": EVAL_LAYER_REL, "embedding_cosine": EMBEDDING_COSINE}, info, norms)
    print_report(report, table)
    return report
