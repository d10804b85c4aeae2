"""The installed ``arcface-bridge`` command: help, errors, and each command being the same code as its script.

Every test runs the command as a user would, in a subprocess and from a folder outside the repository. When
the console script is not installed (no ``pip install -e .``), they run ``python -m arcface_bridge`` instead,
and ``test_console_script_is_installed`` says so by skipping.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pytest

from arcface_bridge import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sysconfig.get_path("scripts")) / ("arcface-bridge.exe" if os.name == "nt" else "arcface-bridge")
INSTALLED = SCRIPT.is_file()
BRIDGE = [str(SCRIPT)] if INSTALLED else [sys.executable, "-m", "arcface_bridge"]
# python -m needs the project on the path when it is not installed; the console script must not
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)]))}


def run(command: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=300, env=env)


def bridge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run([*BRIDGE, *map(str, args)], cwd, env=None if INSTALLED else ENV)


def test_console_script_is_installed():
    if not INSTALLED:
        pytest.skip(f"arcface-bridge is not installed in {SCRIPT.parent} (pip install -e .): the other tests "
                    "ran `python -m arcface_bridge` instead")
    assert bridge("--version", cwd=ROOT).returncode == 0


def test_help_lists_every_command_with_one_line(tmp_path):
    done = bridge("--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: arcface-bridge COMMAND")
    for name, command in COMMANDS.items():
        assert f"  {name}" in done.stdout and command.summary in done.stdout
    assert bridge("-h", cwd=tmp_path).stdout == done.stdout


def test_help_imports_neither_framework(tmp_path):
    code = ("import sys; from arcface_bridge import dispatch; dispatch(['--help']); "
            "print(sorted({'paddle', 'torch', 'numpy'} & set(sys.modules)))")
    done = run([sys.executable, "-c", code], tmp_path, env=None if INSTALLED else ENV)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


def test_version(tmp_path):
    try:
        expected = version("arcface-bridge")
    except PackageNotFoundError:
        expected = "unknown (not installed)"
    done = bridge("--version", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, f"arcface-bridge {expected}\n")


@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_help_names_the_command(name, tmp_path):
    done = bridge(name, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: arcface-bridge {name} ")


def test_subcommand_help_keeps_the_prefix(tmp_path):
    done = bridge("recordio", "dump", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: arcface-bridge recordio dump ")


@pytest.mark.parametrize("args", [["frobnicate"], ["--frobnicate"], []], ids=["command", "option", "none"])
def test_unknown_or_missing_command_is_one_line_exit_2(args, tmp_path):
    done = bridge(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert all(name in lines[0] for name in COMMANDS)


def test_a_command_error_is_one_line_exit_2(tmp_path):
    missing = tmp_path / "missing.npy"
    done = bridge("verify", "--embeddings", missing, "--issame", missing, cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing.npy" in lines[0], done.stderr


def test_bad_argument_is_one_line_exit_2(tmp_path):
    done = bridge("torch2paddle", "--batch", "-1", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [done.stderr.strip()] and done.stderr.startswith("error: --batch")


def without_memory_line(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("peak RSS")]


def test_verify_prints_what_the_script_prints(tmp_path):
    rng = np.random.default_rng(0)
    issame = rng.random(40) < 0.5
    base = rng.normal(size=(40, 16))
    emb = np.repeat(base, 2, axis=0)
    emb[1::2] = np.where(issame[:, None], base + rng.normal(size=base.shape), rng.normal(size=base.shape))
    np.save(tmp_path / "emb.npy", emb.astype(np.float32))
    np.save(tmp_path / "issame.npy", issame)
    args = ["--embeddings", str(tmp_path / "emb.npy"), "--issame", str(tmp_path / "issame.npy"), "--name", "lfw"]
    installed = bridge("verify", *args, cwd=tmp_path)
    script = run([sys.executable, str(ROOT / "eval" / "verify.py"), *args], tmp_path)
    assert installed.returncode == script.returncode == 0, installed.stderr + script.stderr
    assert "accuracy" in installed.stdout
    assert without_memory_line(installed.stdout) == without_memory_line(script.stdout)


def test_recordio_dump_prints_what_the_module_prints(small_dataset_rec, tmp_path):
    installed = bridge("recordio", "dump", small_dataset_rec, cwd=tmp_path)
    module = run([sys.executable, "-m", "train.data.recordio", "dump", str(small_dataset_rec)], ROOT)
    assert installed.returncode == module.returncode == 0, installed.stderr + module.stderr
    assert len(installed.stdout.splitlines()) > 10
    assert installed.stdout == module.stdout


@pytest.mark.parametrize("script", ["converters/torch2paddle.py", "train/train.py"])
def test_scripts_still_run_as_files(script, tmp_path):
    """``python converters/torch2paddle.py`` from anywhere; train/train.py is the case whose own folder would
    shadow the ``train`` package."""
    done = run([sys.executable, str(ROOT / script), "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {Path(script).name} ")


def test_program_name_is_restored_after_a_command():
    from converters.cli import ArgumentParser, program_name

    with program_name("arcface-bridge demo"):
        parser = ArgumentParser(prog="demo.py")
        sub = parser.add_subparsers().add_parser("go")
    assert (parser.prog, sub.prog) == ("arcface-bridge demo", "arcface-bridge demo go")
    assert ArgumentParser(prog="demo.py").prog == "demo.py"
