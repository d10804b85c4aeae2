"""X2Paddle against this project's ONNX importer on the same arcface_torch-style ONNX exports, side by side.

    python bench/onnx_import.py [--archs r50,mbf] [--batch1-archs mbf] [--faces PACK.bin]
                                [--cache-dir bench/.cache] [--out bench/results/onnx_import] [--project-no-verify]

The ONNX files are made here (once, kept in the cache folder) as arcface_torch's ``torch2onnx.py`` makes
them: the PyTorch reference with seeded calibrated weights (``converters.demo``), traced at batch 1 with
``input_names=["data"]``, opset 11, the TorchScript exporter (``dynamo=False``), then the input's dim 0
renamed ``"None"`` (the output keeps its traced ``[1, 512]``). Eval-mode export folds every BatchNorm that
directly follows a convolution into it. For ``--batch1-archs`` the file as the exporter wrote it, before the
rename (input batch 1), is converted too.

Each tool converts each file in a fresh process, timed, with its peak RSS read by ``wait4`` in a small
launcher process (a child forked from this large process would start with its pages counted). The project's
importer runs twice: with ``--no-verify`` (the same work as X2Paddle's) and with its verification against
onnxruntime on seeded images and the faces (its default use). Each result is then run at batch 1 (image by
image) and at batch 8 on 8 seeded images and 8 real faces, and compared with onnxruntime running the
original graph (dim 0 ``"None"``) at the same batch size: worst relative error (max |diff| / max |ref|) and
the lowest per-image cosine. Then its names are loaded strictly into the project's Paddle and PyTorch
models, and one train-mode forward/backward on 4 faces shows whether it trains and what its BatchNorms do
with their running mean.

X2Paddle lives in its own virtualenv under the cache folder (``--system-site-packages``, so that it uses the
installed paddlepaddle), never in the project's environment, and runs with its telemetry off
(``--disable_feedback True``; its ``ConverterCheck`` thread is also replaced by a counter, so nothing can be
sent and the notes show that nothing was attempted). It runs with the onnx package of the project's
environment and again with ``X2PADDLE_ONNX`` installed into a folder of the cache that only its runs see.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

X2PADDLE = "1.6.0"
# X2Paddle 1.6.0 checks the onnx version through ``onnx.version.version`` (an attribute onnx's ``__init__`` no
# longer sets) and reads ``onnx.mapping`` (removed in onnx 1.19): 1.16.2 has both and wheels for Python 3.11
X2PADDLE_ONNX = "1.16.2"
BATCH = 8
TRAIN_BATCH = 4  # the train-mode forward/backward: the first 4 faces (r50 at batch 8 takes a minute here)
SEED = 0  # demo weights
IMAGE_SEED = 1  # seeded images
THREADS = 2

# run under X2Paddle's Python: its CLI entry point with the telemetry thread replaced by a counter
X2PADDLE_CLI = """
import sys
import x2paddle.utils
attempts = []
x2paddle.utils.ConverterCheck.start = lambda self: attempts.append(self._task)  # never sends anything
from x2paddle.convert import main
model, save_dir = sys.argv[1:3]
sys.argv = ["x2paddle", "--framework=onnx", "--model=" + model, "--save_dir=" + save_dir,
            "--disable_feedback", "True"]
try:
    main()
finally:
    print("TELEMETRY_ATTEMPTS=%d" % len(attempts), file=sys.stderr)
"""


# --------------------------------------------------------------------------------------------------------
# processes


def measure_main(out: str, argv: list[str]) -> None:
    """Launcher: run ``argv`` with its output in ``out``.stdout/.stderr; write seconds, peak RSS, exit code."""
    with open(out + ".stdout", "wb") as so, open(out + ".stderr", "wb") as se:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=so, stderr=se)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    Path(out).write_text(json.dumps({"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024,
                                     "returncode": os.waitstatus_to_exitcode(status)}))


def measured(argv: list[str], folder: Path, name: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``argv`` through the launcher; returns seconds, peak_rss_mib, returncode, stdout, stderr."""
    out = str(folder / f"{name}.measure.json")
    subprocess.run([sys.executable, __file__, "--measure", out, "--", *argv], check=True, env=env)
    result = json.loads(Path(out).read_text())
    result["stdout"] = Path(out + ".stdout").read_text(errors="replace")
    result["stderr"] = Path(out + ".stderr").read_text(errors="replace")
    return result


def child_env(extra_path: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), PYTHONWARNINGS="ignore")
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(extra_path), env.get("PYTHONPATH", "")) if p)
    return env


