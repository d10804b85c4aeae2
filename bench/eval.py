"""Evaluation speed and memory: each embedding backend, JPEG decoding, and the whole eval/verify.py pipeline.

    python bench/eval.py [--threads 2] [--batches 3] [--pipeline-images 12000] [--memory-images 14000]
                         [--skip-pipeline] [--skip-memory] [--work DIR]

1. images/s of each backend (paddle-inference, paddle dygraph, torch, onnx) for r18 and r50 at batch 32
   (plus paddle-inference at batch 16 and 64), on the same seeded normalised inputs, after one warm-up batch;
2. images/s of decoding + normalising the JPEGs of a synthetic pack (what feeds the model);
3. the whole pipeline, ``eval/verify.py`` in a subprocess on a synthetic ``--pipeline-images`` pack with
   r18 and paddle-inference: wall time, images/s (flipped copies not counted) and peak RSS;
4. peak RSS of ``eval/verify.py`` with r50 and paddle-inference on a cfp_fp-sized ``--memory-images`` pack.

Weights are the seeded demo models (converters.demo: random, calibrated; not face models). Timings on a
shared machine are contended: compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the project from its root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from converters.errors import run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def demo_weights(arch: str, work: Path) -> Path:
    """The seeded demo ``arch`` as a ``.pdparams`` under ``work`` (written once)."""
    from converters.checkpoint import write_paddle_weights
    from converters.demo import demo_state_dict
    from converters.mapping import torch_to_paddle

    path = work / f"{arch}-DEMO-random.pdparams"
    if not path.exists():
        write_paddle_weights(path, torch_to_paddle(demo_state_dict(arch), arch, 512, path))
    return path


def synthetic_pack(images: int, work: Path) -> Path:
    from eval.synthetic import make_pack, write_pack

    path = work / f"synthetic-{images}.bin"
    if not path.exists():
        write_pack(path, make_pack(images // 2, seed=0))
    return path


def backend_rows(arch: str, weights: Path, threads: int, batches: int, cache: Path) -> list[list]:
    import numpy as np

    from converters.inputs import seeded_images
    from eval.backends import BACKENDS, make_embedder
    from eval.sources import load_weights

    rows = []
    for backend, batch in [*((b, 32) for b in BACKENDS), ("paddle-inference", 16), ("paddle-inference", 64)]:
        source = load_weights(weights, arch)
        embedder = make_embedder(source, backend, threads, cache_dir=cache)
        source.release()
        x = seeded_images(batch, seed=1)
        embedder(x)  # warm-up: oneDNN primitives, allocator
        t0 = time.perf_counter()
        for _ in range(batches):
            out = embedder(x)
        seconds = time.perf_counter() - t0
        assert np.isfinite(out).all()
        rows.append([arch, backend, batch, batches * batch, f"{seconds:.2f}", f"{batches * batch / seconds:.1f}"])
        print(f"  {arch} {backend} batch {batch}: {batches * batch / seconds:.1f} images/s", file=sys.stderr, flush=True)
        del embedder
    return rows


def decode_rate(pack_path: Path, images: int) -> float:
    """Images/s of JPEG decoding + normalisation, batch by batch as embed_pack does."""
    from converters.binfile import read_bin
    from converters.images import normalize

    pack = read_bin(pack_path)
    t0 = time.perf_counter()
    done = 0
    for _, batch in pack.iter_batches(32):
        x = normalize(batch)
        x[..., ::-1].copy()  # the flipped copy embed_pack makes
        done += len(batch)
        if done >= images:
            break
    return done / (time.perf_counter() - t0)


def run_verify(weights: Path, pack: Path, threads: int, cache: Path, batch: int = 32) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and the accuracy line of ``eval/verify.py`` in a fresh process."""
    cmd = [sys.executable, str(ROOT / "eval" / "verify.py"), "--weights", str(weights), "--data", str(pack),
           "--backend", "paddle-inference", "--threads", str(threads), "--batch-size", str(batch),
           "--cache-dir", str(cache), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"verify.py failed ({proc.returncode}): {err[-2000:]}")
    peak = next((float(m.group(1)) for ln in err.splitlines() if (m := re.match(r"peak RSS (\d+) MB", ln))),
                float("nan"))
    line = next((ln for ln in out.splitlines() if "Accuracy-Flip" in ln), "")
    return seconds, peak, line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eval.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--batches", type=int, default=3, help="timed batches per backend (default 3)")
    parser.add_argument("--archs", default="r18,r50")
    parser.add_argument("--pipeline-images", type=int, default=12000)
    parser.add_argument("--memory-images", type=int, default=14000)
    parser.add_argument("--skip-backends", action="store_true")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--work", type=Path, default=None, help="folder for demo weights, packs and exports "
                        "(default: a temporary folder, removed afterwards)")
    args = parser.parse_args(argv)

    from tabulate import tabulate

    from converters.runtime import library_versions, set_threads

    threads = set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        cache = work / "cache"
        print(f"threads {threads}, {os.cpu_count()} cores; {library_versions()}", flush=True)
        rows = []
        if not args.skip_backends:
            for arch in args.archs.split(","):
                rows += backend_rows(arch, demo_weights(arch, work), threads, args.batches, cache)
            print("\nBackend throughput (forward only, seeded inputs, after one warm-up batch)")
            print(tabulate(rows, headers=["arch", "backend", "batch", "images", "seconds", "images/s"],
                           tablefmt="github", disable_numparse=True), flush=True)
        pipeline = []
        if not args.skip_pipeline:
            pack = synthetic_pack(args.pipeline_images, work)
            decode = decode_rate(pack, min(args.pipeline_images, 4000))
            seconds, peak, line = run_verify(demo_weights("r18", work), pack, threads, cache)
            rate = args.pipeline_images / seconds
            pipeline.append(["decode + normalise (+ flipped copy)", "-", "-", min(args.pipeline_images, 4000),
                             "-", f"{decode:.0f}", "-"])
            pipeline.append(["eval/verify.py, whole run", "r18", "paddle-inference", args.pipeline_images,
                             f"{seconds:.0f}", f"{rate:.1f}", f"{peak:.0f}"])
            print(f"  {line}", file=sys.stderr)
            print(f"  decoding is {decode / rate:.0f}x the pipeline's rate", file=sys.stderr)
        if not args.skip_memory:
            pack = synthetic_pack(args.memory_images, work)
            seconds, peak, line = run_verify(demo_weights("r50", work), pack, threads, cache)
            pipeline.append(["eval/verify.py, whole run", "r50", "paddle-inference", args.memory_images,
                             f"{seconds:.0f}", f"{args.memory_images / seconds:.1f}", f"{peak:.0f}"])
        if pipeline:
            print("\nWhole pipeline (synthetic JPEG pack, images + flipped copies embedded, 10-fold protocol)")
            print(tabulate(pipeline, headers=["what", "arch", "backend", "images", "seconds", "images/s",
                                              "peak RSS MB"], tablefmt="github", disable_numparse=True))
    return 0


if __name__ == "__main__":
    run_cli(lambda: main())
