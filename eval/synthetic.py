"""Synthetic verification packs in InsightFace's ``.bin`` format, for tests and benchmarks.

    python eval/synthetic.py OUT.bin --pairs 6000 [--seed 0] [--same-fraction 0.5] [--format array|bytes]

Images are smooth random colour fields with fine texture, 112x112, really JPEG-encoded (so decoding
costs what a real pack costs). A "same" pair is one identity's image and a shifted, re-lit, noisier copy
of it; a "different" pair shows two identities. ``issame`` is known exactly; it is not a face dataset.
"""

from __future__ import annotations

import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Run as a file, sys.path[0] is this folder, whose modules would shadow others even when the project is
# installed (train/train.py would be imported as `train`); the project root goes there instead, which also
# lets a plain clone run without installing.
if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from converters.cli import ArgumentParser, fraction, int_range, random_seed  # noqa: E402
from converters.errors import UserError, run_cli  # noqa: E402

SIZE = 112


@dataclass
class SyntheticPack:
    bins: list  # 2P JPEG images (bytes, or uint8 arrays of shape [n, 1] as build_eval_pack.py writes)
    issame: list  # P bools


def identity_image(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A smooth random colour field with fine texture: ``[size, size, 3]`` uint8 (BGR or RGB alike)."""
    import cv2

    coarse = rng.uniform(0, 255, size=(6, 6, 3)).astype(np.float32)
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    texture = rng.normal(0.0, 12.0, size=(size, size, 3)).astype(np.float32)
    return np.clip(field + texture, 0, 255).astype(np.uint8)


def variant(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another picture of the same identity: shifted a few pixels, brightness changed, new noise."""
    shifted = np.roll(image, shift=tuple(rng.integers(-4, 5, size=2)), axis=(0, 1)).astype(np.float32)
    shifted = shifted * rng.uniform(0.85, 1.15) + rng.normal(0.0, 6.0, size=image.shape)
    return np.clip(shifted, 0, 255).astype(np.uint8)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return buf.tobytes()


def make_pack(pairs: int, seed: int = 0, same_fraction: float = 0.5, fmt: str = "array",
              issame: list[bool] | None = None, quality: int = 90) -> SyntheticPack:
    """``pairs`` pairs with ``issame`` drawn at ``same_fraction`` (or given), images JPEG-encoded."""
    rng = np.random.default_rng(seed)
    if issame is None:
        issame = [bool(v) for v in rng.random(pairs) < same_fraction]
    if len(issame) != pairs:
        raise ValueError(f"{len(issame)} issame flags for {pairs} pairs")
    bins: list = []
    for same in issame:
        first = identity_image(rng)
        second = variant(first, rng) if same else identity_image(rng)
        for image in (first, second):
            data = encode_jpeg(image, quality)
            bins.append(data if fmt == "bytes" else np.frombuffer(data, dtype=np.uint8).reshape(-1, 1).copy())
    return SyntheticPack(bins, list(issame))


def write_pack(path: str | Path, pack: SyntheticPack, protocol: int = 4) -> Path:
    """Write ``(bins, issame)`` as InsightFace's pickle, through a temporary file."""
    from converters.outputs import atomic_output

    path = Path(path)
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        pickle.dump((pack.bins, pack.issame), fh, protocol=protocol)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="synthetic.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="pack to write (.bin)")
    parser.add_argument("--pairs", type=int_range(1, 10_000_000), default=6000, help="number of pairs (default 6000, LFW's size)")
    parser.add_argument("--seed", type=random_seed, default=0)
    parser.add_argument("--same-fraction", type=fraction, default=0.5)
    parser.add_argument("--format", choices=("array", "bytes"), default="array",
                        help="images as numpy uint8 arrays (build_eval_pack.py) or bytes (classic packs)")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        raise UserError(None, f"--pairs must be at least 1, not {args.pairs}")
    from converters.outputs import prepare_output

    prepare_output(args.out)  # before the work
    pack = make_pack(args.pairs, args.seed, args.same_fraction, args.format)
    write_pack(args.out, pack)
    print(f"wrote {args.out}: {args.pairs} pairs ({sum(pack.issame)} same), {2 * args.pairs} JPEG images")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main())