def last_error(text: str) -> str:
    """The line of a tool's output that says what went wrong: an [ERROR] line or a traceback's last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "[ERROR]" in ln:
            return ln[ln.index("[ERROR]"):]
    for ln in reversed(lines):
        if ln.startswith("error:") or (": " in ln and ln.split(":")[0].endswith(("Error", "Exception"))):
            return ln
    return lines[-1] if lines else "(no output)"


# --------------------------------------------------------------------------------------------------------
# X2Paddle's virtualenv


class X2PaddleEnv:
    """X2Paddle in ``<cache>/x2paddle-venv``; onnx ``X2PADDLE_ONNX`` in ``<cache>/x2paddle-onnx`` (on
    PYTHONPATH only for the runs that ask for it)."""

    def __init__(self, cache: Path):
        self.venv = cache / "x2paddle-venv"
        self.onnx_dir = cache / f"x2paddle-onnx-{X2PADDLE_ONNX}"
        self.python = self.venv / "bin" / "python"
        self.error: str | None = None
        self.onnx_error: str | None = None

    def _pip(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.python), "-m", "pip", "install", "--disable-pip-version-check",
                               "--no-input", *args], capture_output=True, text=True)

    def install(self) -> None:
        stamp = self.venv / f".x2paddle-{X2PADDLE}"
        if not stamp.is_file():
            print(f"installing x2paddle=={X2PADDLE} into {self.venv}", file=sys.stderr, flush=True)
            made = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(self.venv)],
                                  capture_output=True, text=True)
            if made.returncode != 0:
                self.error = f"cannot create the virtualenv: {last_error(made.stderr + made.stdout)}"
                return
            pip = self._pip(f"x2paddle=={X2PADDLE}")
            if pip.returncode != 0:
                self.error = f"pip install x2paddle=={X2PADDLE} failed: {last_error(pip.stderr + pip.stdout)}"
                return
            stamp.write_text(X2PADDLE)
        ready = self.onnx_dir / ".ready"
        if not ready.is_file():
            print(f"installing onnx=={X2PADDLE_ONNX} into {self.onnx_dir}", file=sys.stderr, flush=True)
            pip = self._pip("--no-deps", "--target", str(self.onnx_dir), f"onnx=={X2PADDLE_ONNX}")
            if pip.returncode != 0:
                self.onnx_error = f"pip install onnx=={X2PADDLE_ONNX} failed: {last_error(pip.stderr + pip.stdout)}"
                return
            ready.write_text(X2PADDLE_ONNX)

    def onnx_probe(self, pinned: bool) -> str:
        """What X2Paddle's onnx version check and its decoder's import hit with this onnx."""
        found = []
        for code in ("import onnx; onnx.version.version", "import onnx.mapping"):
            out = subprocess.run([str(self.python), "-c", code], capture_output=True, text=True,
                                 env=child_env(self.onnx_dir if pinned else None))
            found.append(f"`{code}` " + ("works" if out.returncode == 0 else f"raises {last_error(out.stderr)}"))
        return "; ".join(found) + "."

    def versions(self, pinned: bool) -> dict[str, str]:
        code = ("import importlib.metadata as m, onnx, paddle, x2paddle; "
                "print(x2paddle.__version__, onnx.__version__, paddle.__version__)")
        env = child_env(self.onnx_dir if pinned else None)
        out = subprocess.run([str(self.python), "-c", code], capture_output=True, text=True, env=env)
        if out.returncode != 0:
            return {"error": last_error(out.stderr)}
        x2p, onnx, paddle = out.stdout.split()[-3:]
        return {"x2paddle": x2p, "onnx": onnx, "paddle": paddle}


# --------------------------------------------------------------------------------------------------------
# work done inside a Paddle process (X2Paddle's venv or this one)


def paddle_forward(model, images) -> dict[int, Any]:
    """Embeddings of ``images`` at batch 1 (image by image) and at batch ``len(images)``: {batch: [N, D]}, or
    {batch: "error message"} where the model fails at that batch size."""
    import numpy as np
    import paddle

    model.eval()
    out: dict[int, Any] = {}
    for batch in (1, len(images)):
        try:
            with paddle.no_grad():
                out[batch] = np.concatenate([model(paddle.to_tensor(images[i:i + batch])).numpy()
                                             for i in range(0, len(images), batch)])
        except Exception as err:  # a fixed batch size in the generated code is the finding
            out[batch] = one_line(err)
    return out


def one_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip() and not ln.strip().startswith("[")]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]


def paddle_train_probe(model, images) -> dict[str, Any]:
    """One train-mode forward/backward; what the first BatchNorm did with its running mean.

    ``mean_update``: how far the running mean moved toward the batch mean (0.1 is torch's momentum 0.1, and
    Paddle's 0.9); ``batch_stats``: whether the train-mode output was normalised with the batch's statistics."""
    import numpy as np
    import paddle
    from paddle import nn

    def is_bn(layer) -> bool:
        return isinstance(layer, (nn.BatchNorm, nn.layer.norm._BatchNormBase))

    norms = [(name, layer) for name, layer in model.named_sublayers() if is_bn(layer)]
    info: dict[str, Any] = {"bn_layers": len(norms), "bn_classes": sorted({type(m).__name__ for _, m in norms}),
                            "bn_momentum": sorted({round(float(m._momentum), 6) for _, m in norms})}
    seen: dict[str, Any] = {}
    try:
        if norms:
            name, first = norms[0]
            info["probed_bn"] = name
            before = first._mean.numpy().copy()

            def hook(layer, inputs, output):
                seen["x"] = inputs[0].numpy().astype(np.float64)
                seen["y"] = output.numpy().astype(np.float64)

            handle = first.register_forward_post_hook(hook)
        model.train()
        loss = (model(paddle.to_tensor(images)) ** 2).mean()
        loss.backward()
        if norms:
            handle.remove()
            axes = (0,) if seen["x"].ndim == 2 else (0, 2, 3)
            batch_mean = seen["x"].mean(axis=axes)
            moved = first._mean.numpy().astype(np.float64) - before
            wanted = batch_mean - before
            ok = np.abs(wanted) > 1e-4
            info["mean_update"] = float(np.median(moved[ok] / wanted[ok]))
            shape = [1, -1] + [1] * (seen["x"].ndim - 2)
            var = seen["x"].var(axis=axes)
            normed = (seen["x"] - batch_mean.reshape(shape)) / np.sqrt(var.reshape(shape) + float(first._epsilon))
            expect = normed * first.weight.numpy().reshape(shape) + first.bias.numpy().reshape(shape)
            info["batch_stats"] = bool(np.abs(expect - seen["y"]).max() <= 1e-3 * np.abs(seen["y"]).max())
        trainable = [(n, p) for n, p in model.named_parameters() if not p.stop_gradient]
        with_grad = [n for n, p in trainable if p.grad is not None and bool(paddle.isfinite(p.grad).all())]
        info.update(train_ok=True, loss=float(loss), trainable=len(trainable), with_grad=len(with_grad))
    except Exception as err:  # whatever the generated code raises is the finding
        info.update(train_ok=False, train_error=one_line(err))
    finally:
        model.eval()
    return info


def x2paddle_child(save_dir: str, inputs: str, out: str) -> None:
    """Under X2Paddle's Python: load its generated model as its own ``main()`` does (through the project's
    safe reader instead of ``paddle.load``), run it on the inputs, probe training."""
    import warnings

    warnings.filterwarnings("ignore")
    import numpy as np
    import paddle

    from converters.safe_pickle import safe_load

    paddle.base.core.set_num_threads(THREADS)
    sys.path.insert(0, save_dir)
    import x2paddle_code

    result: dict[str, Any] = {}
    model = x2paddle_code.ONNXModel()
    params = safe_load(Path(save_dir) / "model.pdparams")
    missing, unexpected = model.set_state_dict(params, use_structured_name=True)
    result.update(state_keys=len(model.state_dict()), missing=list(missing), unexpected=list(unexpected))
    data = np.load(inputs)
    arrays = {}
    for kind in data.files:
        for batch, emb in paddle_forward(model, data[kind]).items():
            if isinstance(emb, str):
                result.setdefault("forward_errors", {})[f"{kind}-{batch}"] = emb
            else:
                arrays[f"{kind}-{batch}"] = emb
    result.update(paddle_train_probe(model, (data["faces"] if "faces" in data.files else data[data.files[0]])[:TRAIN_BATCH]))
    np.savez(out + ".npz", **arrays)
    Path(out).write_text(json.dumps(result))


# --------------------------------------------------------------------------------------------------------
# the bench


def build_onnx(arch: str, folder: Path) -> tuple[Path, Path]:
    """arcface_torch's export of ``arch`` (made once): the file as ``torch.onnx.export`` writes it (input batch
    1) and the file ``torch2onnx.py`` keeps (input dim 0 renamed ``"None"``)."""
    import numpy as np
    import onnx
    import torch

    from converters.demo import demo_state_dict
    from converters.images import normalize
    from converters.models import torch_model

    stem = folder / f"{arch}-seed{SEED}-torch{torch.__version__}"
    traced, renamed = stem.with_name(stem.name + "-batch1.onnx"), stem.with_name(stem.name + ".onnx")
    if traced.is_file() and renamed.is_file():
        return traced, renamed
    print(f"exporting {arch} to {renamed}", file=sys.stderr, flush=True)
    model = torch_model(arch, demo_state_dict(arch, seed=SEED))
    dummy = torch.from_numpy(normalize(np.zeros((1, 112, 112, 3), dtype=np.uint8)))
    tmp = folder / f"{arch}.tmp"
    torch.onnx.export(model, dummy, str(tmp), input_names=["data"], keep_initializers_as_inputs=False,
                      opset_version=11, dynamo=False)
    graph = onnx.load(str(tmp))
    os.replace(tmp, traced)
    graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "None"
    onnx.save(graph, str(tmp))
    os.replace(tmp, renamed)
    return traced, renamed


def emitted_ops(code: str) -> dict[str, list[str]]:
    """What X2Paddle's generated forward does for ONNX's Flatten, Gemm/MatMul and BatchNormalization
    (variable names shortened to ``v``)."""
    import re

    found: dict[str, list[str]] = {"Flatten": [], "Gemm/MatMul": [], "BatchNorm": []}
    for line in code.splitlines():
        if "=" not in line:
            continue
        lhs, rhs = (part.strip() for part in line.split("=", 1))
        short = re.sub(r"x2paddle_\w+", "v", rhs)
        if "Flatten" in lhs and rhs.startswith("paddle."):
            found["Flatten"].append(short)
        elif ("Gemm" in lhs or "MatMul" in lhs) and rhs.startswith("paddle."):
            found["Gemm/MatMul"].append(short)
        elif "paddle.nn.BatchNorm" in rhs and not found["BatchNorm"]:
            found["BatchNorm"].append(rhs)
    return found


def onnxruntime_reference(path: Path, inputs: dict[str, Any]) -> dict[str, dict[int, Any]]:
    """onnxruntime's embeddings of each input at batch 1 and batch N: {kind: {batch: [N, D]}}."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.log_severity_level = 3  # the declared [1, 512] output shape warns at batch 8
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    ref = {}
    for kind, x in inputs.items():
        ref[kind] = {1: np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))]),
                     len(x): session.run(None, {name: x})[0]}
    return ref


