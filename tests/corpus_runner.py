"""Run a command-line tool of this project on one bad input, isolated, with a deadline.

Two ways, same result (exit code or killing signal, stdout, stderr, seconds):

- **fork server** (default): one helper process imports every CLI (paddle, torch, onnxruntime, cv2) once
  and, for each case, forks a child that runs the CLI's ``main`` through ``converters.errors.run_cli``, as
  ``python tool.py ARGS`` would, with stdout and stderr redirected at the file-descriptor level (so C-level
  library warnings are captured too). A crash (SIGSEGV), a hang (killed with its process group after the
  deadline) or a huge allocation (the child runs under an address-space limit, so it fails instead of
  summoning the OOM killer) is reported, never inherited by pytest. Forking costs milliseconds, so the
  corpus pays the ~5 s framework import once.
- **fresh** (``fresh=True``, or ``ARCFACE_CORPUS_FRESH=1`` for every case): ``sys.executable tool.py ARGS``
  in a new process group, which also sees import-time warnings.

The server never runs a framework operation before forking (only imports), so no OpenMP thread pool
exists to be broken by ``fork``.

    python tests/corpus_runner.py --serve     # the server (started by the tests; JSON lines on stdin/stdout)
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 30.0
# a child may use this much address space on top of what the imported frameworks already map
EXTRA_ADDRESS_SPACE = 6 << 30

SCRIPTS = {
    "torch2paddle": ["converters/torch2paddle.py"],
    "paddle2torch": ["converters/paddle2torch.py"],
    "verify": ["eval/verify.py"],
    "train": ["train/train.py"],
    "recordio": ["-m", "train.data.recordio"],
}


def environment() -> dict[str, str]:
    """CI-like settings for every run: no colours, no progress bars on a terminal, no bytecode in the repo."""
    env = dict(os.environ)
    env.update(CI="1", PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1", NO_COLOR="1", TERM="dumb",
               PYTHONPATH=str(ROOT))
    env.pop("PYTHONWARNINGS", None)
    return env


@dataclass
class Outcome:
    code: int | None  # exit code; negative: killed by that signal; None: timed out
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False
    mode: str = "fork"

    def describe(self) -> str:
        if self.timed_out:
            return f"timed out after {self.seconds:.0f} s (killed)"
        if self.code is not None and self.code < 0:
            return f"killed by signal {signal.Signals(-self.code).name}"
        return f"exit {self.code}"


# ------------------------------------------------------------------------------------ the fork server
def _mains():
    from converters import paddle2torch, torch2paddle
    from eval import verify
    from train import train
    from train.data import tools

    return {"torch2paddle": torch2paddle.main, "paddle2torch": paddle2torch.main, "verify": verify.main,
            "train": train.main, "recordio": tools.main, "_selftest": _selftest}


def _selftest(argv: list[str]) -> int:
    """Misbehaviour on request, to prove the harness reports it: ``crash``, ``hang``, ``allocate``, ``fine``."""
    if argv[0] == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if argv[0] == "hang":
        time.sleep(3600)
    if argv[0] == "allocate":
        bytearray(EXTRA_ADDRESS_SPACE * 2)
    print("error: fine", file=sys.stderr)
    return 2


def _preload() -> None:
    """Import what the CLIs import lazily, so children start at once (imports only: no framework ops)."""
    import cv2  # noqa: F401
    import numpy  # noqa: F401
    import paddle  # noqa: F401
    import torch  # noqa: F401

    import converters.arch  # noqa: F401
    import converters.binfile  # noqa: F401
    import converters.checkpoint  # noqa: F401
    import converters.conversion_check  # noqa: F401
    import converters.mapping  # noqa: F401
    import converters.models  # noqa: F401
    import converters.weights  # noqa: F401
    import eval.backends  # noqa: F401
    import eval.export  # noqa: F401
    import eval.protocol  # noqa: F401
    import eval.results  # noqa: F401
    import eval.sources  # noqa: F401
    import eval.stream  # noqa: F401
    import paddle_models  # noqa: F401
    import torch_reference  # noqa: F401
    import train.checkpoint  # noqa: F401
    import train.data.loader  # noqa: F401
    import train.engine  # noqa: F401
    import train.weights  # noqa: F401

    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        pass


def _address_space() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _child(main, argv: list[str], stdout: str, stderr: str) -> None:
    """In the forked child: become a process group, redirect, limit memory, run the CLI, exit with its code."""
    code = 70
    try:
        os.setpgid(0, 0)
        for fd, path in ((1, stdout), (2, stderr)):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        sys.stdin = open(os.devnull)  # noqa: SIM115 (the child exits through os._exit)
        limit = _address_space() + EXTRA_ADDRESS_SPACE
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from converters.errors import run_cli

        sys.argv = ["cli", *argv]
        try:
            run_cli(lambda: main(list(argv)))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # what the interpreter would print for an uncaught exception
            import traceback

            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _wait(pid: int, timeout: float) -> tuple[int | None, bool]:
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        if time.monotonic() > deadline:
            _kill_group(pid)
            os.waitpid(pid, 0)
            return None, True
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def serve() -> None:
    """Read ``{"cli", "argv", "stdout", "stderr", "timeout"}`` lines, answer ``{"code", "timed_out", "seconds"}``."""
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    _preload()
    mains = _mains()
    reply = sys.stdout
    print(json.dumps({"ready": True}), file=reply, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(mains[request["cli"]], request["argv"], request["stdout"], request["stderr"])
        code, timed_out = _wait(pid, request.get("timeout", TIMEOUT))
        _kill_group(pid)  # anything the tool left running (data-loader workers) goes with it
        print(json.dumps({"code": code, "timed_out": timed_out, "seconds": time.monotonic() - started}),
              file=reply, flush=True)


class ForkServer:
    """The pytest side of the fork server: start once, ``run`` many times, ``close``."""

    def __init__(self, scratch: Path):
        self.scratch = scratch
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.count = 0
        with open(scratch / "server.log", "wb") as log:
            self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve"], cwd=ROOT,
                                         env=environment(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=log, text=True, bufsize=1)
        ready = self.proc.stdout.readline()
        if not ready:
            raise RuntimeError(f"the corpus fork server did not start: {(scratch / 'server.log').read_text()[-2000:]}")

    def run(self, cli: str, argv: list[str], timeout: float = TIMEOUT) -> Outcome:
        self.count += 1
        out, err = self.scratch / f"{self.count}.out", self.scratch / f"{self.count}.err"
        request = {"cli": cli, "argv": [str(a) for a in argv], "stdout": str(out), "stderr": str(err),
                   "timeout": timeout}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the corpus fork server died: {(self.scratch / 'server.log').read_text()[-2000:]}")
        answer = json.loads(line)
        outcome = Outcome(answer["code"], _read(out), _read(err), answer["seconds"], answer["timed_out"], "fork")
        out.unlink(missing_ok=True)
        err.unlink(missing_ok=True)
        return outcome

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def run_fresh(cli: str, argv: list[str], timeout: float = TIMEOUT) -> Outcome:
    """``python tool.py ARGS`` in a new process group; the group is killed after ``timeout`` seconds."""
    command = [sys.executable, *SCRIPTS[cli], *map(str, argv)]
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=ROOT, env=environment(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        out, err = proc.communicate()
        timed_out = True
    _kill_group(proc.pid)
    return Outcome(None if timed_out else proc.returncode, out.decode("utf-8", "replace"),
                   err.decode("utf-8", "replace"), time.monotonic() - started, timed_out, "fresh")


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        sys.exit(__doc__)
