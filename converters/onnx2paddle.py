"""Import an InsightFace recognition ONNX graph (model-pack files such as w600k_r50.onnx, or arcface_torch's
torch2onnx.py exports) as an ordinary Paddle checkpoint with InsightFace's names, and prove it against
onnxruntime stage by stage.

    python converters/onnx2paddle.py --src MODEL.onnx [--arch NAME] [--out PATH.pdparams] [--torch-out PATH.pth]
                                     [--report PATH.json] [--input PACK.bin] [--no-verify]

The graph is mapped by its structure, walked from the input along each architecture family's forward pass,
never by initializer names or order (model-pack files have numeric names); the registered architecture is
then recognised from the shapes read (``--arch`` is checked against it, or picks among names with the same
weights). A BatchNorm that the exporter folded into the convolution before it becomes that convolution's
weight followed by a BatchNorm with weight 1, bias b, running mean 0 and running variance 1 - eps, which is
exact in eval mode. Unless ``--no-verify``, onnxruntime runs the original graph and every stage that can be
exposed (each block, the embedding) is compared with the Paddle model holding the written weights, on seeded
images and, with ``--input``, on real faces: float32 rel <= 5e-5 per stage, embedding cosine >= 0.999999.
Exit codes: 0 imported and verified, 1 a gate failed (no file is left under any requested name), 2 a problem
with the input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as a file, sys.path[0] is this folder, whose modules would shadow others; the project root goes there.
if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import architectures  # noqa: E402
from converters.cli import ArgumentParser  # noqa: E402
from converters.errors import run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

FINE_TUNING_NOTE = (
    "{n} BatchNorm layer(s) were folded into the convolution before them in this graph and are represented "
    "exactly for inference (weight 1, bias b, running mean 0, running variance 1 - eps). Their original "
    "scale and statistics are baked into the convolution weights, so in train mode these BatchNorms "
    "normalise with batch statistics of un-normalised activations: expect the first fine-tuning steps to "
    "change the embedding noticeably (use a warm-up and a small learning rate, or keep BatchNorm in eval "
    "mode), and do not expect the result to match fine-tuning the original unfolded checkpoint.")


class GateFailed(Exception):
    """Raised inside the atomic writes so that a failed verification leaves no file behind."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from converters.conversion_check import add_verify_arguments

    parser = ArgumentParser(prog="onnx2paddle.py", description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="the ONNX recognition model (.onnx)")
    parser.add_argument("--arch", choices=architectures.names(),
                        help="expected architecture (default: recognised from the graph)")
    parser.add_argument("--out", type=Path, help="Paddle weights to write (default weights/paddle/<src name>.pdparams)")
    parser.add_argument("--torch-out", type=Path, help="also write InsightFace's PyTorch state_dict (.pth)")
    parser.add_argument("--no-verify", action="store_true", help="import without the onnxruntime comparison")
    add_verify_arguments(parser)
    parser.set_defaults(batch=4)
    return parser.parse_args(argv)