def parity(ref: dict[str, dict[int, Any]], out: dict[str, dict[int, Any]]) -> dict[str, Any]:
    """{"<kind> b<batch>": {"rel", "cosine"} or {"error"}} against onnxruntime."""
    from converters.parity import compare_arrays

    result: dict[str, Any] = {}
    for kind, by_batch in ref.items():
        for batch, r in by_batch.items():
            key = f"{kind} b{batch}"
            got = out.get(kind, {}).get(batch)
            if got is None or isinstance(got, str):
                result[key] = {"error": got or "not run"}
            elif got.shape != r.shape:
                result[key] = {"error": f"output shape {list(got.shape)}, expected {list(r.shape)}"}
            else:
                _, rel, cos = compare_arrays(r, got)
                result[key] = {"rel": rel, "cosine": cos}
    return result


def describe_params(arrays: dict[str, Any], unused: set[str] = frozenset()) -> dict[str, Any]:
    """Counts of the entries the model uses and of the others (and how many of those are byte-for-byte
    copies of used ones), and three example names among the used: a 4-D weight, a BN running mean, a PReLU
    slope."""
    import hashlib

    def digest(v) -> tuple:
        return v.shape, hashlib.sha1(v.tobytes()).hexdigest()

    used = {k: v for k, v in arrays.items() if k not in unused}
    used_digests = {digest(v) for v in used.values()}
    others = {k: v for k, v in arrays.items() if k in unused}
    examples = []
    for test in (lambda k, v: v.ndim == 4, lambda k, v: k.endswith("_mean"),
                 lambda k, v: k.endswith("._weight") or "prelu" in k.lower()):
        examples += [k for k, v in used.items() if test(k, v) and k not in examples][:1]
    return {"entries": len(used), "values": int(sum(v.size for v in used.values())),
            "unused": len(others), "unused_values": int(sum(v.size for v in others.values())),
            "unused_copies": sum(digest(v) in used_digests for v in others.values()), "examples": examples}


