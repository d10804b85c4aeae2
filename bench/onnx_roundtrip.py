"""ONNX round trips for every registered architecture with distinct weights up to 200 M parameters, as a table.

    python bench/onnx_roundtrip.py [--archs r18,mbf,...] [--faces N] [--out bench/results/onnx_roundtrip.md]

Per architecture, on seeded calibrated demo weights and the first N faces of small_lfw.bin:

- torch route: the PyTorch reference -> ONNX (arcface_torch's recipe: legacy exporter, opset 11, BatchNorm
  folded) -> import (``converters.onnx_import``) -> Paddle names -> back to InsightFace's state_dict ->
  PyTorch reference, against the original PyTorch reference;
- paddle route: the Paddle model -> ONNX (paddle2onnx) -> import -> Paddle model, against the original
  Paddle model.

Columns: ONNX size, export and import seconds, BatchNorm layers folded in the graph, stages the importer
mapped, embedding worst relative error and minimum cosine (gates 5e-5 and 0.999999).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import warnings  # noqa: E402

import numpy as np  # noqa: E402

# paddle.jit.save tracing a model warns once per layer that a PIR value has no place
warnings.filterwarnings("ignore", message=".*do not have 'place' interface.*")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "small_lfw.bin"


def compare(ref: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    ref, out = ref.astype(np.float64), out.astype(np.float64)
    cos = np.sum(ref * out, 1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(out, axis=1)
    return float(np.abs(ref - out).max() / np.abs(ref).max()), float(cos.min())


def round_trip(arch: str, route: str, faces: np.ndarray, folder: Path) -> dict:
    from converters.demo import demo_state_dict
    from converters.export import export_onnx, onnx_via_paddle, paddle_forward, torch_forward
    from converters.mapping import paddle_to_torch, torch_to_paddle
    from converters.models import paddle_model, torch_model
    from converters.onnx_import import import_onnx

    state = demo_state_dict(arch, seed=7)
    path = folder / f"{arch}-{route}.onnx"
    t0 = time.perf_counter()
    if route == "torch":
        reference = torch_forward(torch_model(arch, state, share=True))(faces)
        export_onnx(state, arch, 512, path)
    else:
        model = paddle_model(arch, torch_to_paddle(state, arch, 512, "<demo>"), 512)
        reference = paddle_forward(model)(faces)
        onnx_via_paddle(model, 512, path)
        del model
    exported = time.perf_counter() - t0
    del state
    t0 = time.perf_counter()
    imported = import_onnx(path, arch)
    imported_s = time.perf_counter() - t0
    weights = torch_to_paddle(imported.arrays, arch, 512, path)
    if route == "torch":
        out = torch_forward(torch_model(arch, paddle_to_torch(weights, arch, 512, path), share=True))(faces)
    else:
        out = paddle_forward(paddle_model(arch, weights, 512))(faces)
    rel, cos = compare(reference, out)
    size = path.stat().st_size / 2**20
    path.unlink()
    return {"arch": arch, "route": f"{route} -> ONNX -> import", "MiB": round(size, 1),
            "export s": round(exported, 1), "import s": round(imported_s, 1), "folded BN": len(imported.folded),
            "stages": len(imported.stages), "worst rel": f"{rel:.2e}", "min cosine": f"{cos:.9f}",
            "pass": "PASS" if rel <= 5e-5 and cos >= 0.999999 else "FAIL"}


def main(argv: list[str] | None = None) -> int:
    from tabulate import tabulate

    from converters.inputs import faces_from_bin
    from converters.runtime import library_versions, set_threads
    from parity_tests.archs import ARCHS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default=",".join(ARCHS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--faces", type=int, default=4, help="faces of small_lfw.bin compared (default 4)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    set_threads(None)
    faces = faces_from_bin(SHARED, args.faces)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            for route in ("torch", "paddle"):
                rows.append(round_trip(arch, route, faces, Path(tmp)))
                print(" | ".join(str(v) for v in rows[-1].values()), flush=True)
    versions = library_versions()
    header = f"{args.faces} faces of small_lfw.bin; " + ", ".join(f"{k} {v}" for k, v in versions.items())
    table = tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True)
    print(header)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"{header}\n\n{table}\n")
    return 0 if all(r["pass"] == "PASS" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
