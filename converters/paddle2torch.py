"""Convert Paddle backbone weights back to an InsightFace PyTorch state_dict.

    python converters/paddle2torch.py [--arch r50] --src PATH.pdparams --out PATH.pth
                                      [--check-against ORIGINAL.pth] [--verify]

The output has InsightFace's keys, order and dtypes (int64 ``num_batches_tracked``, restored from the
metadata this project writes into ``.pdparams``, zeros otherwise), so InsightFace's
``get_model(name).load_state_dict(sd, strict=True)`` accepts it; it is loaded strictly into the PyTorch
reference before it is written. ``--check-against`` compares every tensor with the original PyTorch
checkpoint bit for bit. Exit codes: 0 written, 1 a check failed (nothing written), 2 bad input.
"""

from __future__ import annotations

import argparse
import contextlib
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


class CheckFailed(Exception):
    """Raised inside the atomic write so that a failed check leaves no output file."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from converters.conversion_check import add_verify_arguments

    parser = ArgumentParser(prog="paddle2torch.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=architectures.names(), help="expected architecture (default: detected)")
    parser.add_argument("--src", type=Path, required=True, help="Paddle weights (.pdparams)")
    parser.add_argument("--out", type=Path, required=True, help="PyTorch state_dict to write (.pth)")
    parser.add_argument("--check-against", type=Path, metavar="ORIGINAL.pth",
                        help="require every tensor to equal this PyTorch checkpoint's bit for bit")
    parser.add_argument("--verify", action="store_true",
                        help="also run the layer-by-layer parity check (Paddle source vs PyTorch output)")
    add_verify_arguments(parser)
    return parser.parse_args(argv)


def compare_exact(converted, original) -> list[str]:
    """Differences between two InsightFace-named array dicts: order, dtype, shape or any bit."""
    problems = []
    if list(converted) != list(original):
        problems.append("key order differs")
    for key, arr in original.items():
        other = converted.get(key)
        if other is None:
            problems.append(f"{key}: missing")
        elif other.dtype != arr.dtype or other.shape != arr.shape:
            problems.append(f"{key}: {other.dtype}{list(other.shape)} vs {arr.dtype}{list(arr.shape)}")
        elif not same_bytes(other, arr):
            problems.append(f"{key}: values differ")
    return problems


def release_freed_memory() -> None:
    """Give memory freed by Python back to the system. glibc keeps freed blocks below its (adaptive, up to
    32 MB) mmap threshold in its heap: after verifying r2060, 7.5 GB of models and layer outputs that are
    gone stay resident unless trimmed. Elsewhere than glibc, nothing happens."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def same_bytes(a, b, chunk: int = 1 << 24) -> bool:
    """Whether two arrays of one dtype and shape hold the same bytes, compared a chunk at a time (a ViT-H
    ``feature.0.weight`` is 604 MB: no copies of it)."""
    import numpy as np

    x, y = (np.ascontiguousarray(v).reshape(-1).view(np.uint8) for v in (a, b))
    return all(np.array_equal(x[i:i + chunk], y[i:i + chunk]) for i in range(0, x.size, chunk))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from converters.runtime import set_threads

    set_threads(args.threads, paddle=args.verify)
    from converters.checkpoint import (
        read_torch_checkpoint,
        sha256_file,
        write_torch_state_dict,
    )
    from converters.conversion_check import log, run_parity, write_report
    from converters.models import torch_model
    from converters.outputs import atomic_output, check_outputs
    from converters.weights import read_weights

    check_outputs({"--src": args.src, "--check-against": args.check_against,
                   "--input": None if args.input == "random" else Path(args.input)},
                  {"--out": args.out, "--report": args.report})  # before any work

    source = read_weights(args.src, args.arch, format="paddle")
    weights, info, arrays = source.paddle_state(), source.arch, source.torch_state()
    tracked = "from the file's metadata" if weights.meta.get("num_batches_tracked") else "set to 0 (not in the file)"
    log(f"{args.src}: {info.name}, {info.description}; num_batches_tracked {tracked}")
    torch_model(info.name, arrays, info.num_features, share=True)  # strict load into the InsightFace layout
    count = len(arrays)
    # memory-mapped: its pages are read only when compared
    original = read_torch_checkpoint(args.check_against).arrays if args.check_against else None

    report = None
    failure = "parity gate failed"
    try:
        with atomic_output(args.out) as tmp:
            write_torch_state_dict(tmp, arrays, atomic=False)
            del arrays  # views of weights' arrays, which verification hands over to the Paddle model
            written = read_torch_checkpoint(tmp).arrays  # check what was written, as a user would read it
            # verification first: it empties weights into the Paddle model, which is gone before the two
            # files are compared, so that the weights are never held three times
            if args.verify:
                report = run_parity(info.name, info.num_features, written, weights, args)
                if not report.passed:
                    raise CheckFailed
            weights = None
            release_freed_memory()
            if original is not None:
                problems = compare_exact(written, original)
                if problems:
                    failure = f"differs from {args.check_against}: {'; '.join(problems[:5])}"
                    raise CheckFailed
                print(f"bit-identical to {args.check_against}: {len(original)} tensors, same keys, order and dtypes")
            digest = sha256_file(tmp)
    except CheckFailed:
        write_report(args.report, report, {"tool": "paddle2torch", "arch": info.name, "output": None})
        print(f"error: {args.out}: not written, {failure}", file=sys.stderr, flush=True)
        return 1
    write_report(args.report, report, {"tool": "paddle2torch", "arch": info.name,
                                       "source": {"path": str(args.src), "sha256": source.sha256},
                                       "output": {"path": str(args.out), "sha256": digest}})
    print(f"wrote {args.out} ({info.name}, {count} tensors in InsightFace's order, sha256 {digest[:16]}...)")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main())