def load_check(arch: str, arrays: dict[str, Any], framework: str) -> str:
    """Whether ``arrays`` load strictly into the project's InsightFace-named ``framework`` model."""
    from converters.checkpoint import PaddleWeights
    from converters.models import StrictLoadError, paddle_model, torch_model

    expected = expected_keys(arch, framework)
    same = [k for k, shape in expected.items() if k in arrays and tuple(arrays[k].shape) == shape]
    if len(same) != len(expected) or len(arrays) != len(expected):
        clash = [k for k in expected if k in arrays and k not in same]
        text = f"no: {len(same)} of {len(expected)} names match with their shapes"
        if clash:
            k = clash[0]
            text += f"; same name, other tensor: {k} {list(arrays[k].shape)}, expected {list(expected[k])}"
        missing = [k for k in expected if k not in arrays]
        return text + (f"; missing e.g. {missing[0]}" if missing else "")
    try:
        if framework == "paddle":
            paddle_model(arch, PaddleWeights(dict(arrays)))
        else:
            torch_model(arch, arrays)
    except (StrictLoadError, RuntimeError, ValueError) as err:
        return f"no: {str(err).splitlines()[0][:200]}"
    return "yes (strict)"


def expected_keys(arch: str, framework: str) -> dict[str, tuple[int, ...]]:
    """The project's ``framework`` model's state_dict names and shapes."""
    if framework == "paddle":
        import paddle

        from paddle_models import get_model

        with paddle.LazyGuard():
            return {k: tuple(v.shape) for k, v in get_model(arch).state_dict().items()}
    import torch

    from torch_reference import get_model

    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in get_model(arch).state_dict().items()}


