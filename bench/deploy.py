"""Fastest CPU inference path for face embeddings: every deployment backend side by side in one run.

    python bench/deploy.py [--archs r18,r50,r100,mbf] [--batches 1,8,32] [--threads 2] [--repeats 5]
                           [--precisions fp32,bf16,int8] [--backends NAME,...] [--no-compile]
                           [--compile-archs r18,r50,mbf] [--out bench/results/deploy.md]
                           [--png bench/results/deploy.png] [--work DIR]

Backends (``fp32`` unless named otherwise):

- ``paddle``: Paddle Inference with oneDNN (``converters.export.PaddlePredictor``), plus variants built
  from ``paddle.inference.Config`` here: ``+memopt`` (``enable_memory_optim``), ``-noir``
  (``switch_ir_optim(False)``), ``@1t`` (one thread), ``openvino`` (``enable_openvino_engine``);
- ``ort-basic`` / ``ort-extended`` / ``ort-all``: onnxruntime at each graph optimisation level on the
  ONNX export of the PyTorch reference (``eval.export.export_onnx``);
- ``torch``: PyTorch eager; ``torch-bf16``: eager under ``torch.autocast("cpu", dtype=torch.bfloat16)``
  (always run: the second baseline); ``torch-compile``: ``torch.compile`` (compile time reported);
- ``--precisions bf16`` (default on): ``paddle-bf16``, ``PaddlePredictor(precision="bf16")`` on the graph
  exported for bf16 (``save_paddle_inference(..., precision="bf16")``: PReLU as multiply, add and relu);
  ``paddle-bf16-prelu-graph``, ``enable_mkldnn_bfloat16`` on the ordinary graph, which shows Paddle's bf16
  PReLU fault (non-finite embeddings: listed as unavailable);
- ``--precisions int8`` (default on): ``paddle-int8``, ``PaddlePredictor(precision="int8")`` (oneDNN int8) on
  ``converters.quantize.quantize_paddle_int8``'s model; ``ort-int8``, onnxruntime on ``quantize_onnx_int8``'s
  file; both calibrated on the 20 faces the accuracy is measured on.

Every backend runs in its own fresh worker process (honest peak RSS: the worker's ``VmHWM``, which includes
the interpreter and the framework; ``model MB`` is ``VmHWM`` minus the RSS before the model was built).
All workers of one architecture are started together and idle while another one runs; the timed rounds
alternate between them (round-robin, rotating order) so that a load burst from other processes on the
shared machine spreads over all backends. Each worker warms up every batch size first (oneDNN
primitives, torch.compile) and each timed repeat is at least ~0.25 s of calls; the table has the median
images/s. Accuracy: min cosine of the 20 real faces of small_lfw.bin against PyTorch eager fp32.
Weights are the seeded demo models (random, calibrated; not face models).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the project from its root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[1])

ROOT = Path(__file__).resolve().parents[1]
FACES = Path("/work/shared/data/small_lfw.bin")
N_FACES = 20
REPLY = "@@DEPLOY@@ "
MIN_REPEAT_SECONDS = 0.25


# --------------------------------------------------------------------------------------------- worker side
def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _paddle_config(prefix: str, threads: int, memopt: bool = False, ir: bool = True):
    import paddle.inference as pi

    config = pi.Config(prefix + ".json", prefix + ".pdiparams")
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(threads)
    config.enable_mkldnn()
    config.switch_ir_optim(ir)
    config.enable_memory_optim(memopt)
    config.disable_glog_info()
    return config


def _predictor_runner(config):
    import numpy as np
    import paddle.inference as pi

    predictor = pi.create_predictor(config)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    out_name = predictor.get_output_names()[0]

    def run(x):
        handle.reshape(list(x.shape))
        handle.copy_from_cpu(np.ascontiguousarray(x, dtype=np.float32))
        predictor.run()
        return predictor.get_output_handle(out_name).copy_to_cpu()

    return run


def build_runner(spec: dict):
    """A function ``[N, 3, 112, 112]`` float32 -> ``[N, D]`` for the backend ``spec`` describes."""
    import numpy as np

    kind, threads, files = spec["kind"], spec["threads"], spec["files"]
    if kind.startswith("paddle"):
        prefix = files[spec.get("file_key", "paddle")]
        if kind == "paddle":
            from converters.export import PaddlePredictor

            return PaddlePredictor(prefix, threads)
        if kind == "paddle-variant":
            return _predictor_runner(_paddle_config(prefix, threads, spec["memopt"], spec["ir"]))
        if kind == "paddle-openvino":
            import paddle.inference as pi

            config = pi.Config(prefix + ".json", prefix + ".pdiparams")
            config.disable_gpu()
            config.set_cpu_math_library_num_threads(threads)
            config.enable_openvino_engine(pi.PrecisionType.Float32)
            config.disable_glog_info()
            if not config.openvino_engine_enabled():
                raise RuntimeError("enable_openvino_engine did not take effect (wheel built without OpenVINO)")
            return _predictor_runner(config)
        if kind == "paddle-mkldnn-bf16":
            config = _paddle_config(prefix, threads)
            config.enable_mkldnn_bfloat16()
            return _predictor_runner(config)
        if kind == "paddle-precision":  # the project's reduced-precision predictor, if it exists
            from converters.export import PaddlePredictor

            return PaddlePredictor(prefix, threads, precision=spec["precision"])
    if kind.startswith("ort"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, spec["level"])
        session = ort.InferenceSession(files[spec.get("file_key", "onnx")], options,
                                       providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]
    if kind.startswith("torch"):
        import torch

        from converters.models import torch_model

        torch.set_num_threads(threads)
        with np.load(files["npz"], allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        model = torch_model(spec["arch"], arrays, spec["num_features"], share=True)
        if kind == "torch-compile":
            model = torch.compile(model, dynamic=False)
        bf16 = kind == "torch-bf16"

        def run(x):
            with torch.inference_mode():
                if bf16:
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        return model(torch.from_numpy(x)).float().numpy()
                return model(torch.from_numpy(x)).numpy()

        return run
    raise ValueError(f"unknown backend kind {kind}")


def worker(spec_json: str) -> int:
    """Build one backend, warm it up at every batch, embed the faces, then time on request (stdin)."""
    import numpy as np

    from converters.inputs import faces_from_bin, seeded_images

    spec = json.loads(spec_json)

    def reply(obj):
        sys.stdout.write(REPLY + json.dumps(obj) + "\n")
        sys.stdout.flush()

    try:
        before = _rss_kb("VmRSS")
        t0 = time.perf_counter()
        run = build_runner(spec)
        build = time.perf_counter() - t0
        inputs = {b: seeded_images(b, seed=1) for b in spec["batches"]}
        warm = {}
        for b, x in inputs.items():
            t0 = time.perf_counter()
            out = run(x)  # first call: graph optimisation, oneDNN primitives, compilation
            warm[b] = time.perf_counter() - t0
            second = warm[b]
            if warm[b] < 2.0:  # a slow first call is a good enough estimate of one call
                t0 = time.perf_counter()
                out = run(x)
                second = time.perf_counter() - t0
            if not np.isfinite(out).all():
                raise RuntimeError(f"non-finite embeddings at batch {b}")
            warm[b] = (warm[b], second)
        faces = faces_from_bin(FACES, N_FACES)
        emb = np.asarray(run(faces), dtype=np.float32)
        np.save(spec["emb_path"], emb)
        reply({"ok": True, "build": build, "warm": warm, "rss_before_mb": before / 1024,
               "peak_mb": _rss_kb("VmHWM") / 1024})
    except Exception as err:  # reported as an unavailable row, the other backends go on
        reply({"ok": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:160]})
        return 0
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("quit"):
            break
        x, calls = inputs[cmd["batch"]], cmd["calls"]
        t0 = time.perf_counter()
        for _ in range(calls):
            run(x)
        reply({"seconds": time.perf_counter() - t0, "peak_mb": _rss_kb("VmHWM") / 1024})
    return 0


# --------------------------------------------------------------------------------------------- parent side
class Worker:
    def __init__(self, spec: dict):
        self.spec = spec
        env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]),
                   GLOG_minloglevel="3", PYTHONWARNINGS="ignore")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=env, cwd=str(ROOT))
        self.info = None

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY):])
        return {"ok": False, "error": f"worker exited ({self.proc.wait()})"}

    def time(self, batch: int, calls: int) -> dict:
        self.proc.stdin.write(json.dumps({"batch": batch, "calls": calls}) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
                self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def prepare(arch: str, work: Path, precisions: list[str]) -> dict:
    """Demo weights, the Paddle Inference and ONNX exports (and the bf16 graph and both int8 models when
    asked), and the torch arrays (``.npz``) for ``arch``."""
    import numpy as np

    from bench.eval import demo_weights
    from eval.export import cached_int8, cached_onnx, export_paddle_inference
    from eval.sources import load_weights

    weights = demo_weights(arch, work)
    source = load_weights(weights, arch)
    graph = (".json", ".pdiparams")  # a Paddle Inference model's files; the int8 one is a legacy program
    paddle_models = {"paddle": (export_paddle_inference(source, work / "cache"), graph)}
    if "bf16" in precisions:
        paddle_models["paddle-bf16"] = (export_paddle_inference(source, work / "cache", "bf16"), graph)
    onnx_files = {"onnx": cached_onnx(source, work / "cache")}
    if "int8" in precisions:  # both int8 models calibrated on the faces the accuracy is measured on
        onnx_files["onnx-int8"] = cached_int8(source, "onnx", FACES, work / "cache")
        paddle_models["paddle-int8"] = (cached_int8(source, "paddle-inference", FACES, work / "cache"),
                                        (".pdmodel", ".pdiparams"))
    npz = work / f"{arch}-torch.npz"
    if not npz.exists():
        np.savez(npz, **{k: np.asarray(v) for k, v in source.torch_state().items()})
    files = {**{k: str(prefix) for k, (prefix, _) in paddle_models.items()},
             **{k: str(v) for k, v in onnx_files.items()}, "npz": str(npz), "weights": str(weights)}
    sizes = {**{k: sum(Path(str(prefix) + s).stat().st_size for s in suffixes)
                for k, (prefix, suffixes) in paddle_models.items()},
             **{k: v.stat().st_size for k, v in onnx_files.items()}, "torch": weights.stat().st_size}
    nf = source.num_features
    source.release()
    return {"files": files, "sizes": sizes, "num_features": nf}


def backend_specs(args, arch: str) -> list[dict]:
    """(name, precision, kind, options) of every backend to run for ``arch``."""
    t = args.threads
    rows = [("torch", "fp32", "torch", {}), ("torch-bf16", "bf16", "torch-bf16", {})]
    if "fp32" in args.precisions:
        rows += [(f"paddle-onednn@{t}t", "fp32", "paddle", {}),
                 (f"paddle-onednn+memopt@{t}t", "fp32", "paddle-variant", {"memopt": True, "ir": True}),
                 (f"paddle-onednn-noir@{t}t", "fp32", "paddle-variant", {"memopt": False, "ir": False}),
                 ("paddle-onednn@1t", "fp32", "paddle-variant", {"memopt": False, "ir": True, "threads": 1}),
                 (f"paddle-openvino@{t}t", "fp32", "paddle-openvino", {}),
                 (f"ort-basic@{t}t", "fp32", "ort", {"level": "ORT_ENABLE_BASIC"}),
                 (f"ort-extended@{t}t", "fp32", "ort", {"level": "ORT_ENABLE_EXTENDED"}),
                 (f"ort-all@{t}t", "fp32", "ort", {"level": "ORT_ENABLE_ALL"})]
        if not args.no_compile and arch in args.compile_archs:
            rows.append(("torch-compile", "fp32", "torch-compile", {}))
    if "bf16" in args.precisions:
        # the graph exported for bf16 (PReLU as multiply, add and relu) with the project's predictor, and
        # the plain graph with Paddle's switch alone, which shows what the export works around
        rows.append((f"paddle-bf16@{t}t", "bf16", "paddle-precision", {"precision": "bf16", "file_key": "paddle-bf16"}))
        rows.append((f"paddle-bf16-prelu-graph@{t}t", "bf16", "paddle-mkldnn-bf16", {}))
    if "int8" in args.precisions:
        rows.append((f"paddle-int8@{t}t", "int8", "paddle-precision", {"precision": "int8", "file_key": "paddle-int8"}))
        rows.append((f"ort-int8@{t}t", "int8", "ort", {"level": "ORT_ENABLE_ALL", "file_key": "onnx-int8"}))
    if args.backends:
        rows = [r for r in rows if r[0] in args.backends or r[0] in ("torch", "torch-bf16")]
    return rows


def load_report() -> str:
    load = os.getloadavg()
    top = subprocess.run(["ps", "-eo", "pcpu,rss,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout
    busy = [ln.split() for ln in top.splitlines()[1:6]]
    busy = ", ".join(f"{p[2]} {p[0]}%" for p in busy if len(p) >= 3 and float(p[0]) >= 5)
    return f"load average {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}; busy: {busy or 'none'}"


def bench_arch(args, arch: str, work: Path, log) -> list[dict]:
    import numpy as np

    t0 = time.perf_counter()
    prep = prepare(arch, work, args.precisions)
    log(f"{arch}: exports ready in {time.perf_counter() - t0:.0f} s; {load_report()}")
    results, workers = [], []
    for name, precision, kind, opts in backend_specs(args, arch):
        row = {"arch": arch, "backend": name, "precision": precision}
        if kind is None:
            results.append({**row, "error": "not available in this checkout"})
            continue
        spec = {"kind": kind, "arch": arch, "num_features": prep["num_features"], "files": prep["files"],
                "batches": args.batches, "threads": opts.get("threads", args.threads),
                "emb_path": str(work / f"emb-{arch}-{name}.npy"), **opts}
        workers.append((row, spec))
    # start-up one at a time (imports, builds and compiles must not contend with each other); started
    # workers wait on stdin, idle
    live = []
    for row, spec in workers:
        w = Worker(spec)
        info = w.read()
        if not info.get("ok"):
            results.append({**row, "error": info.get("error", "?")})
            w.close()
            log(f"  {arch} {row['backend']}: unavailable: {info.get('error')}")
            continue
        w.info = info
        live.append((row, w))
        log(f"  {arch} {row['backend']}: built in {info['build']:.1f} s, first call "
            + ", ".join(f"b{b} {v[0]:.2f}s" for b, v in info["warm"].items()) + f", peak {info['peak_mb']:.0f} MB")
    ref = np.load(work / f"emb-{arch}-torch.npy")
    ref_n = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    repeats = min(args.repeats, 3) if arch == "r100" else args.repeats
    times = {(row["backend"], b): [] for row, _ in live for b in args.batches}
    for r in range(repeats):
        order = live[r % len(live):] + live[:r % len(live)] if live else []
        for b in args.batches:
            for row, w in order:
                second = w.info["warm"][str(b)][1]
                calls = max(1, math.ceil(MIN_REPEAT_SECONDS / max(second, 1e-4)))
                out = w.time(b, calls)
                times[(row["backend"], b)].append(b * calls / out["seconds"])
                w.info["peak_mb"] = max(w.info["peak_mb"], out["peak_mb"])
    for row, w in live:
        w.close()
        emb = np.load(w.spec["emb_path"])
        cos = np.sum(ref_n * emb / np.linalg.norm(emb, axis=1, keepdims=True), axis=1)
        size_key = w.spec.get("file_key") or ("paddle" if w.spec["kind"].startswith("paddle")
                                              else "onnx" if w.spec["kind"] == "ort" else "torch")
        for b in args.batches:
            ips = times[(row["backend"], b)]
            results.append({**row, "batch": b, "ips": float(np.median(ips)), "spread": (min(ips), max(ips)),
                            "peak_mb": w.info["peak_mb"], "model_mb": w.info["peak_mb"] - w.info["rss_before_mb"],
                            "file_mb": prep["sizes"][size_key] / 2**20, "min_cos": float(cos.min()),
                            "build": w.info["build"], "first": w.info["warm"][str(b)][0]})
    log(f"{arch}: done in {time.perf_counter() - t0:.0f} s; {load_report()}")
    return results


def table(results: list[dict]) -> str:
    from tabulate import tabulate

    base = {(r["arch"], r["batch"], r["backend"]): r["ips"] for r in results if "ips" in r}
    rows = []
    for r in results:
        if "ips" not in r:
            rows.append([r["arch"], r["backend"], r["precision"], "-", "unavailable", "", "", "", "", "", "",
                         r["error"]])
            continue
        eager = base.get((r["arch"], r["batch"], "torch"))
        bf16 = base.get((r["arch"], r["batch"], "torch-bf16"))
        note = f"compile+first call {r['first']:.0f} s" if r["backend"] == "torch-compile" else ""
        rows.append([r["arch"], r["backend"], r["precision"], r["batch"], f"{r['ips']:.1f}",
                     f"{r['spread'][0]:.0f}-{r['spread'][1]:.0f}",
                     f"{r['ips'] / eager:.2f}" if eager else "", f"{r['ips'] / bf16:.2f}" if bf16 else "",
                     f"{r['peak_mb']:.0f}", f"{r['model_mb']:.0f}", f"{r['file_mb']:.1f}",
                     f"{r['min_cos']:.7f}" + (f"; {note}" if note else "")])
    head = ["arch", "backend", "prec", "batch", "img/s (median)", "range", "x torch fp32", "x torch bf16",
            "peak RSS MB", "model RSS MB", "file MB", "min cos (20 faces)"]
    return tabulate(rows, head, tablefmt="github")


def best_paths(results: list[dict], batch: int) -> str:
    """Per architecture at ``batch``: the fastest fp32 path other than PyTorch, and the fastest reduced one
    that keeps the export guard's default min cosine (0.995) to PyTorch fp32, with their speed against
    PyTorch eager fp32 and bf16 autocast."""
    from tabulate import tabulate

    from converters.export import DEFAULT_MIN_COSINE

    rows = []
    for arch in dict.fromkeys(r["arch"] for r in results if "ips" in r):
        at = [r for r in results if r["arch"] == arch and r.get("batch") == batch and "ips" in r]
        base = {r["backend"]: r["ips"] for r in at}
        eager, autocast = base.get("torch"), base.get("torch-bf16")
        for label, pick in (("fp32", lambda r: r["precision"] == "fp32" and not r["backend"].startswith("torch")),
                            (f"reduced, min cos >= {DEFAULT_MIN_COSINE}",
                             lambda r: r["precision"] != "fp32" and not r["backend"].startswith("torch")
                             and r["min_cos"] >= DEFAULT_MIN_COSINE)):
            chosen = max((r for r in at if pick(r)), key=lambda r: r["ips"], default=None)
            if chosen is None:
                continue
            rows.append([arch, label, chosen["backend"], chosen["precision"], f"{chosen['ips']:.1f}",
                         f"{chosen['ips'] / eager:.2f}" if eager else "", f"{chosen['ips'] / autocast:.2f}" if autocast else "",
                         f"{chosen['min_cos']:.6f}"])
    return tabulate(rows, ["arch", "best", "backend", "prec", f"img/s (batch {batch})", "x torch fp32",
                           "x torch bf16", "min cos"], tablefmt="github")


def chart(results: list[dict], path: Path, batch: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = list(dict.fromkeys(r["arch"] for r in results if "ips" in r))
    if not archs:
        return
    fig, axes = plt.subplots(1, len(archs), figsize=(5 * len(archs), 4.5), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        rows = [r for r in results if r.get("batch") == batch and r["arch"] == arch]
        for r in rows:
            loss = max(1.0 - r["min_cos"], 1e-8)
            marker = {"fp32": "o", "bf16": "s", "int8": "^"}[r["precision"]]
            ax.scatter(loss, r["ips"], marker=marker)
            ax.annotate(r["backend"], (loss, r["ips"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("1 - min cosine to torch fp32 (20 faces; floor 1e-8)")
        ax.set_ylabel(f"images/s, batch {batch}")
        ax.set_title(arch)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("CPU embedding throughput vs accuracy loss (o fp32, s bf16, ^ int8)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker(argv[1])
    parser = argparse.ArgumentParser(prog="deploy.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="r18,r50,r100,mbf")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (r100: at most 3)")
    parser.add_argument("--precisions", default="fp32,bf16,int8", help="comma list of fp32, bf16, int8")
    parser.add_argument("--backends", default="", help="only these backend names (torch baselines always run)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--compile-archs", default="r18,r50,mbf", help="archs to torch.compile (slow)")
    parser.add_argument("--out", type=Path, default=None, help="markdown table")
    parser.add_argument("--png", type=Path, default=None, help="throughput vs accuracy chart")
    parser.add_argument("--work", type=Path, default=Path("/tmp") / f"deploy-bench-{os.getuid()}")
    args = parser.parse_args(argv)
    args.archs = [a for a in args.archs.split(",") if a]
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.precisions = [p for p in args.precisions.split(",") if p]
    args.backends = [b for b in args.backends.split(",") if b]
    args.compile_archs = args.compile_archs.split(",")
    bad = set(args.precisions) - {"fp32", "bf16", "int8"}
    if bad:
        parser.error(f"unknown precision {sorted(bad)}")
    args.work.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    start = time.perf_counter()
    loads = [f"start: {load_report()}"]
    log(loads[0])
    results = []
    for i, arch in enumerate(args.archs):
        results += bench_arch(args, arch, args.work, log)
        if i + 1 < len(args.archs):
            write(args, results, loads + [f"after {arch}: {load_report()} (partial)"], start)
    loads.append(f"end: {load_report()}")
    write(args, results, loads, start, echo=True)
    return 0


def write(args, results: list[dict], loads: list[str], start: float, echo: bool = False) -> None:
    text = table(results)
    header = (f"{len(args.archs)} archs, batches {args.batches}, {args.threads} threads, "
              f"{time.perf_counter() - start:.0f} s total. Peak RSS = VmHWM of a fresh worker process per "
              f"backend (interpreter + framework + model); model RSS = VmHWM minus RSS before the model was "
              f"built. Machine load: " + "; ".join(loads))
    best = best_paths(results, max(args.batches))
    if echo:
        print(text)
        print("\n" + best)
        print("\n" + header)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"# CPU deployment benchmark (`bench/deploy.py`)\n\n{header}\n\n"
                            f"## Best paths at batch {max(args.batches)}\n\n{best}\n\n## Every path\n\n{text}\n")
    if args.png:
        chart(results, args.png, max(args.batches))


if __name__ == "__main__":
    sys.exit(main())
