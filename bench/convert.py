"""Wall time and peak RSS of converting r50, r100 and r2060 (fp32 and fp16 sources, with and without the
per-layer verification), each in a fresh process, as a table.

    python bench/convert.py [--archs r50,r100,r2060] [--repeat 1] [--verify-large]

Models above 200 M weights (r2060: 4.2 GiB) are converted from a float32 source without verification
unless ``--verify-large`` (which adds a verified run: minutes and about 3x the checkpoint in memory).
Targets without verification: peak RSS under 3x the checkpoint size; r100 also in under 10 s.
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


# no-verify targets: arch -> (seconds or None, peak RSS / checkpoint size), for the source dtypes measured
TARGETS = {"r100": (10.0, 3.0), "r2060": (None, 3.0)}


def is_large(arch: str) -> bool:
    from architectures import parameter_count
    from converters.demo import LARGE_MODEL_PARAMETERS

    return parameter_count(arch) > LARGE_MODEL_PARAMETERS


def source_dtypes(arch: str) -> tuple[str, ...]:
    return ("fp32",) if is_large(arch) else ("fp32", "fp16")


def make_sources(arch: str, folder: Path) -> dict[str, Path]:
    """Write the demo checkpoints, in a child process: this process must stay small, because a forked
    child starts with its parent's resident pages and ``ru_maxrss`` would count them."""
    subprocess.run([sys.executable, __file__, "--make-sources", str(folder), "--archs", arch], check=True)
    return {dtype: folder / f"{arch}-{dtype}.pth" for dtype in source_dtypes(arch)}


def write_sources(arch: str, folder: Path) -> None:
    import torch

    from converters.demo import demo_state_dict

    arrays = demo_state_dict(arch, seed=0, batches=1, batch_size=4)
    fp32 = OrderedDict((k, torch.from_numpy(v)) for k, v in arrays.items())
    torch.save(fp32, folder / f"{arch}-fp32.pth")
    if "fp16" in source_dtypes(arch):
        fp16 = OrderedDict((k, v.half() if v.is_floating_point() else v) for k, v in fp32.items())
        torch.save(fp16, folder / f"{arch}-fp16.pth")


def target(arch: str, verify: bool, seconds: float, rss: float, size: float) -> str:
    if verify or arch not in TARGETS:
        return ""
    max_seconds, max_ratio = TARGETS[arch]
    met = rss < max_ratio * size and (max_seconds is None or seconds < max_seconds)
    return "ok" if met else "MISSED"


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
    parser.add_argument("--archs", default="r50,r100,r2060")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; the fastest is reported")
    parser.add_argument("--verify-large", action="store_true",
                        help="also time the verified conversion of models above 200 M weights")
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
            sources = make_sources(arch, tmp)
            for dtype, src in sources.items():
                size = src.stat().st_size / 2**20
                for verify in (False, True) if args.verify_large or not is_large(arch) else (False,):
                    argv = [sys.executable, str(ROOT / "converters" / "torch2paddle.py"), "--src", str(src),
                            "--out", str(tmp / "out.pdparams"), "--table", "none"]
                    argv += [] if verify else ["--no-verify"]
                    best = min((run(argv) for _ in range(args.repeat)), key=lambda r: r[0])
                    seconds, rss, code = best
                    rows.append([arch, dtype, f"{size:.0f}", "yes" if verify else "no", f"{seconds:.1f}",
                                 f"{rss:.0f}", f"{rss / size:.2f}", "ok" if code == 0 else f"exit {code}",
                                 target(arch, verify, seconds, rss, size)])
                    print(rows[-1], file=sys.stderr, flush=True)
                    (tmp / "out.pdparams").unlink(missing_ok=True)
            for path in sources.values():
                path.unlink()
    print(tabulate(rows, headers=["arch", "source", "ckpt MiB", "verify", "seconds", "peak RSS MiB",
                                  "RSS / ckpt", "result", "target (no verify: <3x; r100 <10 s)"],
                   tablefmt="github"))


if __name__ == "__main__":
    main()
