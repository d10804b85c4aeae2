"""Layer-by-layer parity engine: a PyTorch module and a Paddle layer on the same numpy input.

Every named sublayer's output is captured with forward hooks in both frameworks, matched by name (the
backbones share sublayer names) and compared in execution order with scale-aware metrics:

* ``max_abs`` = max|paddle - torch|
* ``rel``     = max_abs / max|torch|  (the per-layer metric)
* ``cosine``  = the smallest per-sample cosine between the flattened outputs

The report names the first layer beyond its gate and prints every gate next to the measured value.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

OUTPUT = "(embedding)"  # the whole model's output row

# the parity gates: every layer in eval mode (float32), and the embedding's cosine to the reference
EVAL_LAYER_REL = 5e-5
EMBEDDING_COSINE = 0.999999
# train mode (batch statistics) and the running-statistics update: gates stated here, measured values in
# the report; the running variance is compared after correcting Paddle's biased update (see below)
TRAIN_LAYER_REL = 1e-4
RUNNING_STAT_REL = 1e-5


@dataclass
class LayerRow:
    layer: str
    shape: tuple[int, ...]
    max_abs: float
    rel: float
    cosine: float
    gate: str
    passed: bool
    note: str = ""


@dataclass
class ParityReport:
    stage: str
    dtype: str
    rows: list[LayerRow]
    gates: dict[str, float]
    input: dict[str, Any] = field(default_factory=dict)
    embedding_norms: list[float] = field(default_factory=list)  # of the PyTorch reference, per image

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def first_failure(self) -> LayerRow | None:
        return next((r for r in self.rows if not r.passed), None)

    @property
    def worst(self) -> LayerRow:
        return max(self.rows, key=lambda r: r.rel)

    @property
    def embedding_cosine(self) -> float | None:
        row = next((r for r in self.rows if r.layer == OUTPUT), None)
        return None if row is None else row.cosine

    def verdict(self) -> str:
        worst = self.worst
        parts = [f"{self.stage} ({self.dtype}, {len(self.rows)} rows): worst rel {worst.rel:.2e} at {worst.layer}"]
        if self.embedding_cosine is not None:
            parts.append(f"embedding cosine {self.embedding_cosine:.9f} (gate >= {self.gates.get('embedding_cosine')})")
        if self.passed:
            return "PASS " + "; ".join(parts)
        bad = self.first_failure
        n_bad = sum(not r.passed for r in self.rows)
        return (f"FAIL {'; '.join(parts)}; first layer beyond its gate: {bad.layer} "
                f"(rel {bad.rel:.2e}, cosine {bad.cosine:.9f}, gate {bad.gate}); {n_bad} rows fail")

    def table(self, only_failures: bool = False) -> str:
        from tabulate import tabulate

        rows = [r for r in self.rows if not (only_failures and r.passed)]
        body = [[r.layer, "x".join(map(str, r.shape)), f"{r.max_abs:.3e}", f"{r.rel:.3e}", f"{r.cosine:.9f}",
                 r.gate, "ok" if r.passed else "FAIL", r.note] for r in rows]
        return tabulate(body, headers=["layer", "shape", "max |diff|", "rel", "cosine", "gate", "", "note"],
                        tablefmt="simple", disable_numparse=True)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(passed=self.passed, verdict=self.verdict(), worst_rel=self.worst.rel,
                    worst_layer=self.worst.layer, embedding_cosine=self.embedding_cosine,
                    first_failure=None if self.first_failure is None else self.first_failure.layer)
        return data


# --------------------------------------------------------------------------------------------- capture
@dataclass
class Capture:
    outputs: OrderedDict[str, np.ndarray]
    input_shapes: dict[str, tuple[int, ...]]
    calls: dict[str, int] = field(default_factory=dict)  # layer name -> times called so far

    def label(self, name: str) -> str:
        """``name`` at its first call, ``name#2`` at its second (a ViT calls its dropouts twice), ..."""
        count = self.calls[name] = self.calls.get(name, 0) + 1
        return name if count == 1 else f"{name}#{count}"


def _record(capture: Capture, label: str, inputs: Any, output: Any, to_numpy) -> None:
    label = capture.label(label)
    # copy now: the torch block adds the shortcut in place into bn3's output after this hook
    capture.outputs[label] = to_numpy(output)
    if inputs:
        capture.input_shapes[label] = tuple(inputs[0].shape)


def capture_torch(model, x: np.ndarray) -> Capture:
    """Run ``model`` on ``x`` (numpy, NCHW) and return every named module's output, in call order."""
    import torch

    capture = Capture(OrderedDict(), {})

    def to_numpy(t):
        return t.detach().cpu().numpy().copy()

    handles = []
    for name, module in model.named_modules():
        hook = functools.partial(_torch_hook, capture, name or OUTPUT, to_numpy)
        handles.append(module.register_forward_hook(hook))
    try:
        dtype = next(model.parameters()).dtype
        with torch.no_grad():
            model(torch.from_numpy(np.ascontiguousarray(x)).to(dtype))
    finally:
        for h in handles:
            h.remove()
    return capture