def torch_bn_count(arch: str) -> int:
    import torch

    from torch_reference import get_model

    with torch.device("meta"):
        return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in get_model(arch).modules())


def run_x2paddle(env: X2PaddleEnv, pinned: bool, arch: str, model: str, onnx_path: Path, inputs_npz: Path,
                 work: Path, ref: dict) -> dict[str, Any]:
    """Convert with X2Paddle's CLI (measured), then evaluate its generated model in its own Python."""
    from converters.checkpoint import read_paddle_weights

    row: dict[str, Any] = {"tool": f"x2paddle {X2PADDLE}", "arch": arch, "model": model, "onnx": onnx_path.name}
    if env.error or (pinned and env.onnx_error):
        row["result"] = env.error or env.onnx_error
        return row
    extra = env.onnx_dir if pinned else None
    row["environment"] = env.versions(pinned)
    row["tool"] += f" + onnx {row['environment'].get('onnx', '?')}"
    save_dir = work / f"x2paddle-{onnx_path.stem}-{'pinned' if pinned else 'project-onnx'}"
    argv = [str(env.python), "-c", X2PADDLE_CLI, str(onnx_path), str(save_dir)]
    run = measured(argv, work, save_dir.name, child_env(extra))
    row.update(seconds=run["seconds"], peak_rss_mib=run["peak_rss_mib"], exit_code=run["returncode"])
    attempts = [ln for ln in run["stderr"].splitlines() if ln.startswith("TELEMETRY_ATTEMPTS=")]
    row["telemetry_attempts"] = int(attempts[-1].split("=")[1]) if attempts else None
    produced = (save_dir / "model.pdparams").is_file() and (save_dir / "x2paddle_code.py").is_file()
    if not produced:  # X2Paddle 1.6.0 exits 0 also when it converted nothing
        row["result"] = (f"no output (exit {run['returncode']}): "
                         f"{last_error(run['stdout'] + chr(10) + run['stderr'])}")
        if "onnx is not installed" in row["result"]:
            row["result"] += f" Cause: {env.onnx_probe(pinned)}"
        return row
    row["emitted"] = emitted_ops((save_dir / "x2paddle_code.py").read_text())
    arrays = read_paddle_weights(save_dir / "model.pdparams").arrays
    row["loads_paddle"] = load_check(arch, arrays, "paddle")
    row["loads_torch"] = load_check(arch, arrays, "torch")
    out = str(work / f"{save_dir.name}.eval.json")
    started = time.perf_counter()
    child = subprocess.run([str(env.python), __file__, "--x2paddle-child", str(save_dir), str(inputs_npz), out],
                           capture_output=True, text=True, env=child_env(extra))
    row["eval_seconds"] = time.perf_counter() - started
    if child.returncode != 0:
        row["result"] = f"converted, but its model does not run: {last_error(child.stderr)}"
        return row
    import numpy as np

    info = json.loads(Path(out).read_text())
    row["params"] = describe_params(arrays, unused=set(info["unexpected"]))
    embeddings = np.load(out + ".npz")
    got: dict[str, Any] = {}
    for key, value in [*info.get("forward_errors", {}).items(), *((k, embeddings[k]) for k in embeddings.files)]:
        kind, batch = key.rsplit("-", 1)
        got.setdefault(kind, {})[int(batch)] = value
    row["parity"] = parity(ref, got)
    row["set_state_dict"] = {"model_keys": info["state_keys"], "missing": len(info["missing"]),
                             "unexpected": len(info["unexpected"])}
    row["train"] = {k: v for k, v in info.items() if k not in ("missing", "unexpected", "state_keys", "forward_errors")}
    row["result"] = "converted"
    return row


