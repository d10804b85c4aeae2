"""The architectures above 200 M weights (r2060 first, then the large ViTs) through both command lines.

For each: a calibrated demo checkpoint saved as ``.pth``; ``torch2paddle.py`` converts it and verifies every
layer on seeded images at batch 2; ``paddle2torch.py`` converts the ``.pdparams`` back, requires it to equal
the original bit for bit (``--check-against``) and verifies every layer of the Paddle model against the
PyTorch model of the round-tripped file on two real faces; the test then compares the two ``.pth`` files
tensor by tensor itself. Every layer must be within its gate and the embedding cosine >= 0.999999.

r2060 alone (4.2 GiB of weights) takes about 11 minutes and 12.3 GiB on 2 cores, so these tests run only
with ``ARCFACE_PARITY_LARGE=1``, which ``make parity-large`` sets; ``make test`` skips them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from converters.parity import EMBEDDING_COSINE, EVAL_LAYER_REL, OUTPUT
from parity_tests.archs import LARGE_ARCHS, LARGE_PARAMETERS

ROOT = Path(__file__).resolve().parents[1]
ENABLED = os.environ.get("ARCFACE_PARITY_LARGE") == "1"
BATCH = 2

pytestmark = pytest.mark.skipif(
    not ENABLED, reason=f"architectures above {LARGE_PARAMETERS // 1_000_000} M weights ({', '.join(LARGE_ARCHS)}) "
    "take minutes and several GB each: run `make parity-large` (or set ARCFACE_PARITY_LARGE=1)")

# the demo embedding of a trained-like model has norm ~ sqrt(512) ~ 23; the one-batch calibration of the
# large models (converters.demo) must keep it finite and of that order
NORM_RANGE = (10.0, 60.0)
# peak RSS of a verifying conversion: the source file's pages, the Paddle model, every layer's PyTorch
# output at batch 2 (3.3 GB for r2060) and both frameworks; r2060 measured 2.9x its checkpoint
VERIFY_RSS_RATIO, VERIFY_RSS_EXTRA = 3.0, 1.5 * 2**30


def run_tool(argv: list[str], log: Path) -> tuple[int, float, float]:
    """(exit code, seconds, peak RSS in bytes) of one command run in a child process, output to ``log``.

    A child's ``ru_maxrss`` starts from its parent's peak at the fork: that peak is first reset to this
    process's current RSS (``/proc/self/clear_refs``), so that the number is the child's."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, *map(str, argv)], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - start, usage.ru_maxrss * 1024


def check_report(path: Path, arch: str, shape: tuple[int, ...]) -> dict:
    """The parity section of a converter's JSON report, with every layer within its gate asserted."""
    parity = json.loads(path.read_text())["parity"]
    rows = parity["rows"]
    assert parity["passed"] is True, parity["verdict"]
    assert parity["input"]["shape"] == list(shape)
    bad = [r["layer"] for r in rows if not (r["passed"] and r["rel"] <= EVAL_LAYER_REL)]
    assert not bad, f"{arch}: layers beyond {EVAL_LAYER_REL}: {bad[:5]}"
    assert parity["worst_rel"] == max(r["rel"] for r in rows) <= EVAL_LAYER_REL
    assert rows[-1]["layer"] == OUTPUT and rows[-1]["shape"] == [shape[0], 512]
    assert parity["embedding_cosine"] >= EMBEDDING_COSINE
    norms = parity["embedding_norms"]
    assert len(norms) == shape[0] and all(math.isfinite(n) and NORM_RANGE[0] < n < NORM_RANGE[1] for n in norms), norms
    return parity


def assert_same_tensors(converted: str | Path, original: str | Path, chunk: int = 1 << 24) -> int:
    """Both files' state_dicts have the same keys in the same order, dtypes, shapes and bytes (read
    memory-mapped and compared 16 MiB at a time); returns the number of tensors."""
    import torch

    a = torch.load(converted, map_location="cpu", weights_only=True, mmap=True)
    b = torch.load(original, map_location="cpu", weights_only=True, mmap=True)
    assert list(a) == list(b)
    for key, tensor in b.items():
        other = a[key]
        assert (other.dtype, other.shape) == (tensor.dtype, tensor.shape), key
        x, y = (t.contiguous().numpy().reshape(-1).view(np.uint8) for t in (other, tensor))
        assert all(np.array_equal(x[i:i + chunk], y[i:i + chunk]) for i in range(0, x.size, chunk)), key
    return len(b)