def _torch_hook(capture, label, to_numpy, module, inputs, output):
    _record(capture, label, inputs, output, to_numpy)


def capture_paddle(model, x: np.ndarray, record=None) -> Capture:
    """Run a Paddle ``model`` on ``x`` and return every named sublayer's output, in call order.

    ``record(label, output)``, if given, receives each output instead of the capture keeping it."""
    import paddle

    capture = Capture(OrderedDict(), {})

    def to_numpy(t):
        return np.array(t.numpy(), copy=True)

    handles = []
    for name, layer in model.named_sublayers(include_self=True):
        if record is None:
            hook = functools.partial(_paddle_hook, capture, name or OUTPUT, to_numpy)
        else:
            hook = functools.partial(_paddle_stream_hook, capture, name or OUTPUT, record)
        handles.append(layer.register_forward_post_hook(hook))
    try:
        dtype = model.parameters()[0].dtype
        with paddle.no_grad():
            model(paddle.to_tensor(np.ascontiguousarray(x)).astype(dtype))
    finally:
        for h in handles:
            h.remove()
    return capture


def _paddle_hook(capture, label, to_numpy, layer, inputs, output):
    _record(capture, label, inputs, output, to_numpy)
    return None  # a hook that returns something replaces the layer's output


def _paddle_stream_hook(capture, label, record, layer, inputs, output):
    record(capture.label(label), output.numpy())
    return None