def run_project(arch: str, model: str, onnx_path: Path, faces: Path | None, work: Path, ref: dict, inputs: dict,
                verify: bool) -> list[dict[str, Any]]:
    """Convert with converters/onnx2paddle.py (measured) with ``--no-verify`` and, if ``verify``, again with its
    verification (on seeded images and ``faces``); load the outputs into the project's models and run them."""
    cli = ROOT / "converters" / "onnx2paddle.py"
    rows: list[dict[str, Any]] = []
    for verified in (False, True) if verify else (False,):
        tool = "arcface-bridge onnx2paddle" + ("" if verified else " --no-verify")
        row: dict[str, Any] = {"tool": tool, "arch": arch, "model": model, "onnx": onnx_path.name}
        rows.append(row)
        if not cli.is_file():
            row["result"] = f"{cli.relative_to(ROOT)} does not exist yet"
            return rows
        stem = f"{onnx_path.stem}-{'verified' if verified else 'no-verify'}"
        out, pth, report = (work / f"{stem}{suffix}" for suffix in (".pdparams", ".pth", "-report.json"))
        argv = [sys.executable, str(cli), "--src", str(onnx_path), "--out", str(out), "--torch-out", str(pth),
                "--report", str(report)]
        argv += (["--input", str(faces)] if faces else []) if verified else ["--no-verify"]
        run = measured(argv, work, f"project-{stem}", child_env())
        row.update(seconds=run["seconds"], peak_rss_mib=run["peak_rss_mib"], exit_code=run["returncode"],
                   command=" ".join(["python converters/onnx2paddle.py", *argv[2:]]).replace(str(work), "OUT")
                   .replace(str(ROOT) + os.sep, "").replace(str(ROOT.parent) + os.sep, "../"))
        if run["returncode"] != 0 or not out.is_file():
            row["result"] = f"exit {run['returncode']}: {last_error(run['stderr'] + run['stdout'])}"
            continue
        row["result"] = "converted" + (", verified" if verified else " (not verified)")
        if verify and not verified:  # time and memory only; the verified run's file is checked below
            continue
        if verify and (work / f"{onnx_path.stem}-no-verify.pdparams").is_file():
            from converters.checkpoint import sha256_file

            same = sha256_file(out) == sha256_file(work / f"{onnx_path.stem}-no-verify.pdparams")
            rows[0]["result"] += "; the same bytes as the verified run" if same else "; NOT the verified run's bytes"
        project_checks(row, arch, out, pth, report, ref, inputs)
    return rows


def project_checks(row: dict[str, Any], arch: str, out: Path, pth: Path, report: Path, ref: dict,
                   inputs: dict) -> None:
    """Load the project's outputs into its Paddle and PyTorch models; parity against onnxruntime; training."""
    if report.is_file():
        data = json.loads(report.read_text())
        row["report"] = {"arch": data.get("arch"), "family": data.get("family"),
                         "folded_batchnorm": len(data.get("folded_batchnorm") or []),
                         "stages": len(data.get("stages") or []),
                         "input_normalisation": data.get("input_normalisation"),
                         "input_batch": (data.get("source") or {}).get("batch"),
                         "verdicts": [r.get("verdict") for r in data.get("parity") or []]}
    from converters.models import paddle_model
    from converters.weights import read_weights

    weights = read_weights(out)
    arrays = weights.paddle_state().arrays
    row["params"] = describe_params(arrays)
    row["loads_paddle"] = load_check(arch, arrays, "paddle")
    row["loads_torch"] = load_check(arch, read_weights(pth).torch_state(), "torch") if pth.is_file() else "no .pth written"
    started = time.perf_counter()
    net = paddle_model(weights.name, weights.paddle_state(), weights.num_features)
    got = {kind: paddle_forward(net, x) for kind, x in inputs.items()}
    row["parity"] = parity(ref, got)
    row["train"] = paddle_train_probe(net, inputs.get("faces", next(iter(inputs.values())))[:TRAIN_BATCH])
    row["eval_seconds"] = time.perf_counter() - started


