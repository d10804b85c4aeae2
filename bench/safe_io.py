"""What the safe readers cost: the restricted pickle reader against plain ``pickle.load`` on an r100-sized
``.pdparams`` state written with pickle protocols 2, 4 and 5, and the image decoder (header check, pixel
limit, stderr capture) against a bare ``cv2.imdecode``, measured side by side in one run.

    python bench/safe_io.py [--repeat 3] [--images 3000]

Prints one table; each row's ratio is the safe reader's time over the unchecked one (best of --repeat).
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def r100_like_state() -> OrderedDict[str, np.ndarray]:
    """Arrays with the sizes of an r100 backbone: 65.2 M float32 values in 475 entries (random values; the
    readers' cost depends on sizes and counts only)."""
    from converters.mapping import layout

    rng = np.random.default_rng(0)
    return OrderedDict((e.paddle_key, rng.standard_normal(e.paddle_shape, dtype=np.float32))
                       for e in layout("r100") if e.paddle_key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--images", type=int, default=3000)
    args = parser.parse_args()
    from tabulate import tabulate

    from converters.safe_pickle import safe_load

    rows = []
    state = r100_like_state()
    with tempfile.TemporaryDirectory() as tmp:
        for protocol in (2, 4, 5):
            path = Path(tmp) / f"r100-p{protocol}.pdparams"
            with open(path, "wb") as fh:
                pickle.dump(state, fh, protocol=protocol)

            def plain(path=path):
                with open(path, "rb") as fh:
                    pickle.load(fh)  # noqa: S301 (the unchecked baseline, on a file written just above)

            unsafe = best_of(args.repeat, plain)
            safe = best_of(args.repeat, lambda path=path: safe_load(path))
            rows.append([f".pdparams r100, pickle protocol {protocol}", f"{path.stat().st_size / 2**20:.0f} MiB",
                         f"pickle.load {unsafe:.3f} s", f"safe_load {safe:.3f} s", f"{safe / unsafe:.2f}"])
    del state

    import cv2

    from converters.images import decode_bgr

    rng = np.random.default_rng(0)
    jpeg = cv2.imencode(".jpg", rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))[1].tobytes()
    n = args.images

    def bare():
        for _ in range(n):
            cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)

    def checked():
        for _ in range(n):
            decode_bgr(jpeg)

    unsafe, safe = best_of(args.repeat, bare), best_of(args.repeat, checked)
    rows.append([f"decode {n} 112x112 JPEGs", f"{len(jpeg) / 1024:.1f} KiB each", f"cv2.imdecode {n / unsafe:,.0f}/s",
                 f"decode_bgr {n / safe:,.0f}/s", f"{safe / unsafe:.2f}"])
    print(tabulate(rows, headers=["what", "size", "unchecked", "safe reader", "time ratio"]))


if __name__ == "__main__":
    main()