def describe(imported) -> list[str]:
    """What the importer found, one fact per line."""
    info = imported.arch
    norm = imported.normalisation
    lines = [
        f"{info.name}, {info.description}",
        f"graph: opset {imported.opset}, input '{imported.input_name}' batch {imported.batch!r}, output "
        f"'{imported.output_name}', {imported.producer or 'unknown producer'}; read as {imported.family}, "
        f"{len(imported.stages)} stages",
        f"folded BatchNorm: {len(imported.folded)} of the model's BatchNorm layers came folded into a "
        "convolution" if imported.folded else "folded BatchNorm: none (every BatchNorm read as stored)",
    ]
    if "mask_token" in imported.arrays:
        lines.append("mask_token: not in an inference graph (only training-time patch masking uses it); set to "
                     "zeros, so train from these weights with mask_ratio 0 or let it learn")
    if norm is None:
        lines.append("input normalisation: outside the graph (RGB, (pixel - 127.5) / 127.5, as this project's models)")
    else:
        lines.append(f"input normalisation: INSIDE the graph, (pixel - {norm['mean']}) / {norm['std']}; the imported "
                     "model expects input normalised that way, without those nodes")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from converters.runtime import set_threads

    set_threads(args.threads, paddle=not args.no_verify)
    from converters.checkpoint import sha256_file, write_paddle_weights, write_torch_state_dict
    from converters.conversion_check import log, write_report
    from converters.mapping import torch_to_paddle
    from converters.onnx_import import import_onnx
    from converters.outputs import atomic_output, check_outputs

    faces = None if args.input == "random" else Path(args.input)
    out = args.out or ROOT / "weights" / "paddle" / f"{args.src.stem}.pdparams"
    outputs = {"--out": out, "--torch-out": args.torch_out, "--report": args.report}
    check_outputs({"--src": args.src, "--input": faces}, outputs)  # before any work

    imported = import_onnx(args.src, args.arch)
    info = imported.arch
    src_digest = sha256_file(args.src)
    for line in describe(imported):
        log(f"{args.src}: {line}")
    if imported.folded:
        log("note: " + FINE_TUNING_NOTE.format(n=len(imported.folded)))

    weights = torch_to_paddle(imported.arrays, info.name, info.num_features, args.src)
    weights.meta.update(source_sha256=src_digest, source_format="onnx", folded_batchnorm=list(imported.folded),
                        input_normalisation=imported.normalisation and {k: imported.normalisation[k]
                                                                          for k in ("mean", "std")})
    count = len(weights.arrays)
    reports = []
    fields = _report_fields(args.src, src_digest, imported)
    try:
        with atomic_output(out) as tmp, _optional_output(args.torch_out) as torch_tmp:
            write_paddle_weights(tmp, weights, atomic=False)
            weights = None
            if torch_tmp is not None:
                write_torch_state_dict(torch_tmp, imported.arrays, atomic=False)
            if not args.no_verify:
                reports = _verify(args, imported, tmp, faces)
                if not all(r.passed for r in reports):
                    raise GateFailed
            digest = sha256_file(tmp)
            torch_digest = sha256_file(torch_tmp) if torch_tmp is not None else None
    except GateFailed:
        write_report(args.report, None, {**fields, "parity": [r.to_dict() for r in reports]})
        print(f"error: {out}: not written, parity gate failed against onnxruntime", file=sys.stderr, flush=True)
        return 1
    fields["output"] = {"path": str(out), "sha256": digest}
    if args.torch_out is not None:
        fields["torch_output"] = {"path": str(args.torch_out), "sha256": torch_digest}
    write_report(args.report, None, {**fields, "parity": [r.to_dict() for r in reports] or None})
    status = "verified against onnxruntime" if reports else "NOT verified (--no-verify)"
    print(f"wrote {out} ({info.name}, {count} arrays, sha256 {digest[:16]}...), {status}")
    if args.torch_out is not None:
        print(f"wrote {args.torch_out} (InsightFace PyTorch state_dict, sha256 {torch_digest[:16]}...)")
    return 0


def _optional_output(path: Path | None):
    import contextlib

    from converters.outputs import atomic_output

    return atomic_output(path) if path is not None else contextlib.nullcontext(None)


def _verify(args: argparse.Namespace, imported, written: Path, faces: Path | None) -> list:
    """The written weights, read back as a user would, against onnxruntime: seeded images, then real faces."""
    from converters.checkpoint import read_paddle_weights
    from converters.conversion_check import log
    from converters.inputs import faces_from_bin, seeded_images
    from converters.onnx_check import verify_onnx_import

    batches = [("seeded images", seeded_images(args.batch, args.seed))]
    if faces is not None:
        batches.append((f"faces from {faces}", faces_from_bin(faces, args.batch)))
    reports = []
    for label, images in batches:
        log(f"-- {label}")
        reports.append(verify_onnx_import(imported.graph, imported, read_paddle_weights(written), images, args))
    return reports


def _report_fields(src: Path, digest: str, imported) -> dict:
    info = imported.arch
    return {"tool": "onnx2paddle", "arch": info.name, "num_features": info.num_features,
            "source": {"path": str(src), "sha256": digest, "opset": imported.opset,
                       "input_name": imported.input_name, "batch": imported.batch,
                       "output_name": imported.output_name, "producer": imported.producer},
            "family": imported.family, "folded_batchnorm": list(imported.folded),
            "fine_tuning": FINE_TUNING_NOTE.format(n=len(imported.folded)) if imported.folded else None,
            "input_normalisation": imported.normalisation, "stages": [list(s) for s in imported.stages],
            "output": None}


if __name__ == "__main__":
    run_cli(lambda: main())
