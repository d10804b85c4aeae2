"""Convert an InsightFace PyTorch backbone to Paddle and prove, layer by layer, that nothing changed.

    python converters/torch2paddle.py [--arch r50] [--src CKPT] [--out PATH] [--report PATH.json] [--no-verify]

The checkpoint is read with ``torch.load(weights_only=True)``; the architecture is recognised from its
keys and shapes (``--arch`` is checked against it); every key is mapped by name with its shape checked.
Unless ``--no-verify``, the PyTorch reference and the converted Paddle model run on the same input and
every layer is compared against the parity gates (float32 rel <= 5e-5 per layer, embedding
cosine >= 0.999999). Exit codes: 0 converted and verified, 1 a parity gate
failed (no weights file is left under the requested name), 2 a problem with the input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Run as a file, sys.path[0] is this folder, whose modules would shadow others even when the project is
# installed (train/train.py would be imported as `train`); the project root goes there instead, which also
# lets a plain clone run without installing.
if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import architectures  # noqa: E402
from converters.cli import ArgumentParser  # noqa: E402
from converters.errors import run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights"


class GateFailed(Exception):
    """Raised inside the atomic write so that a failed verification leaves no weights file."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from converters.conversion_check import add_verify_arguments

    parser = ArgumentParser(prog="torch2paddle.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=architectures.names(), help="expected architecture (default: detected; r50 "
                        "for the demo when no checkpoint is given or found)")
    parser.add_argument("--src", type=Path, help="PyTorch checkpoint (.pth/.pt): a state_dict, or a dict "
                        "wrapping one (state_dict, state_dict_backbone, model), DDP prefixes allowed")
    parser.add_argument("--out", type=Path, help="Paddle weights to write (default weights/paddle/<arch>.pdparams)")
    parser.add_argument("--no-verify", action="store_true", help="convert without the parity check")
    add_verify_arguments(parser)
    return parser.parse_args(argv)


def default_sources(arch: str) -> list[Path]:
    """Where a user keeps the InsightFace checkpoint for ``arch`` (see weights/README.md)."""
    paths = [WEIGHTS / "torch" / f"{arch}.pth"]
    manifest = WEIGHTS / "manifest.json"
    if manifest.is_file():
        models = json.loads(manifest.read_text()).get("models", [])
        paths += [WEIGHTS / m["path"] for m in models if m.get("arch") == arch]
    return paths


def demo_source(arch: str, seed: int) -> Path:
    """Write (once) the seeded, calibrated random reference checkpoint and return its path."""
    from converters.checkpoint import write_torch_state_dict
    from converters.conversion_check import log
    from converters.demo import demo_state_dict

    path = WEIGHTS / "demo" / f"{arch}-DEMO-random.pth"
    banner = "=" * 100
    log(f"{banner}\nDEMO: no --src given and no checkpoint for {arch} under weights/ "
        f"({', '.join(str(p.relative_to(ROOT)) for p in default_sources(arch))}).\n"
        f"Using a seeded PyTorch {arch} with RANDOM weights and calibrated BatchNorm statistics: it shows "
        f"the conversion and\nthe parity check, but it is NOT a face-recognition model. "
        f"Its files are named *-DEMO-random.*\n{banner}")
    if not path.exists():
        write_torch_state_dict(path, demo_state_dict(arch, seed=seed))
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from converters.runtime import set_threads

    set_threads(args.threads, paddle=not args.no_verify)
    from converters.checkpoint import sha256_file, write_paddle_weights
    from converters.outputs import atomic_output, check_outputs
    from converters.weights import read_weights

    inputs = {"--src": args.src, "--input": None if args.input == "random" else Path(args.input)}
    check_outputs(inputs, {"--out": args.out, "--report": args.report})  # before any work
    from converters.conversion_check import log, run_parity, write_report

    demo = False
    src = args.src
    if src is None:
        arch = args.arch or "r50"
        src = next((p for p in default_sources(arch) if p.is_file()), None)
        if src is None:
            src, demo = demo_source(arch, args.seed), True
        log(f"source: {src}")
    source = read_weights(src, args.arch, format="torch")
    ckpt, info = source.checkpoint, source.arch
    weights = source.paddle_state()
    src_digest = source.sha256
    weights.meta.update(demo=demo, source_sha256=src_digest, source_dtypes=sorted(set(ckpt.source_dtypes.values())))
    wrapped = f" (state_dict under '{ckpt.wrapper}')" if ckpt.wrapper else ""
    prefix = f", stripped prefix '{ckpt.stripped_prefix}'" if ckpt.stripped_prefix else ""
    log(f"{src}: {info.name}, {info.description}; {len(ckpt.arrays)} entries{wrapped}{prefix}; "
        f"dtypes {', '.join(sorted(set(ckpt.source_dtypes.values())))}")

    out = args.out
    if out is None:
        out = WEIGHTS / ("demo" if demo else "paddle") / (f"{info.name}-DEMO-random.pdparams" if demo
                                                           else f"{info.name}.pdparams")
        check_outputs({**inputs, "--src": src}, {"--out": out, "--report": args.report})
    report = None
    try:
        with atomic_output(out) as tmp:
            write_paddle_weights(tmp, weights, atomic=False)
            count, weights = len(weights.arrays), None  # a ViT's transposed Linear weights are copies: freed
            if not args.no_verify:
                from converters.checkpoint import read_paddle_weights

                # verify what was written: read the file back as a user would
                report = run_parity(info.name, info.num_features, ckpt.arrays, read_paddle_weights(tmp), args)
                if not report.passed:
                    raise GateFailed
            digest = sha256_file(tmp)
    except GateFailed:
        write_report(args.report, report, _report_fields(src, src_digest, None, None, info, demo))
        print(f"error: {out}: not written, parity gate failed", file=sys.stderr, flush=True)
        return 1
    write_report(args.report, report, _report_fields(src, src_digest, out, digest, info, demo))
    kind = "DEMO (random weights) " if demo else ""
    status = "verified" if report is not None else "NOT verified (--no-verify)"
    print(f"wrote {kind}{out} ({info.name}, {count} arrays, sha256 {digest[:16]}...), {status}")
    return 0


def _report_fields(src: Path, src_digest: str, out: Path | None, digest: str | None, info, demo: bool) -> dict:
    return {"tool": "torch2paddle", "arch": info.name, "num_features": info.num_features, "demo": demo,
            "source": {"path": str(src), "sha256": src_digest},
            "output": None if out is None else {"path": str(out), "sha256": digest}}


if __name__ == "__main__":
    run_cli(lambda: main())
