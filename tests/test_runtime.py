"""converters.runtime: the default thread count of every command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from converters.errors import UserError
from converters.runtime import THREADS_VARIABLE, default_threads

ROOT = Path(__file__).resolve().parents[1]


def test_default_threads_is_every_core_unless_the_variable_is_set(monkeypatch):
    monkeypatch.delenv(THREADS_VARIABLE, raising=False)
    assert default_threads() == (os.cpu_count() or 1)
    monkeypatch.setenv(THREADS_VARIABLE, "")
    assert default_threads() == (os.cpu_count() or 1)
    monkeypatch.setenv(THREADS_VARIABLE, " 3 ")
    assert default_threads() == 3


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_value_is_a_one_line_error_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv(THREADS_VARIABLE, value)
    with pytest.raises(UserError, match=f"^{THREADS_VARIABLE}='{value}': expected a positive whole number"):
        default_threads()


def test_a_command_without_threads_takes_the_variable():
    # the thread count a framework ends up with in a fresh process (Paddle has no getter; torch has)
    code = ("import torch; from converters.runtime import set_threads; "
            "n = set_threads(paddle=False); print(n, torch.get_num_threads())")
    env = {**os.environ, THREADS_VARIABLE: "3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300, check=True).stdout.split()
    assert out == ["3", "3"]
