"""Benchmark: Partial FC classifier forward+backward time and peak memory against the number of classes.

Each configuration (classes, sample rate, update mode, processes) runs in fresh processes: one plain
process, or two under ``python -m paddle.distributed.launch --nproc_per_node 2`` (gloo on CPU), so that
peak memory is per configuration. Only the classifier is timed (embeddings come from numpy, no backbone,
no optimiser step); memory is the peak resident size of one rank minus its size just before the
PartialFC was built. Prints a table and saves a PNG plot.

    python bench/partial_fc.py --out bench/results/partial_fc.png
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the project from its root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np

from converters.errors import UserError, run_cli

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(args: argparse.Namespace) -> None:
    """One rank: build PartialFC, time forward+backward, write {ms, peak_mb, ...} as JSON."""
    from converters.runtime import peak_rss_mb, quiet_paddle_import, set_threads

    quiet_paddle_import()
    import paddle
    import paddle.distributed as dist

    from train.losses import ArcFace
    from train.partial_fc import PartialFC

    set_threads(args.threads)
    if int(os.environ.get("PADDLE_TRAINERS_NUM", "1")) > 1:
        dist.init_parallel_env()
    rng = np.random.default_rng(1234 + (dist.get_rank() if dist.is_initialized() else 0))
    emb = paddle.to_tensor(rng.normal(size=(args.batch, args.dim)).astype(np.float32), stop_gradient=False)
    labels = paddle.to_tensor(rng.integers(0, args.classes, size=args.batch))
    base = _rss_mb()
    paddle.seed(0)
    pfc = PartialFC(ArcFace(), args.dim, args.classes, sample_rate=args.rate, update=args.update, seed=0)
    times = []
    for step in range(args.steps + 1):  # the first step warms up
        if dist.is_initialized():
            dist.barrier()
        start = time.perf_counter()
        loss = pfc(emb, labels)
        loss.backward()
        float(loss)  # wait for the result
        if step:
            times.append(time.perf_counter() - start)
        pfc.clear_gradients(set_to_zero=False)
        emb.clear_gradient(set_to_zero=False)
    rank = dist.get_rank() if dist.is_initialized() else 0
    result = {
        "ms": 1000 * float(np.median(times)),
        "peak_mb": peak_rss_mb() - base,
        "centres_mb": pfc.num_local * args.dim * 4 / 2**20,
        "rank": rank,
    }
    Path(f"{args.result}.{rank}").write_text(json.dumps(result))


def _run_config(args, classes: int, rate: float, update: str, procs: int, folder: Path) -> dict:
    result = folder / f"c{classes}_r{rate}_{update}_p{procs}"
    worker_args = [
        str(Path(__file__).resolve()), "--worker", "--classes", str(classes), "--rate", str(rate),
        "--update", update, "--batch", str(args.batch), "--dim", str(args.dim), "--steps", str(args.steps),
        "--threads", str(max(1, args.threads // procs)), "--result", str(result),
    ]
    if procs == 1:
        cmd = [sys.executable, *worker_args]
    else:
        cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(procs),
               "--log_dir", str(folder / f"{result.name}_logs"), *worker_args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    ranks = [json.loads(Path(f"{result}.{r}").read_text()) for r in range(procs) if Path(f"{result}.{r}").exists()]
    if done.returncode != 0 or len(ranks) != procs:
        raise RuntimeError(f"benchmark worker failed ({' '.join(cmd)}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return {
        "classes": classes, "rate": rate, "update": update, "procs": procs,
        "ms": max(r["ms"] for r in ranks), "peak_mb": max(r["peak_mb"] for r in ranks),
        "centres_mb": max(r["centres_mb"] for r in ranks),
    }


def _plot(rows: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = sorted({(r["rate"], r["update"], r["procs"]) for r in rows}, key=lambda k: (k[2], -k[0], k[1]))
    for rate, update, procs in series:
        pts = sorted((r for r in rows if (r["rate"], r["update"], r["procs"]) == (rate, update, procs)),
                     key=lambda r: r["classes"])
        label = f"rate {rate:g}, {update}, {procs} proc"
        style = "-" if procs == 1 else "--"
        ax_t.plot([r["classes"] for r in pts], [r["ms"] for r in pts], style, marker="o", label=label)
        ax_m.plot([r["classes"] for r in pts], [r["peak_mb"] for r in pts], style, marker="o", label=label)
    centres = sorted({(r["classes"], r["centres_mb"]) for r in rows if r["procs"] == 1})
    if centres:
        ax_m.plot(*zip(*centres), ":", color="grey", label="centre storage, 1 proc")
    for ax, ylabel in ((ax_t, "forward+backward per step (ms, slowest rank)"), (ax_m, "peak memory per rank (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("number of classes")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_m.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=float, nargs="+", default=[1e4, 1e5, 1e6, 2e6])
    parser.add_argument("--rates", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sparse", action="store_true", help="also run update='sparse' for rates < 1")
    parser.add_argument("--batch", type=int, default=64, help="samples per rank")
    parser.add_argument("--dim", type=int, default=128, help="embedding size")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median), after one warm-up")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="split evenly over processes")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "partial_fc.png")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    # internal: one rank of one configuration
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--update", default="dense", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.classes = int(args.classes[0])
        worker(args)
        return
    if any(r < 0 or r > 1 for r in args.rates):
        raise UserError(None, f"--rates must be in [0, 1], got {args.rates}")

    from tabulate import tabulate
    from tqdm import tqdm

    configs = [(int(c), rate, "dense", procs) for procs in args.procs for c in args.classes for rate in args.rates]
    if args.sparse:
        configs += [(int(c), rate, "sparse", procs) for procs in args.procs for c in args.classes
                    for rate in args.rates if rate < 1]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_pfc_") as tmp:
        for classes, rate, update, procs in tqdm(configs, desc="partial_fc", file=sys.stderr):
            rows.append(_run_config(args, classes, rate, update, procs, Path(tmp)))
    full = {(r["classes"], r["procs"]): r["ms"] for r in rows if r["rate"] == 1.0}
    table = [
        [f"{r['classes']:,}", f"{r['rate']:g}", r["update"], r["procs"], f"{r['ms']:.1f}",
         f"{r['ms'] / full[(r['classes'], r['procs'])]:.3f}" if (r["classes"], r["procs"]) in full else "",
         f"{r['peak_mb']:.0f}", f"{r['centres_mb']:.0f}"]
        for r in sorted(rows, key=lambda r: (r["procs"], r["classes"], -r["rate"], r["update"]))
    ]
    headers = ["classes", "rate", "update", "procs", "ms/step", "÷ rate-1.0 ms", "peak MB/rank", "centres MB/rank"]
    print(tabulate(table, headers=headers, tablefmt="github"))
    title = (f"PartialFC (ArcFace) forward+backward, float32 CPU, batch {args.batch}/rank, dim {args.dim}, "
             f"{args.threads} threads shared by the processes")
    _plot(rows, args.out, title)
    print(f"plot: {args.out}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    run_cli(lambda: main())
