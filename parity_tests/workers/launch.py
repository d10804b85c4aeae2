"""Run a multi-process worker command from a test: a timeout that kills the whole process group (the
launcher and every rank it started), and the ranks' log tails in the failure message."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_workers(cmd: list[str], logs: Path | None = None, timeout: float = 240) -> None:
    """Run ``cmd`` from the project root; fail the test with its output (and ``logs/workerlog.*``) unless it
    exits 0 within ``timeout`` seconds."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish in {timeout} s:\n{output[-3000:]}")
    if proc.returncode != 0:
        worker_logs = "".join(p.read_text()[-3000:] for p in sorted(logs.glob("workerlog.*"))) if logs else ""
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{output[-3000:]}\n{worker_logs}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