# --------------------------------------------------------------------------------------------------------
# the table


def short_error(text: str) -> str:
    """A table-sized version of an error (the JSON keeps the whole message)."""
    import re

    reshape = re.search(r"ReshapeOp.*X's shape = (\[[^]]*\]).*'shape' is (\[[^]]*\])", text)
    if reshape:
        return f"Reshape of a {reshape.group(1)} tensor to {reshape.group(2)}"
    return text[:110]


def fmt_parity(cell: dict[str, Any] | None) -> str:
    if not cell:
        return ""
    if "error" in cell:
        return "fails: " + short_error(cell["error"])
    return f"{cell['rel']:.1e} / {cell['cosine']:.7f}"


def fmt_train(row: dict[str, Any], arch_bn: int) -> str:
    t = row.get("train")
    if not t:
        return ""
    if not t.get("train_ok"):
        return "no: " + short_error(t.get("train_error", "?"))
    text = f"fwd+bwd ok, {t['with_grad']}/{t['trainable']} params get gradients; {t['bn_layers']} of {arch_bn} BN"
    folded = (row.get("report") or {}).get("folded_batchnorm")
    if folded:
        text += f" ({folded} rebuilt from folded convolutions: weight 1, mean 0, var 1 - eps)"
    elif t["bn_layers"] < arch_bn:
        text += f" ({arch_bn - t['bn_layers']} folded into convolution biases: gone)"
    if t["bn_layers"]:
        text += (f"; {'/'.join(t['bn_classes'])}, momentum {'/'.join(map(str, t['bn_momentum']))}: "
                 f"running mean moves {t['mean_update']:.3f} toward the batch mean"
                 f"{'' if t['batch_stats'] else ', NOT normalised with batch statistics'}")
    return text


def table_rows(rows: list[dict[str, Any]], bn_counts: dict[str, int], kinds: list[str]) -> list[list[str]]:
    body = []
    for r in rows:
        p = r.get("params")
        params = ""
        if p:
            params = f"{p['entries']} ({p['values'] / 1e6:.2f} M values)"
            if p["unused"]:
                params += (f" + {p['unused']} unused ({p['unused_values'] / 1e6:.2f} M values; "
                           f"{p['unused_copies']} are copies of used ones)")
        par = r.get("parity", {})
        body.append([r["tool"], r["model"], f"{r['seconds']:.1f}" if "seconds" in r else "",
                     f"{r['peak_rss_mib']:.0f}" if "peak_rss_mib" in r else "",
                     *[fmt_parity(par.get(f"{k} b{b}")) for k in kinds for b in (1, BATCH)],
                     params, ", ".join(p["examples"]) if p else "", r.get("loads_paddle", ""), r.get("loads_torch", ""),
                     fmt_train(r, bn_counts[r["arch"]]), r.get("result", "")])
    return body


def headers(kinds: list[str]) -> list[str]:
    return ["tool", "model", "convert s", "peak RSS MiB",
            *[f"{k} b{b}: rel / cos" for k in kinds for b in (1, BATCH)],
            "parameters (entries)", "example names", "loads into project Paddle model",
            "loads into PyTorch model", "trains (one train-mode step)", "result"]


