"""The error boundary of every command-line tool: one line ``error: <file or option>: <problem>`` and exit
2 for user errors (arguments, memory a user's sizes ask for, data-loader workers), warnings held back on
failure, a traceback only for bugs."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from converters.cli import ArgumentParser, fraction, int_range, non_negative_int, positive_int, thread_count
from converters.errors import UserError, reading, run_cli

ROOT = Path(__file__).resolve().parents[1]


def run_exit(main) -> int:
    with pytest.raises(SystemExit) as exc:
        run_cli(main)
    return exc.value.code


def one_line(capsys, *words: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_user_error_is_one_line_and_warnings_of_the_failed_run_are_dropped(capsys):
    def main():
        warnings.warn("some library noise", UserWarning, stacklevel=1)
        raise UserError("x.pth", "bad\nthing")

    with warnings.catch_warnings(record=True) as shown:
        code = run_exit(main)
    assert code == 2
    assert one_line(capsys) == "error: x.pth: bad thing" and not shown


def test_warnings_are_shown_when_the_run_succeeds(capsys):
    def main():
        warnings.warn("worth knowing", UserWarning, stacklevel=1)
        print("done")
        return 0

    with warnings.catch_warnings(record=True) as shown:  # where run_cli replays them (stderr in a CLI)
        code = run_exit(main)
    assert code == 0
    assert "done" in capsys.readouterr().out and [str(w.message) for w in shown] == ["worth knowing"]


def test_memory_error_and_interrupt_and_bugs(capsys):
    def oom():
        raise MemoryError("(ResourceExhausted) Fail to alloc memory of 1099511627264 size. [Hint: ...]")

    assert run_exit(oom) == 2
    one_line(capsys, "out of memory", "1099511627264")

    def interrupted():
        raise KeyboardInterrupt

    assert run_exit(interrupted) == 130
    one_line(capsys, "interrupted")

    def bug():
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):  # not swallowed: Python prints its traceback
        run_cli(bug)


def test_reading_names_the_file_for_memory_and_recursion_errors():
    with pytest.raises(UserError, match=r"^f\.cfg: config: too large or too deeply nested"), reading("f.cfg", "config"):
        raise MemoryError
    with pytest.raises(UserError, match=r"^f\.cfg: config: nested too deeply"), reading("f.cfg", "config"):
        raise RecursionError


def test_user_error_survives_pickling_and_single_argument_construction():
    import pickle

    err = pickle.loads(pickle.dumps(UserError("p", "q")))
    assert (err.path, err.problem, str(err)) == ("p", "q", "p: q")
    assert str(UserError("just a message")) == "just a message"


def test_argparse_errors_are_one_line(capsys):
    parser = ArgumentParser(prog="t")
    parser.add_argument("--threads", type=thread_count)
    parser.add_argument("--batch", type=positive_int, default=1)
    parser.add_argument("--limit", type=non_negative_int)
    parser.add_argument("--rate", type=fraction)
    parser.add_argument("--arch", choices=("r18", "r50"))
    parser.add_argument("--src", required=True)
    cases = [
        (["--src", "s", "--threads", "-1"], "error: --threads: must be a positive integer, got -1"),
        (["--src", "s", "--threads", "5000"], "error: --threads: must be at most 1024, got 5000"),
        (["--src", "s", "--batch", "0"], "error: --batch: must be a positive integer, got 0"),
        (["--src", "s", "--batch", "x"], "error: --batch: must be a positive integer, got 'x'"),
        (["--src", "s", "--limit", "-2"], "error: --limit: must be a non-negative integer, got -2"),
        (["--src", "s", "--rate", "nan"], "error: --rate: must be a number in [0, 1], got nan"),
        (["--src", "s", "--arch", "r1"], "error: --arch: invalid choice: 'r1' (choose from 'r18', 'r50')"),
        ([], "error: --src: required but not given"),
        (["--src", "s", "--what"], "error: --what: unrecognized argument"),
        (["--src", "s", "--batch", "9" * 5000], "error: --batch: must be a positive integer, got"),
    ]
    for argv, expected in cases:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        assert exc.value.code == 2
        assert one_line(capsys).startswith(expected)
    assert int_range(2, 3)("3") == 3 and parser.parse_args(["--src", "s", "--batch", "7"]).batch == 7


CLI_CASES = {
    "torch2paddle --threads -1": (["converters/torch2paddle.py", "--threads", "-1"], "--threads: "),
    "torch2paddle --batch 0": (["converters/torch2paddle.py", "--batch", "0"], "--batch: "),
    "paddle2torch --seed -1": (["converters/paddle2torch.py", "--src", "a", "--out", "b", "--seed", "-1"], "--seed: "),
    "eval --batch-size 0": (["eval/verify.py", "--weights", "w.pdparams", "--data", "d", "--batch-size", "0"],
                            "--batch-size: "),
    "eval --threads -1": (["eval/verify.py", "--embeddings", "e", "--issame", "i", "--threads", "-1"], "--threads: "),
    "eval neither input": (["eval/verify.py"], "give either --weights"),
    "train --max-steps 0": (["train/train.py", "tiny_rec", "--max-steps", "0"], "--max-steps: "),
    "train --threads -1": (["train/train.py", "tiny_rec", "--threads", "-1"], "--threads: "),
    "recordio --limit -1": (["-m", "train.data.recordio", "dump", "p", "--limit", "-1"], "--limit: "),
    "recordio --seed -1": (["-m", "train.data.recordio", "shuffle", "p", "o", "--seed", "-1"], "--seed: "),
    "synthetic --pairs 0": (["eval/synthetic.py", "o.bin", "--pairs", "0"], "--pairs: "),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_every_cli_refuses_out_of_range_arguments_in_one_line(case, tmp_path):
    args, words = CLI_CASES[case]
    argv = [sys.executable, *(str(ROOT / a) if a.endswith(".py") else a for a in args)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: {words}"), proc.stderr
