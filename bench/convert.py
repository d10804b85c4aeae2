"""Wall time and peak RSS of converting r50 and r100 (fp32 and fp16 sources, with and without the
per-layer verification), each in a fresh process, as a table.

    python bench/convert.py [--archs r50,r100] [--repeat 1]

Target: r100 without verification in under 10 s with peak RSS under 3x the checkpoint size.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_sources(arch: str, folder: Path) -> dict[str, Path]:
    """Write fp32 and fp16 demo checkpoints, in a child process: this process must stay small, because
    a forked child starts with its parent's resident pages and ``ru_maxrss`` would count them."""
    subprocess.run([sys.executable, __file__, "--make-sources", str(folder), "--archs", arch], check=True)
    return {"fp32": folder / f"{arch}-fp32.pth", "fp16": folder / f"{arch}-fp16.pth"}


def write_sources(arch: str, folder: Path) -> None:
    import torch

    from converters.demo import demo_state_dict

    arrays = demo_state_dict(arch, seed=0, batches=1, batch_size=4)
    fp32 = OrderedDict((k, torch.from_numpy(v)) for k, v in arrays.items())
    fp16 = OrderedDict((k, v.half() if v.is_floating_point() else v) for k, v in fp32.items())
    paths = {"fp32": folder / f"{arch}-fp32.pth", "fp16": folder / f"{arch}-fp16.pth"}
    torch.save(fp32, paths["fp32"])
    torch.save(fp16, paths["fp16"])


def run(argv: list[str]) -> tuple[float, float, int]:
    """(seconds, peak RSS in MiB, exit code) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        print(proc.stderr.read().decode()[-2000:], file=sys.stderr)
    return seconds, usage.ru_maxrss / 1024, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="r50,r100")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; the fastest is reported")
    parser.add_argument("--make-sources", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_sources:
        write_sources(args.archs, args.make_sources)
        return
    from tabulate import tabulate

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for arch in args.archs.split(","):
            for dtype, src in make_sources(arch, tmp).items():
                size = src.stat().st_size / 2**20
                for verify in (False, True):
                    argv = [sys.executable, str(ROOT / "converters" / "torch2paddle.py"), "--src", str(src),
                            "--out", str(tmp / "out.pdparams"), "--table", "none"]
                    argv += [] if verify else ["--no-verify"]
                    best = min((run(argv) for _ in range(args.repeat)), key=lambda r: r[0])
                    seconds, rss, code = best
                    target = ""
                    if arch == "r100" and not verify:
                        target = "ok" if seconds < 10 and rss < 3 * size else "MISSED"
                    rows.append([arch, dtype, f"{size:.0f}", "yes" if verify else "no", f"{seconds:.1f}",
                                 f"{rss:.0f}", f"{rss / size:.2f}", "ok" if code == 0 else f"exit {code}", target])
                    print(rows[-1], file=sys.stderr, flush=True)
    print(tabulate(rows, headers=["arch", "source", "ckpt MiB", "verify", "seconds", "peak RSS MiB",
                                  "RSS / ckpt", "result", "target (r100, no verify: <10 s, <3x)"],
                   tablefmt="github"))


if __name__ == "__main__":
    main()