# --------------------------------------------------------------------------------------------- metrics
def cosines(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The cosine of each sample of ``out`` (rows of a ``[N, ...]`` array) with the same sample of ``ref``,
    in float64; a zero sample has cosine 1 with an equal one and 0 otherwise."""
    ref64 = np.asarray(ref, dtype=np.float64)
    rows = ref64.reshape(ref64.shape[0], -1) if ref64.ndim > 1 else ref64.reshape(1, -1)
    outs = np.asarray(out, dtype=np.float64).reshape(rows.shape)
    norms = np.linalg.norm(rows, axis=1) * np.linalg.norm(outs, axis=1)
    dots = np.sum(rows * outs, axis=1)
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0),
                    np.where(np.linalg.norm(rows - outs, axis=1) == 0, 1.0, 0.0))


def compare_arrays(ref: np.ndarray, out: np.ndarray) -> tuple[float, float, float]:
    """(max_abs, rel, min per-sample cosine) of ``out`` against ``ref``, computed in float64."""
    ref64 = np.asarray(ref, dtype=np.float64)
    out64 = np.asarray(out, dtype=np.float64)
    diff = float(np.max(np.abs(out64 - ref64))) if ref64.size else 0.0
    scale = float(np.max(np.abs(ref64))) if ref64.size else 0.0
    rel = diff / scale if scale > 0 else diff
    return diff, rel, float(np.min(cosines(ref64, out64)))


def _row(layer: str, ref: np.ndarray, out: np.ndarray, rel_gate: float,
         cosine_gate: float | None = None, note: str = "") -> LayerRow:
    if ref.shape != out.shape:
        return LayerRow(layer, tuple(ref.shape), math.inf, math.inf, 0.0, "same shape", False,
                        f"Paddle shape {tuple(out.shape)}")
    max_abs, rel, cos = compare_arrays(ref, out)
    gate = f"rel <= {rel_gate:g}"
    passed = rel <= rel_gate
    if cosine_gate is not None:
        gate += f", cos >= {cosine_gate}"
        passed = passed and cos >= cosine_gate
    return LayerRow(layer, tuple(ref.shape), max_abs, rel, cos, gate, bool(passed), note)


def compare_captures(ref: Capture, out: Capture, rel_gate: float, cosine_gate: float) -> list[LayerRow]:
    rows = []
    for name, ref_out in ref.outputs.items():
        if name not in out.outputs:
            rows.append(_missing(name, ref_out.shape, "Paddle"))
            continue
        rows.append(_row(name, ref_out, out.outputs[name], rel_gate,
                         cosine_gate if name == OUTPUT else None))
    for name, out_val in out.outputs.items():
        if name not in ref.outputs:
            rows.append(_missing(name, out_val.shape, "PyTorch"))
    return rows


def _missing(name: str, shape: tuple[int, ...], framework: str) -> LayerRow:
    what = "layer" if framework == "Paddle" else "module"
    return LayerRow(name, tuple(shape), math.inf, math.inf, 0.0, "present", False,
                    f"no {framework} {what} of this name ran")


def compare_paddle_against(ref: Capture, paddle_model, x: np.ndarray, rel_gate: float,
                           cosine_gate: float) -> list[LayerRow]:
    """``compare_captures(ref, capture_paddle(paddle_model, x), ...)`` without keeping Paddle's outputs: each
    is compared as its layer returns it, and the reference output it was compared with is dropped from
    ``ref.outputs``. Peak memory is one capture instead of two (3.3 GB for r2060 at batch 2)."""
    order = list(ref.outputs)
    shapes = {name: tuple(a.shape) for name, a in ref.outputs.items()}
    compared: dict[str, LayerRow] = {}
    extra: list[LayerRow] = []

    def record(label: str, output: np.ndarray) -> None:
        ref_out = ref.outputs.pop(label, None)
        if ref_out is None:
            extra.append(_missing(label, output.shape, "PyTorch"))
        else:
            compared[label] = _row(label, ref_out, output, rel_gate, cosine_gate if label == OUTPUT else None)

    capture_paddle(paddle_model, x, record)
    rows = [compared.get(name) or _missing(name, shapes[name], "Paddle") for name in order]
    return rows + extra


# --------------------------------------------------------------------------------------------- stages
def compare_forward(torch_model, paddle_model, x: np.ndarray, train: bool = False,
                    input_info: dict | None = None) -> ParityReport:
    """Forward parity at every layer, in eval mode (running statistics) or train mode (batch statistics).

    A train-mode pass also updates both models' running statistics: use ``compare_train_forward``.
    """
    return _forward(torch_model, paddle_model, x, train, input_info)[0]


def compare_train_forward(torch_model, paddle_model, x: np.ndarray,
                          input_info: dict | None = None) -> tuple[ParityReport, ParityReport]:
    """One train-mode forward in both: (per-layer report, running-statistics report)."""
    before = running_vars(torch_model)
    forward, capture = _forward(torch_model, paddle_model, x, True, input_info)
    return forward, compare_running_stats(torch_model, paddle_model, before, capture)


def _forward(torch_model, paddle_model, x, train, input_info) -> tuple[ParityReport, Capture]:
    torch_model.train(train)
    paddle_model.train() if train else paddle_model.eval()
    rel_gate = TRAIN_LAYER_REL if train else EVAL_LAYER_REL
    ref = capture_torch(torch_model, x)
    embedding = ref.outputs.get(OUTPUT)
    norms = [] if embedding is None else [float(np.linalg.norm(np.asarray(e, np.float64))) for e in embedding]
    rows = compare_paddle_against(ref, paddle_model, x, rel_gate, EMBEDDING_COSINE)
    torch_model.eval()
    paddle_model.eval()
    dtype = str(next(torch_model.parameters()).dtype).replace("torch.", "")
    report = ParityReport("forward-train" if train else "forward-eval", dtype, rows,
                          {"layer_rel": rel_gate, "embedding_cosine": EMBEDDING_COSINE},
                          dict(input_info or {}), norms)
    report.input.setdefault("shape", list(x.shape))
    return report, ref


def unbiased_running_var(paddle_var: np.ndarray, before: np.ndarray, n: int, momentum: float = 0.1) -> np.ndarray:
    """Turn Paddle's running-variance update (biased batch variance) into torch's (unbiased) exactly.

    Paddle: v' = (1-m) v + m b;  torch: v' = (1-m) v + m b n/(n-1), with m the torch momentum and b the
    biased batch variance over the n = N*H*W values of a channel. Solving the first for b gives the second.
    """
    paddle_var = np.asarray(paddle_var, dtype=np.float64)
    batch_var = (paddle_var - (1.0 - momentum) * np.asarray(before, dtype=np.float64)) / momentum
    return paddle_var + momentum * batch_var / (n - 1)


def compare_running_stats(torch_model, paddle_model, before: dict[str, np.ndarray], capture: Capture,
                          rel_gate: float = RUNNING_STAT_REL) -> ParityReport:
    """Running mean and variance of every BatchNorm after one train-mode forward.

    ``before`` maps torch BN module names to their running_var before the forward. Rows for the variance
    are gated after the exact biased->unbiased correction; the raw gap is kept in the note.
    """
    import torch

    paddle_layers = dict(paddle_model.named_sublayers())
    rows = []
    for name, module in torch_model.named_modules():
        if not isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            continue
        layer = paddle_layers[name]
        shape = capture.input_shapes[name]
        n = int(np.prod(shape)) // int(shape[1])
        t_mean = module.running_mean.detach().numpy()
        t_var = module.running_var.detach().numpy()
        p_mean = layer._mean.numpy()
        p_var = layer._variance.numpy()
        rows.append(_row(f"{name}.running_mean", t_mean, p_mean, rel_gate))
        raw = compare_arrays(t_var, p_var)[1]
        corrected = unbiased_running_var(p_var, before[name], n, momentum=module.momentum)
        rows.append(_row(f"{name}.running_var", t_var, corrected, rel_gate,
                         note=f"n={n}; uncorrected rel {raw:.2e}"))
    dtype = str(next(torch_model.parameters()).dtype).replace("torch.", "")
    return ParityReport("running-stats", dtype, rows, {"stat_rel": rel_gate})


def running_vars(torch_model) -> dict[str, np.ndarray]:
    """Snapshot of every BatchNorm's running_var, keyed by module name."""
    import torch

    return {name: m.running_var.detach().numpy().copy() for name, m in torch_model.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
