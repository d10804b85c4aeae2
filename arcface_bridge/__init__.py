"""``arcface-bridge COMMAND [args...]``: one installed command for every tool of the project.

Each command runs the same ``main`` as its script (``arcface-bridge torch2paddle ...`` is
``python converters/torch2paddle.py ...``), behind the same error boundary: a problem with the input is
one line on stderr and exit code 2. A command's module is imported only when it runs, so ``--help``
starts without Paddle or PyTorch.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from typing import NamedTuple, NoReturn

PROG = "arcface-bridge"
DESCRIPTION = ("Move InsightFace ArcFace models between PyTorch and PaddlePaddle with layer-by-layer proof "
               "of parity; evaluate and train them in Paddle.")


class Command(NamedTuple):
    target: str  # "module:function", the function taking argv and returning an exit code
    script: str  # the equivalent script form
    summary: str


COMMANDS: dict[str, Command] = {
    "torch2paddle": Command("converters.torch2paddle:main", "python converters/torch2paddle.py",
                            "convert a PyTorch backbone to Paddle, proving parity layer by layer"),
    "paddle2torch": Command("converters.paddle2torch:main", "python converters/paddle2torch.py",
                            "convert Paddle weights back to an InsightFace PyTorch state_dict"),
    "onnx2paddle": Command("converters.onnx2paddle:main", "python converters/onnx2paddle.py",
                           "import an InsightFace recognition ONNX as Paddle (and PyTorch) weights, checked "
                           "against onnxruntime stage by stage"),
    "export": Command("converters.export:main", "python converters/export.py",
                      "export a backbone for deployment: Paddle Inference or ONNX, checked against the model"),
    "verify": Command("eval.verify:main", "python eval/verify.py",
                      "evaluate a model (or embeddings) on InsightFace's verification packs"),
    "ijb": Command("eval.ijb:main", "python eval/ijb.py",
                   "IJB-B/IJB-C 1:1 verification (TAR at FAR) with InsightFace's protocol"),
    "ijb-synthetic": Command("eval.ijb_synthetic:main", "python eval/ijb_synthetic.py",
                             "write a synthetic IJB layout from real faces, for tests and trials"),
    "train": Command("train.train:main", "python train/train.py",
                     "train ArcFace/CosFace with Partial FC in Paddle"),
    "reshard": Command("train.reshard:main", "python train/reshard.py",
                       "re-shard a training run's checkpoints for another number of processes"),
    "recordio": Command("train.data.tools:main", "python -m train.data.recordio",
                        "InsightFace RecordIO packs: dump, verify, pack, unpack, shuffle"),
    "synthetic": Command("eval.synthetic:main", "python eval/synthetic.py",
                         "write a synthetic verification pack (.bin) for tests and benchmarks"),
}


def version() -> str:
    """The installed distribution's version (the project's pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distribution_version

    try:
        return distribution_version("arcface-bridge")
    except PackageNotFoundError:
        return "unknown (not installed)"


def usage() -> str:
    width = max(map(len, COMMANDS)) + 2
    lines = [f"usage: {PROG} COMMAND [args...]", "",
             textwrap.fill(DESCRIPTION, 100), "",
             "commands:"]
    lines += [f"  {name:<{width}}{command.summary}" for name, command in COMMANDS.items()]
    lines += ["", "options:",
              f"  {'-h, --help':<{width}}show this message and exit",
              f"  {'--version':<{width}}show the version and exit", "",
              f"'{PROG} COMMAND --help' shows a command's options. Each command is also a script:",
              f"'{PROG} torch2paddle ...' is '{COMMANDS['torch2paddle'].script} ...'."]
    return "\n".join(lines)


def dispatch(argv: list[str] | None = None) -> int:
    """Run ``COMMAND args...`` (``sys.argv[1:]`` by default) and return its exit code; a ``UserError``
    for an unknown or missing command."""
    from converters.cli import program_name
    from converters.errors import UserError

    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if not argv:
        raise UserError(None, f"a command is required: {', '.join(COMMANDS)} (see {PROG} --help)")
    name, rest = argv[0], argv[1:]
    if name in ("-h", "--help"):
        print(usage())
        return 0
    if name == "--version":
        print(f"{PROG} {version()}")
        return 0
    if name not in COMMANDS:
        what = "option" if name.startswith("-") else "command"
        raise UserError(None, f"unknown {what} {name!r}: the commands are {', '.join(COMMANDS)} "
                        f"(see {PROG} --help)")
    module, function = COMMANDS[name].target.split(":")
    command_main = getattr(importlib.import_module(module), function)
    with program_name(f"{PROG} {name}"):
        return command_main(rest) or 0


def main(argv: list[str] | None = None) -> NoReturn:
    """The ``arcface-bridge`` console script: ``dispatch`` behind the tools' error boundary (exits)."""
    from converters.errors import run_cli

    run_cli(lambda: dispatch(argv))