def main() -> None:
    # internal modes, before argparse sees another program's arguments
    if sys.argv[1:2] == ["--measure"]:  # --measure OUT -- ARGV...
        measure_main(sys.argv[2], sys.argv[4:])
        return
    if sys.argv[1:2] == ["--x2paddle-child"]:  # --x2paddle-child SAVE_DIR INPUTS.npz OUT.json
        x2paddle_child(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="r50,mbf")
    parser.add_argument("--faces", default=str(ROOT.parent / "shared" / "data" / "small_lfw.bin"),
                        help="verification pack for the real-face inputs ('' to skip them)")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "bench" / ".cache",
                        help="X2Paddle's virtualenv and the ONNX exports")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "onnx_import",
                        help="writes OUT.md and OUT.json")
    parser.add_argument("--batch1-archs", default="mbf",
                        help="archs also converted from the export before the rename (input batch 1)")
    parser.add_argument("--project-no-verify", action="store_true",
                        help="run the project's importer with --no-verify only (default: also with its verification "
                             "on seeded images and the faces)")
    args = parser.parse_args()

    from converters.runtime import quiet_paddle_import, set_threads

    quiet_paddle_import()
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    set_threads(THREADS)
    import numpy as np
    import onnx
    import onnxruntime
    import paddle
    import torch
    from tabulate import tabulate

    from converters.inputs import faces_from_bin, seeded_images

    started = time.perf_counter()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    x2p = X2PaddleEnv(args.cache_dir)
    x2p.install()
    pinned_versions = x2p.versions(pinned=True) if not (x2p.error or x2p.onnx_error) else {}
    versions = {"paddle": paddle.__version__, "x2paddle": pinned_versions.get("x2paddle", x2p.error or "?"),
                "onnx": onnx.__version__, "onnx (X2Paddle's pinned)": pinned_versions.get("onnx", x2p.onnx_error or "?"),
                "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "numpy": np.__version__}
    header = "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items())
    print(header, flush=True)

    inputs = {"seeded": seeded_images(BATCH, seed=IMAGE_SEED)}
    if args.faces:
        inputs["faces"] = faces_from_bin(args.faces, BATCH)
    kinds = list(inputs)
    rows: list[dict[str, Any]] = []
    bn_counts = {}
    with tempfile.TemporaryDirectory(prefix="onnx-import-") as tmp:
        work = Path(tmp)
        inputs_npz = work / "inputs.npz"
        np.savez(inputs_npz, **inputs)
        for arch in args.archs.split(","):
            bn_counts[arch] = torch_bn_count(arch)
            traced, renamed = build_onnx(arch, args.cache_dir)
            ref = onnxruntime_reference(renamed, inputs)  # the batch-1 file takes batch 1 only
            cases = [(arch, renamed, (False, True))]
            if arch in args.batch1_archs.split(","):
                cases.append((f"{arch} (input batch 1)", traced, (True,)))
            for model, path, pinnings in cases:
                for pinned in pinnings:
                    rows.append(run_x2paddle(x2p, pinned, arch, model, path, inputs_npz, work, ref))
                    print(f"{rows[-1]['tool']} {model}: {rows[-1]['result']}", file=sys.stderr, flush=True)
                for row in run_project(arch, model, path, Path(args.faces) if args.faces else None, work, ref,
                                       inputs, verify=not args.project_no_verify):
                    rows.append(row)
                    print(f"{row['tool']} {model}: {row['result']}", file=sys.stderr, flush=True)

    table = tabulate(table_rows(rows, bn_counts, kinds), headers=headers(kinds), tablefmt="github")
    notes = notes_for(rows, args)
    total = time.perf_counter() - started
    print(table)
    print("\n".join(notes))
    print(f"bench time {total:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(
        f"`python bench/onnx_import.py --archs {args.archs}` ({total:.0f} s)\n\n{header}\n\n{table}\n\n"
        + "\n".join(f"- {n}" for n in notes) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(
        {"versions": versions, "batch": BATCH, "inputs": {k: list(v.shape) for k, v in inputs.items()},
         "faces": args.faces, "seconds": total, "rows": rows}, indent=1, default=float) + "\n")


def notes_for(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """What the table does not show: what X2Paddle emitted, telemetry, the commands."""
    notes = [f"parity: against onnxruntime on the original graph at the same batch size; b1 = {BATCH} images one "
             f"at a time, b{BATCH} = one batch; rel = max |diff| / max |ref| over the batch, cos = lowest per-image "
             "cosine; seeded = uniform [-1, 1] images (seed 1), faces = the first 8 images of "
             f"{Path(args.faces).name if args.faces else '-'}"]
    for r in rows:
        if r.get("telemetry_attempts") is not None:
            notes.append(f"{r['tool']} {r['model']}: telemetry requests attempted: {r['telemetry_attempts']}")
        if r.get("emitted"):
            e = r["emitted"]
            notes.append(f"{r['tool']} {r['model']} emitted: " + "; ".join(
                f"{op} -> " + " + ".join(f"`{c}`" for c in calls) for op, calls in e.items()))
        if r.get("set_state_dict"):
            s = r["set_state_dict"]
            notes.append(f"{r['tool']} {r['model']}: its own model.pdparams into its ONNXModel: "
                         f"{s['missing']} missing, {s['unexpected']} unexpected of {s['model_keys']} keys")
        if r.get("command"):
            notes.append(f"{r['tool']} {r['model']}: `{r['command']}`")
        if r.get("report"):
            notes.append(f"{r['tool']} {r['model']} report: " + json.dumps(r["report"], default=str)[:400])
    return notes


if __name__ == "__main__":
    main()
