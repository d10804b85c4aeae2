"""Evaluate a face model on InsightFace's verification packs with InsightFace's own protocol.

    python eval/verify.py --weights PATH --data DIR [--arch r50] [--targets lfw,cfp_fp,agedb_30,calfw,cplfw]
                          [--backend paddle-inference|paddle|torch|onnx] [--compare BACKEND]
                          [--precision fp32|bf16|int8] [--calibration PACK.bin|FOLDER]
                          [--batch-size N] [--threads N] [--device cpu|gpu]
                          [--results results.txt] [--json PATH] [--published NAME]
    python eval/verify.py --embeddings E.npy --issame I.npy [--name NAME] [--results ...] [--json ...]

``--weights`` takes a Paddle ``.pdparams``, a PyTorch ``.pth``/``.pt`` (converted on the fly) or an
``.onnx`` file; ``--data`` a folder (every ``<name>.bin`` in it, or those ``--targets`` names) or one
``.bin`` file. Each pack is decoded one batch at a time, embedded with its mirror image and evaluated
with 10 contiguous folds; InsightFace's log lines and a table are printed, ``--json`` writes every
number, ``--results`` merges a row per model into a table beside the published accuracy.
``--embeddings`` evaluates precomputed rows (pair order, ``[2P, D]``, not normalised) without a model.
Exit codes: 0 done, 2 a problem with an input (one line naming the file).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# Run as a file, sys.path[0] is this folder, whose modules would shadow others even when the project is
# installed (train/train.py would be imported as `train`); the project root goes there instead, which also
# lets a plain clone run without installing.
if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import architectures  # noqa: E402
from converters.cli import ArgumentParser, int_range, thread_count  # noqa: E402
from converters.errors import UserError, run_cli  # noqa: E402
from eval.backends import BACKENDS, DEVICES, add_precision_options, check_precision_options  # noqa: E402
from eval.stream import DEFAULT_BATCH_SIZE  # noqa: E402

# InsightFace's usual order; other packs found in --data follow alphabetically
KNOWN_TARGETS = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw", "cfp_ff", "vgg2_fp")
log = logging.getLogger("eval.verify")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="verify.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--weights", type=Path, help=".pdparams, .pth/.pt or .onnx")
    model.add_argument("--arch", choices=architectures.names(), help="expected architecture (default: detected from the weights)")
    model.add_argument("--data", type=Path, help="folder of <name>.bin packs, or one .bin file")
    model.add_argument("--targets", help="comma-separated pack names (default: every .bin in --data)")
    model.add_argument("--backend", choices=BACKENDS, help="default paddle-inference (onnx for an .onnx file)")
    add_precision_options(model, "also embed with this backend and count the pairs judged differently")
    model.add_argument("--batch-size", type=int_range(1, 4096), default=DEFAULT_BATCH_SIZE,
                       help=f"images per forward pass (default {DEFAULT_BATCH_SIZE}; results do not depend on it)")
    model.add_argument("--threads", type=thread_count, default=None, help="CPU threads (default: $ARCFACE_THREADS, else all cores)")
    model.add_argument("--device", choices=DEVICES, default="cpu", help="default cpu")
    model.add_argument("--cache-dir", type=Path, help="where exported Paddle Inference / ONNX models are cached "
                       "(default: a private folder under the system temp dir)")
    pre = parser.add_argument_group("precomputed embeddings")
    pre.add_argument("--embeddings", type=Path, help="E.npy: [2P, D] rows in pair order, not normalised")
    pre.add_argument("--issame", type=Path, help="I.npy: [P] booleans")
    pre.add_argument("--name", help="name of the set in the output (default: the embeddings file's stem)")
    out = parser.add_argument_group("output")
    out.add_argument("--results", type=Path, help="merge a row into this results table (e.g. results.txt)")
    out.add_argument("--json", type=Path, help="write every number as JSON")
    out.add_argument("--published", metavar="NAME", help="the weights are this manifest model (compare with "
                     "its published accuracy even when the file is not recognised)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if (args.weights is None) == (args.embeddings is None):
        parser.error("give either --weights (with --data) or --embeddings (with --issame)")
    if args.weights is not None and args.data is None:
        parser.error("--weights needs --data")
    if args.embeddings is not None and args.issame is None:
        parser.error("--embeddings needs --issame")
    check_precision_options(parser, args)
    return args


def find_targets(data: Path, targets: str | None) -> list[Path]:
    """The packs to evaluate: ``--data`` itself if it is a file, else ``<data>/<name>.bin``."""
    if data.is_file():
        if targets:
            raise UserError(data, "--targets needs --data to be a folder, not a file")
        return [data]
    if not data.is_dir():
        raise UserError(data, "no such folder")
    if targets:
        paths = [data / f"{name.strip()}.bin" for name in targets.split(",") if name.strip()]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise UserError(missing[0], f"no such pack (found: {', '.join(sorted(p.stem for p in data.glob('*.bin'))) or 'none'})")
        return paths
    found = {p.stem: p for p in data.glob("*.bin") if p.is_file()}
    if not found:
        raise UserError(data, "no .bin verification packs in this folder")
    order = [n for n in KNOWN_TARGETS if n in found] + sorted(n for n in found if n not in KNOWN_TARGETS)
    return [found[n] for n in order]


def load_precomputed(args: argparse.Namespace):
    """Read ``--embeddings``/``--issame`` (the safe ``.npy`` reader: no pickles, no ``.npz``, header
    checked) and check their shapes."""
    import numpy as np

    from converters.npy import read_npy

    emb = read_npy(args.embeddings, "[2P, D] embeddings")
    issame = read_npy(args.issame, "[P] same-identity booleans")
    if emb.ndim != 2 or emb.dtype.kind not in "fiu":
        raise UserError(args.embeddings, f"expected a [2P, D] numeric array, found {emb.dtype} {list(emb.shape)}")
    if issame.ndim != 1 or not (issame.dtype == bool or (issame.dtype.kind in "iu" and np.isin(issame, (0, 1)).all())):
        raise UserError(args.issame, f"expected [P] booleans, found {issame.dtype} {list(issame.shape)}")
    if emb.shape[0] != 2 * len(issame):
        raise UserError(args.embeddings, f"{emb.shape[0]} rows for {len(issame)} pairs (expected {2 * len(issame)})")
    return emb, issame.astype(bool)


def run_precomputed(args: argparse.Namespace) -> tuple[dict, dict, list]:
    from eval.protocol import evaluate
    from eval.results import find_known

    emb, issame = load_precomputed(args)
    name = args.name or args.embeddings.stem
    try:
        result = evaluate(emb, issame)
    except ValueError as err:
        raise UserError(args.embeddings, str(err)) from None
    known = find_known(args.embeddings, "", None, None, args.published) if args.published else None
    rows = [(("embeddings", str(args.embeddings), "precomputed", known.name if known else ""), {name: result}, "")]
    return {name: result}, {}, rows


def run_model(args: argparse.Namespace) -> tuple[dict, dict, list]:
    from converters.runtime import set_threads

    # Paddle and onnxruntime here; the torch backend sets torch's own threads (TorchEmbedder), so torch is
    # imported only where it is used and Paddle-only evaluation stays ~200 MB smaller
    threads = set_threads(args.threads, torch=False)
    from converters.binfile import read_bin
    from eval.backends import make_embedders
    from eval.protocol import decisions_differ, evaluate_flip
    from eval.results import differ_note, find_known, insightface_lines
    from eval.sources import load_weights
    from eval.stream import embed_pack

    packs = find_targets(args.data, args.targets)
    source = load_weights(args.weights, args.arch)
    backend = args.backend or ("onnx" if source.kind == "onnx" else "paddle-inference")
    reduced = args.precision != "fp32"
    if args.compare == backend and not reduced:
        raise UserError(None, f"--compare {args.compare} is the backend being evaluated; choose another")
    known = find_known(args.weights, source.sha256, source.arch, source.meta.get("source_sha256"),
                       args.published)
    embedders = make_embedders(source, backend, threads, args.device, args.cache_dir, args.precision,
                               args.calibration, args.compare)
    # after the backends are built: a model that cannot run fails with its one line and nothing else
    log.info("%s: %s, %d-d embedding, sha256 %s...; backend %s%s, %d threads, batch %d", args.weights,
             source.label, source.num_features, source.sha256[:16], embedders[0].name,
             f" (compared with {embedders[1].name})" if len(embedders) > 1 else "", threads, args.batch_size)
    source.release()

    results: dict = {}
    compared: dict = {}
    extra: dict = {}
    counts = []
    guards = []
    for path in packs:
        pack = read_bin(path)
        runs = []
        embedded = []
        for embedder in embedders:
            emb = embed_pack(pack, embedder, args.batch_size, flip=True, progress=not args.no_progress)
            embedded.append(emb)
            try:
                runs.append(evaluate_flip(emb.original, emb.flipped, pack.issame))
            except ValueError as err:
                raise UserError(path, f"[{embedder.name}] {err}") from None
            log.info("%s [%s]: %d images in %.1f s (model %.1f s, decoding %.1f s)", pack.name, embedder.name,
                     len(pack), emb.model_seconds + emb.decode_seconds, emb.model_seconds, emb.decode_seconds)
        results[pack.name] = runs[0]
        for line in insightface_lines(pack.name, runs[0]):
            print(line, flush=True)
        if len(runs) > 1:
            compared[pack.name] = runs[1]
            differ = decisions_differ(runs[0], runs[1])
            counts.append((pack.name, differ, pack.pairs))
            extra[pack.name] = {"compare": {"backend": embedders[1].name, **{k: v for k, v in runs[1].to_json().items() if k in BRIEF_KEYS}, "pairs_judged_differently": differ}}
        if reduced:
            from eval.precision_guard import pack_guard

            (ref, low) = embedded[1], embedded[0]
            guard = pack_guard(pack.name, ref.original, ref.flipped, low.original, low.flipped, pack.issame)
            guards.append(guard)
            extra[pack.name]["precision_guard"] = {"precision": args.precision, **guard.to_json()}
    if guards:
        from eval.precision_guard import guard_table

        print(f"accuracy guard: {embedders[0].name} against {embedders[1].name} on the same images", flush=True)
        print(guard_table(guards, args.precision), flush=True)
    weights = str(args.weights)
    known_name = known.name if known else ""
    rows = [((source.label, weights, embedders[0].name, known_name), results, "")]
    if compared:
        rows.append(((source.label, weights, embedders[1].name, known_name), compared,
                     differ_note(embedders[0].name, counts)))
    return results, extra, rows


BRIEF_KEYS = ("accuracy", "accuracy_std", "fold_accuracies", "thresholds", "xnorm")


def input_files(args: argparse.Namespace) -> dict[str, list[Path]]:
    """Every file this run reads, by option (the packs of a ``--data`` folder too): no output may be one."""
    data = args.data
    packs = sorted(data.glob("*.bin")) if data is not None and data.is_dir() else [data]
    return {"--weights": [args.weights], "--data": packs, "--embeddings": [args.embeddings], "--calibration": [args.calibration],
            "--issame": [args.issame]}


def log_to_stdout() -> None:
    """Progress and results on stdout, stderr kept for the one-line error. The project's ``eval`` loggers
    get their own handler: ``import paddle`` installs a handler on the root logger, which would make
    ``logging.basicConfig`` a no-op and print these lines on stderr in Paddle's format."""
    from converters.runtime import StdoutHandler

    logger = logging.getLogger("eval")
    if not any(isinstance(h, StdoutHandler) for h in logger.handlers):
        logger.addHandler(StdoutHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log_to_stdout()
    from converters.runtime import quiet_paddle_import

    quiet_paddle_import()
    from converters.outputs import check_outputs
    from eval.results import accuracy_cell, insightface_lines, read_results, summary_table, write_json

    check_outputs(input_files(args), {"--json": args.json, "--results": args.results})  # before any work
    table = read_results(args.results) if args.results else None  # a bad results file fails before the work
    if args.embeddings is not None:
        results, extra, rows = run_precomputed(args)
        for name, result in results.items():
            for line in insightface_lines(name, result):
                print(line)
    else:
        results, extra, rows = run_model(args)
    differ = {n: e["compare"]["pairs_judged_differently"] for n, e in extra.items()} if extra else None
    print(summary_table(results, differ))
    if args.json:
        write_json(args.json, results, extra)
        log.info("wrote %s", args.json)
    if table is not None:
        for key, row_results, note in rows:
            table.add(key, {n: accuracy_cell(r) for n, r in row_results.items()},
                      {n: r.xnorm for n, r in row_results.items() if r.xnorm is not None}, note)
        table.write(args.results)
        log.info("wrote %s", args.results)
    from converters.runtime import peak_rss_mb

    log.info("peak RSS %.0f MB%s", peak_rss_mb(), _rss_split())
    return 0


def _rss_split() -> str:
    """Current anonymous vs file-backed resident memory (Linux): shared library pages count in RSS too."""
    try:
        fields = dict(ln.split(":", 1) for ln in Path("/proc/self/status").read_text().splitlines() if ":" in ln)
        anon, file = (int(fields[k].split()[0]) / 1024 for k in ("RssAnon", "RssFile"))
    except (OSError, KeyError, ValueError):
        return ""
    return f" (now {anon:.0f} MB anonymous, {file:.0f} MB file-backed)"


if __name__ == "__main__":
    run_cli(lambda: main())