def test_large_architectures_are_the_ones_above_the_threshold():
    from architectures import parameter_count

    assert LARGE_ARCHS[0] == "r2060" and parameter_count("r2060") > 1_100_000_000
    assert all(parameter_count(a) > LARGE_PARAMETERS for a in LARGE_ARCHS)


@pytest.mark.parametrize("arch", LARGE_ARCHS)
def test_large_architecture_converts_both_ways_within_every_gate(arch, tmp_path, small_lfw):
    src, out, back = tmp_path / f"{arch}.pth", tmp_path / f"{arch}.pdparams", tmp_path / f"{arch}.roundtrip.pth"
    forward, backward = tmp_path / "torch2paddle.json", tmp_path / "paddle2torch.json"
    measured: dict[str, tuple[float, float]] = {}  # step -> (seconds, peak RSS bytes)

    def step(name: str, argv: list) -> str:
        log = tmp_path / f"{name}.log"
        code, seconds, rss = run_tool(argv, log)
        output = log.read_text(errors="replace")
        assert code == 0, f"{name} exited {code}:\n{output[-3000:]}"
        measured[name] = seconds, rss
        return output

    try:
        step("demo", ["-c", "import sys; from converters.checkpoint import write_torch_state_dict; "
                      "from converters.demo import demo_state_dict; "
                      "write_torch_state_dict(sys.argv[2], demo_state_dict(sys.argv[1], seed=1))", arch, src])
        size = src.stat().st_size
        step("torch2paddle", [ROOT / "converters" / "torch2paddle.py", "--src", src, "--out", out, "--arch", arch,
                              "--input", "random", "--batch", BATCH, "--seed", 0, "--table", "failures",
                              "--report", forward])
        seeded = check_report(forward, arch, (BATCH, 3, 112, 112))
        assert seeded["input"]["kind"].startswith("seeded")
        output = step("paddle2torch", [ROOT / "converters" / "paddle2torch.py", "--src", out, "--out", back,
                                       "--arch", arch, "--check-against", src, "--verify", "--input", small_lfw,
                                       "--batch", BATCH, "--table", "failures", "--report", backward])
        assert f"bit-identical to {src}" in output
        faces = check_report(backward, arch, (BATCH, 3, 112, 112))
        assert faces["input"]["path"] == str(small_lfw)
        # in a child too, so that this process stays small
        output = step("compare", ["-c", "import sys; from parity_tests.test_large import assert_same_tensors; "
                                  "print('same tensors:', assert_same_tensors(sys.argv[1], sys.argv[2]))", back, src])
        tensors = int(output.rsplit("same tensors:", 1)[1])
    finally:
        for path in (src, out, back):  # several GB each: not kept among pytest's temporary folders
            path.unlink(missing_ok=True)

    def describe(parity: dict) -> str:
        return (f"worst rel {parity['worst_rel']:.2e} at {parity['worst_layer']}, cosine "
                f"{parity['embedding_cosine']:.9f}, norms {', '.join(f'{n:.1f}' for n in parity['embedding_norms'])}")

    steps = ", ".join(f"{name} {seconds:.0f} s / {rss / 2**30:.1f} GiB" for name, (seconds, rss) in measured.items())
    print(f"\n{arch}: {size / 2**30:.2f} GiB checkpoint, {len(seeded['rows'])} layers; seeded: {describe(seeded)}; "
          f"faces: {describe(faces)}; {tensors} tensors bit-identical after the round trip; "
          f"wall time / peak RSS: {steps}")
    for name in ("torch2paddle", "paddle2torch"):
        assert measured[name][1] <= VERIFY_RSS_RATIO * size + VERIFY_RSS_EXTRA, (name, measured[name][1] / size)
