"""IJB evaluation on a CPU: the protocol at IJB-C's size, and decoding + alignment against the model's speed.

    python bench/ijb.py [--work DIR] [--archs r18,r50,mbf] [--identities 24] [--threads 2]
                        [--skip-scale] [--skip-rates] [--out bench/results/ijb.md]

1. Scale: a meta-only layout of IJB-C's size (469,375 images, 23,124 templates, 15,658,489 pairs with
   19,557 genuine; ``eval/ijb_synthetic.py --meta-only``) with raw ``[N, 2, 512]`` float32 features (1.9 GB),
   scored by ``eval/ijb.py --features`` in a subprocess. Reported: the time of each phase as the tool logs it
   (reading the meta files, reading and combining the features, templates + scores + TAR table) and the
   child's peak RSS. Targets: templates, scores and the TAR table under 60 s; peak RSS under 4 GB.
2. Rates: a layout of real faces pasted into loose crops (``eval/ijb_synthetic.py``). Decoding + alignment
   in one process (images/s per core) and with two worker processes, against the embedding rate of each
   architecture with ``paddle-inference`` (faces/s, each face with its mirror, ``--threads`` threads, 32
   faces per forward pass). Target: decoding + alignment at least 10x the embedding rate.

The work folder (default ``bench/.cache/ijb``, git-ignored) keeps the generated layouts between runs.
Timings on a shared machine are contended: compare rows of one run.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the project from its root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from converters.errors import run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IJBC = {"images": 469_375, "templates": 23_124, "pairs": 15_658_489, "genuine": 19_557}
SCORING_TARGET_S = 60.0
RSS_TARGET_GB = 4.0
CHILD = ("import resource, sys\nfrom eval.ijb import main\nrc = main(sys.argv[1:])\n"
         "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)\nsys.exit(rc)\n")


def scale(work: Path) -> tuple[list[list], dict]:
    from eval.ijb_synthetic import write_meta_only

    root, features = work / "ijbc-size" / "IJBC", work / "ijbc-size" / "features.npy"
    if not (features.exists() and root.exists()):
        import shutil

        shutil.rmtree(work / "ijbc-size", ignore_errors=True)
        (work / "ijbc-size").mkdir(parents=True)
        t0 = time.perf_counter()
        write_meta_only(root, IJBC["images"], IJBC["templates"], IJBC["pairs"], IJBC["genuine"], seed=0,
                        features=features, dim=512)
        print(f"wrote the IJB-C-size layout and features in {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, "--features", str(features), "--data", str(root),
                           "--target", "IJBC", "--no-progress"], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"eval/ijb.py failed:\n{proc.stderr[-2000:]}")
    log = proc.stdout
    seconds = {
        "read the meta files": _seconds(log, r"genuine\), read in ([\d.]+) s"),
        "read + combine features (N1D1F1)": _seconds(log, r"image features \(N1D1F1\) in ([\d.]+) s"),
        "templates, scores, TAR table": _seconds(log, r"templates, scores and TAR table in ([\d.]+) s"),
    }
    peak_gb = int(re.search(r"PEAK_RSS_KB (\d+)", log).group(1)) / 1024 ** 2
    rows = [[name, f"{s:.1f} s", ""] for name, s in seconds.items()]
    rows[-1][2] = f"target < {SCORING_TARGET_S:.0f} s: {'met' if seconds['templates, scores, TAR table'] < SCORING_TARGET_S else 'NOT met'}"
    rows.append(["whole eval/ijb.py run (incl. Python start-up)", f"{wall:.1f} s", ""])
    rows.append(["peak RSS", f"{peak_gb:.2f} GB", f"target < {RSS_TARGET_GB:.0f} GB: "
                 f"{'met' if peak_gb < RSS_TARGET_GB else 'NOT met'}"])
    table = "\n".join(ln for ln in log.splitlines() if ln[:1] in "+|")
    return rows, {"table": table, "wall": wall}


def _seconds(log: str, pattern: str) -> float:
    match = re.search(pattern, log)
    if match is None:
        raise SystemExit(f"eval/ijb.py did not log /{pattern}/:\n{log[-2000:]}")
    return float(match.group(1))


def rates(work: Path, archs: list[str], identities: int, threads: int) -> list[list]:
    import numpy as np

    from bench.eval import demo_weights
    from converters.runtime import set_threads
    from eval.backends import make_embedder
    from eval.ijb_extract import AlignPool, align_tasks, embed_faces
    from eval.ijb_layout import read_layout
    from eval.ijb_synthetic import write_synthetic_ijb
    from eval.sources import load_weights

    root = work / f"faces-{identities}" / "IJBC"
    if not root.exists():
        write_synthetic_ijb(root, identities, images_per_identity=8, seed=0)
    layout = read_layout(root, "IJBC")
    n = len(layout.names)

    align = {}
    crops = np.empty((n, 112, 112, 3), np.uint8)
    for workers in (0, 2):
        with AlignPool(workers) as pool:
            list(pool.run(align_tasks(layout, 0, 32)))  # warm-up: worker start-up and the page cache
            t0 = time.perf_counter()
            for start, part, _ in pool.run(align_tasks(layout, 0, 32)):
                crops[start:start + len(part)] = part
            align[workers] = n / (time.perf_counter() - t0)
    threads = set_threads(threads, torch=False)
    rows = [["decode + align, 1 process (per core)", f"{align[0]:.0f}", ""],
            ["decode + align, 2 worker processes", f"{align[2]:.0f}", ""]]
    for arch in archs:
        source = load_weights(demo_weights(arch, work))
        embedder = make_embedder(source, "paddle-inference", threads, "cpu", work / "export")
        batch = crops[:32] if n >= 32 else crops
        embed_faces(embedder, batch, 32)  # warm-up
        t0 = time.perf_counter()
        repeats = 0
        while time.perf_counter() - t0 < 10.0 or repeats < 2:
            embed_faces(embedder, batch, 32)
            repeats += 1
        rate = repeats * len(batch) / (time.perf_counter() - t0)
        rows.append([f"{arch} paddle-inference, {threads} threads (faces with mirrors)", f"{rate:.1f}",
                     f"decode + align per core = {align[0] / rate:.0f}x"])
    return rows


def main(argv: list[str] | None = None) -> int:
    from tabulate import tabulate

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / ".cache" / "ijb")
    parser.add_argument("--archs", default="r18,r50,mbf")
    parser.add_argument("--identities", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--skip-rates", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the tables as Markdown here")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    text = []
    if not args.skip_scale:
        rows, info = scale(args.work)
        text += ["## IJB-C size, `eval/ijb.py --features` (469,375 images x [2, 512], 23,124 templates, "
                 "15,658,489 pairs)", "", tabulate(rows, ["phase", "measured", "target"], tablefmt="github"),
                 "", "TAR table of the synthetic features (not a face model):", "", "```", info["table"], "```", ""]
    if not args.skip_rates:
        rows = rates(args.work, [a for a in args.archs.split(",") if a], args.identities, args.threads)
        text += ["## Decoding + alignment against embedding (images/s)", "",
                 tabulate(rows, ["what", "images/s", "ratio"], tablefmt="github"), ""]
    report = "\n".join(text)
    print(report)
    if args.out:
        args.out.write_text(f"# bench/ijb.py\n\n{report}")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main())
