"""The bad-input corpus: every case in tests/corpus_cases.py, against every CLI.

For each case: exit code 2; exactly one non-empty stderr line, starting with ``error: `` and naming the
file or option; no traceback; no file created under the case folder (no partial output, no temporary
file, no marker from a hostile payload); every input byte-identical afterwards (sha256 before and after);
finished within 30 s. A crash or a hang fails the case, never pytest: cases run in a forked child of a
helper process (tests/corpus_runner.py), a few also as a fresh ``python tool.py`` to see import-time noise.

    pytest tests/test_bad_input_corpus.py -q
    ARCFACE_CORPUS_FRESH=1 pytest tests/test_bad_input_corpus.py -q   # every case as a fresh process (slow)
    python tests/test_bad_input_corpus.py --table [--json results.json] [ID ...]   # the README table
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest

from tests.corpus_cases import CASES, MARKER, Case, Resources, by_id
from tests.corpus_runner import ForkServer, Outcome, run_fresh

DEADLINE = 30.0
ALL_FRESH = os.environ.get("ARCFACE_CORPUS_FRESH") == "1"


class NotApplicable(Exception):
    """The case cannot be set up here (e.g. no mount permission); the reason is the message."""


# ------------------------------------------------------------------------------------------ the harness
def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (not following links): sha256 for files, 'dir' or 'link' otherwise."""
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            path = Path(folder) / name
            found[str(path.relative_to(root))] = "link" if path.is_symlink() else "dir"
        for name in files:
            path = Path(folder) / name
            if path.is_symlink():
                found[str(path.relative_to(root))] = "link"
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                while block := fh.read(1 << 22):
                    digest.update(block)
            found[str(path.relative_to(root))] = digest.hexdigest()
    return found


@contextlib.contextmanager
def read_only_dir(path: Path):
    """``path`` as a read-only tmpfs mount (writes fail with EROFS even for root)."""
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise NotApplicable(f"cannot mount a read-only tmpfs here ({proc.stderr.strip() or proc.returncode}); "
                            "a read-only directory cannot be made as root otherwise")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def problems_of(case: Case, d: Path, outcome: Outcome, before: dict, after: dict) -> list[str]:
    """Everything wrong with one run, as sentences (empty: the case passes)."""
    problems = []
    if outcome.timed_out:
        problems.append(f"did not finish within {DEADLINE:.0f} s (killed)")
    elif outcome.code != 2:
        problems.append(f"{outcome.describe()}, expected exit 2")
    if outcome.seconds > DEADLINE:
        problems.append(f"took {outcome.seconds:.1f} s (limit {DEADLINE:.0f} s)")
    lines = [ln for ln in outcome.stderr.splitlines() if ln.strip()]
    if "Traceback" in outcome.stderr:
        problems.append("a traceback on stderr")
    if len(lines) != 1:
        problems.append(f"{len(lines)} non-empty stderr lines, expected exactly 1")
    error = next((ln for ln in lines if ln.startswith("error: ")), None)
    if error is None:
        problems.append("no stderr line starts with 'error: '")
    elif len(lines) == 1:
        names = [n.format(d=d) for n in case.names]
        if not any(n in error for n in names):
            problems.append(f"the error line names none of: {', '.join(_short(n, d) for n in names)}")
        if case.word and case.word not in error:
            problems.append(f"the error line lacks {case.word!r}")
    if (d / MARKER).exists():
        problems.append(f"the hostile payload ran: {MARKER} marker file created")
    new = sorted(set(after) - set(before))
    if new:
        problems.append(f"left new files: {', '.join(new[:5])}{' ...' if len(new) > 5 else ''}")
    gone = sorted(set(before) - set(after))
    if gone:
        problems.append(f"inputs removed: {', '.join(gone[:5])}")
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    if changed:
        problems.append(f"inputs modified: {', '.join(changed[:5])}")
    return problems


def execute(case: Case, d: Path, resources: Resources, server: ForkServer) -> tuple[list[str], Outcome, list[str]]:
    """Build the case in the empty folder ``d``, run it, and return its arguments, outcome and problems."""
    if "onnx" in case.needs:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as err:
            raise NotApplicable(f"onnx/onnxruntime not installed ({err})") from None
    with contextlib.ExitStack() as stack:
        if "mount" in case.needs:
            stack.enter_context(read_only_dir(d / "ro"))
        argv = [str(a) for a in case.build(d, resources)]
        before = snapshot(d)
        if case.fresh or ALL_FRESH:
            outcome = run_fresh(case.cli, argv, timeout=DEADLINE)
        else:
            outcome = server.run(case.cli, argv, timeout=DEADLINE)
        after = snapshot(d)
        return argv, outcome, problems_of(case, d, outcome, before, after)


def _short(text: str, d: Path) -> str:
    text = text.replace(f"{d}/", "").replace(str(d), ".")
    return text


def report(case: Case, d: Path, outcome: Outcome, problems: list[str]) -> str:
    lines = outcome.stderr.splitlines()
    shown = lines if len(lines) <= 12 else [*lines[:6], f"... ({len(lines) - 10} more lines)", *lines[-4:]]
    err = "\n".join(_short(ln, d) for ln in shown)
    return (f"{case.id} ({case.kind}: {case.bad}) [{outcome.mode}]\n  " + "\n  ".join(problems)
            + f"\n  actual: {outcome.describe()} after {outcome.seconds:.1f} s; stderr:\n{err}")


