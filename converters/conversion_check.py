"""Checking a conversion, shared by the converter CLIs (torch2paddle.py, paddle2torch.py): their verification
options (``--input``, ``--batch``, ``--seed``, ``--threads``, ``--table``, ``--report``), the forward-parity run
of both models against the gates (``converters.parity``) with its table and verdict, and the JSON report."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .checkpoint import PaddleWeights
from .cli import int_range, random_seed, thread_count
from .inputs import parity_input
from .models import paddle_model, torch_model
from .outputs import atomic_output
from .parity import ParityReport, compare_forward


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("verification")
    group.add_argument("--input", default="random", metavar="random|PACK.bin",
                       help="parity input: seeded random images (default) or real faces from a .bin pack")
    group.add_argument("--batch", type=int_range(1, 1024), default=4, help="images in the parity batch (default 4)")
    group.add_argument("--seed", type=random_seed, default=0, help="seed of the random parity input (default 0)")
    group.add_argument("--threads", type=thread_count, default=None, help="CPU threads (default: $ARCFACE_THREADS, else all cores)")
    group.add_argument("--table", choices=("full", "failures", "none"), default="full",
                       help="per-layer table to print (default full)")
    group.add_argument("--report", type=Path, default=None, metavar="PATH.json",
                       help="write the per-layer parity report as JSON")


def log(message: str) -> None:
    """Progress and facts about the run go to stdout; stderr is kept for the one-line error."""
    print(message, flush=True)


def run_parity(arch: str, num_features: int, torch_arrays: Mapping[str, np.ndarray],
               paddle_weights: PaddleWeights, args: argparse.Namespace) -> ParityReport:
    """Eval-mode forward parity of the PyTorch reference holding ``torch_arrays`` and the Paddle model
    holding ``paddle_weights`` (both loaded strictly), printed as a per-layer table and a verdict.

    No second copy of the weights is made: the PyTorch model's parameters are ``torch_arrays`` and the
    Paddle model takes the arrays out of ``paddle_weights`` (left empty)."""
    x, info = parity_input(args.input, args.batch, args.seed)
    log(f"verifying {arch}: {info['kind']}, input {tuple(x.shape)}")
    t0 = time.perf_counter()
    reference = torch_model(arch, torch_arrays, num_features, share=True)
    converted = paddle_model(arch, paddle_weights, num_features, release=True)
    report = compare_forward(reference, converted, x, input_info=info)
    report.input["seconds"] = round(time.perf_counter() - t0, 2)
    print_report(report, args.table)
    return report


def print_report(report: ParityReport, table: str = "full") -> None:
    """The per-layer table (``full``, ``failures`` or ``none``) and the verdict line."""
    if table != "none":
        text = report.table(only_failures=table == "failures")
        if text.count("\n") > 1:
            print(text)
    print(report.verdict())


def write_report(path: Path | None, report: ParityReport | None, extra: dict[str, Any]) -> None:
    """Write the JSON report (gates, per-layer numbers, versions, input, hashes) if a path was given."""
    if path is None:
        return
    from .runtime import library_versions

    data: dict[str, Any] = {"versions": library_versions(), **extra}
    if report is not None:
        data["parity"] = report.to_dict()
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    log(f"report: {path}")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