# -------------------------------------------------------------------------------------------- pytest
@pytest.fixture(scope="session")
def corpus_server(tmp_path_factory):
    server = ForkServer(tmp_path_factory.mktemp("corpus-server"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def corpus_resources(tmp_path_factory, corpus_server):
    return Resources(tmp_path_factory.mktemp("corpus-resources"),
                     lambda cli, argv: corpus_server.run(cli, argv, timeout=300))


def test_corpus_is_large_and_covers_every_cli():
    cases = by_id()
    assert len(cases) >= 60
    assert {c.cli for c in CASES} == {"torch2paddle", "paddle2torch", "verify", "train", "recordio"}


def test_harness_reports_crashes_hangs_and_huge_allocations(corpus_server):
    """The runner itself: a SIGSEGV, a hang and an allocation beyond the limit are outcomes, not pytest's death."""
    crash = corpus_server.run("_selftest", ["crash"])
    assert crash.code == -11 and crash.describe() == "killed by signal SIGSEGV"
    hang = corpus_server.run("_selftest", ["hang"], timeout=1)
    assert hang.timed_out and hang.code is None and 1 <= hang.seconds < 5
    huge = corpus_server.run("_selftest", ["allocate"])
    assert huge.code in (1, 2) and not huge.timed_out, huge  # MemoryError (a traceback, or run_cli's line), no OOM kill
    fine = corpus_server.run("_selftest", ["fine"])
    assert (fine.code, fine.stderr) == (2, "error: fine\n")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path, corpus_server, corpus_resources):
    d = tmp_path / "case"
    d.mkdir()
    try:
        _, outcome, problems = execute(case, d, corpus_resources, corpus_server)
    except NotApplicable as reason:
        pytest.skip(str(reason))
    assert not problems, report(case, d, outcome, problems)


# ---------------------------------------------------------------------------------- the README table
def _command(case: Case, argv: list[str], d: Path) -> str:
    program = {"torch2paddle": "converters/torch2paddle.py", "paddle2torch": "converters/paddle2torch.py",
               "verify": "eval/verify.py", "train": "train/train.py",
               "recordio": "-m train.data.recordio"}[case.cli]
    args = []
    for arg in argv:
        arg = _short(arg, d)
        args.append(arg if len(arg) <= 40 else arg[:18] + "…" + arg[-12:])
    return "python " + program + " " + " ".join(shlex.quote(a) for a in args)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main(argv: list[str]) -> int:
    import argparse
    import json
    import shutil
    import tempfile

    parser = argparse.ArgumentParser(description="run the corpus and print the README table")
    parser.add_argument("--table", action="store_true", help="print the Markdown table")
    parser.add_argument("--json", type=Path, help="also write every case's outcome as JSON")
    parser.add_argument("ids", nargs="*", help="only these case ids")
    args = parser.parse_args(argv)
    selected = [by_id()[i] for i in args.ids] if args.ids else CASES
    work = Path(tempfile.mkdtemp(prefix="corpus-"))
    server = ForkServer(work / "server")
    resources = Resources(work / "resources", lambda cli, a: server.run(cli, a, timeout=300))
    rows, results = [], []
    try:
        for n, case in enumerate(selected):
            d = work / f"{n:03d}"
            d.mkdir()
            record = {"id": case.id, "cli": case.cli, "kind": case.kind, "bad": case.bad}
            try:
                argv_used, outcome, problems = execute(case, d, resources, server)
            except NotApplicable as reason:
                record.update(status="skipped", reason=str(reason))
                rows.append((case, f"`{case.cli}`", f"(skipped: {reason})"))
                results.append(record)
                print(f"SKIP {case.id}: {reason}", file=sys.stderr)
                continue
            except BaseException as err:  # a builder that needs something missing (pytest.skip, ...)
                record.update(status="skipped", reason=f"{type(err).__name__}: {err}")
                results.append(record)
                print(f"SKIP {case.id}: {err}", file=sys.stderr)
                continue
            line = next((ln for ln in outcome.stderr.splitlines() if ln.startswith("error: ")), "")
            record.update(status="fail" if problems else "pass", problems=problems, code=outcome.code,
                          timed_out=outcome.timed_out, seconds=round(outcome.seconds, 2), mode=outcome.mode,
                          stderr=[_short(ln, d) for ln in outcome.stderr.splitlines()],
                          command=_command(case, argv_used, d))
            results.append(record)
            print(f"{'FAIL' if problems else 'pass'} {case.id} ({outcome.seconds:.1f} s)"
                  + ("".join(f"\n    {p}" for p in problems) if problems else ""), file=sys.stderr, flush=True)
            expected = _short(line, d) if not problems else \
                f"{_short(line, d) or '(no error line)'} **(not yet passing: {'; '.join(problems)})**"
            rows.append((case, record["command"], expected))
    finally:
        server.close()
        for mount in work.glob("*/ro"):
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.table:
        print("| id | command | bad input | expected one-line error |")
        print("|---|---|---|---|")
        for case, command, expected in rows:
            print(f"| {case.id} | `{_cell(command)}` | {_cell(case.bad)} | {_cell(expected)} |")
    failed = [r for r in results if r["status"] == "fail"]
    print(f"{len(results)} cases: {len(results) - len(failed) - sum(r['status'] == 'skipped' for r in results)} "
          f"pass, {len(failed)} fail, {sum(r['status'] == 'skipped' for r in results)} skipped", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
