"""IJB-B / IJB-C 1:1 verification with InsightFace's protocol (arcface_torch's ``eval_ijbc.py``), on a CPU.

    python eval/ijb.py --weights W --data ROOT --target IJBC|IJBB [--arch NAME]
                       [--backend paddle-inference|paddle|torch|onnx] [--compare BACKEND]
                       [--precision fp32|bf16|int8] [--calibration PACK.bin|FOLDER] [--batch-size N] [--threads N]
                       [--workers N] [--variant N1D1F1] [--cache DIR] [--cache-dir DIR] [--json OUT.json] [--results results.txt]
                       [--scores-dir DIR] [--plot roc.png] [--overlay EARLIER.npy ...] [--name NAME]
    python eval/ijb.py --features F.npy --data ROOT --target IJBC ...

``ROOT`` is InsightFace's layout: ``meta/<t>_face_tid_mid.txt`` (``image template media``),
``meta/<t>_template_pair_label.txt`` (``template template label``), ``meta/<t>_name_5pts_score.txt``
(``image x1 y1 ... x5 y5 faceness``, in the same image order) and ``loose_crop/<image>``.

Each face is aligned with its five landmarks onto the ArcFace template (similarity transform, border 0) in
worker processes, embedded with its mirror image, and turned into an image feature as the variant says:
``N1D1F1`` (the default and InsightFace's published setting) sums the two raw outputs (F1), keeps their
norm (N1) and multiplies by the detector score (D1); ``N0`` L2-normalises each image, ``D0`` ignores the
score, ``F0`` uses the face alone. A template is the sum over its medias of the mean image feature of each
media, L2-normalised; a pair's score is the dot product of its two templates. TAR is read off
``sklearn.metrics.roc_curve`` at the ROC point whose FAR is nearest each of 1e-6 ... 1e-1.

``--features`` replaces the model: raw per-image features in ``face_tid_mid`` order, ``[N, 2, D]`` (face,
mirror) or ``[N, D]`` already flip-summed; ``--cache DIR`` writes exactly such a ``features.npy`` and lets a
killed run resume.

``--precision bf16|int8`` evaluates the model at a reduced precision and always compares it with fp32 on
the same images (the ``--compare`` backend, default the same backend at fp32): every face is decoded and
aligned once and each batch embedded by both models; both TAR tables and the accuracy guard
(``eval/ijb_guard.py``) are printed. ``--compare BACKEND`` alone compares two fp32 backends the same way.
With two models ``--cache DIR`` keeps one cache per model, ``DIR/<backend>-<precision>``; a plain fp32 run's
cache in ``DIR/<backend>-fp32`` serves as the reference's.
Exit codes: 0 done, 2 a problem with an input (one line naming the file and line).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
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

TARGETS = ("IJBC", "IJBB")
DEFAULT_BATCH = 32  # faces per forward pass (each with its mirror: 64 rows)
RESULT_FARS = ("1e-4", "1e-5")  # the columns results.txt gets, as InsightFace's tables publish them
log = logging.getLogger("eval.ijb")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="ijb.py", description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, required=True, help="the IJB root folder (meta/ and loose_crop/)")
    data.add_argument("--target", type=str.upper, choices=TARGETS, default="IJBC", help="default IJBC")
    data.add_argument("--variant", default="N1D1F1",
                      help="N(orm score) D(etector score) F(lip) switches, 0 or 1 each (default N1D1F1)")
    model = parser.add_argument_group("model")
    model.add_argument("--weights", type=Path, help=".pdparams, .pth/.pt or .onnx")
    model.add_argument("--arch", choices=architectures.names(), help="expected architecture (default: detected)")
    model.add_argument("--backend", choices=BACKENDS, help="default paddle-inference (onnx for an .onnx file)")
    add_precision_options(model, "also embed with this backend (fp32) and print the accuracy guard against it")
    model.add_argument("--batch-size", type=int_range(1, 2048), default=DEFAULT_BATCH,
                       help=f"faces per forward pass, each with its mirror (default {DEFAULT_BATCH})")
    model.add_argument("--threads", type=thread_count, default=None, help="model threads (default: $ARCFACE_THREADS, else all cores)")
    model.add_argument("--workers", type=int_range(0, 256), default=None,
                       help="decode-and-align processes (default: half the cores, at least 1; 0: none)")
    model.add_argument("--device", choices=DEVICES, default="cpu", help="default cpu")
    model.add_argument("--cache", type=Path, help="resumable feature cache folder (with --precision or --compare: "
                       "one subfolder per model, <backend>-<precision>)")
    model.add_argument("--cache-dir", type=Path, help="where exported Paddle Inference / ONNX models are cached "
                       "(default: a private folder under the system temp dir)")
    model.add_argument("--features", type=Path,
                       help="F.npy: raw features instead of a model, [N, 2, D] or [N, D] in face_tid_mid order")
    out = parser.add_argument_group("output")
    out.add_argument("--name", help="the run's name in tables and plots (default: the weights' file stem)")
    out.add_argument("--json", type=Path, help="write the TAR table and counts as JSON")
    out.add_argument("--results", type=Path, help="merge a row into this results table (e.g. results.txt)")
    out.add_argument("--published", metavar="NAME", help="the weights are this manifest model")
    out.add_argument("--scores-dir", type=Path, help="save the pair scores as <name>_<target>.npy here")
    out.add_argument("--plot", type=Path, help="ROC curve PNG (log-scale FAR)")
    out.add_argument("--overlay", type=Path, nargs="+", default=[],
                     help="earlier runs' saved scores (.npy) drawn in the same --plot")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if (args.weights is None) == (args.features is None):
        parser.error("give either --weights or --features")
    if args.overlay and args.plot is None:
        parser.error("--overlay needs --plot")
    if args.features is not None and args.cache is not None:
        parser.error("--cache stores a model's features; with --features there is nothing to cache")
    if args.features is not None:
        for option, value in (("--precision", args.precision != "fp32"), ("--compare", args.compare),
                              ("--calibration", args.calibration)):
            if value:
                parser.error(f"{option} needs a model (--weights); precomputed --features have no precision to "
                             "compare")
    check_precision_options(parser, args)
    if args.weights is not None and args.compare == default_backend(args) and args.precision == "fp32":
        parser.error(f"--compare {args.compare} is the backend being evaluated; choose another")
    return args


def default_backend(args: argparse.Namespace) -> str:
    """``--backend``, else onnx for an ``.onnx`` file and paddle-inference for other weights."""
    return args.backend or ("onnx" if args.weights.suffix.lower() == ".onnx" else "paddle-inference")


def run_labels(args: argparse.Namespace, name: str) -> list[str]:
    """The runs' names in tables, plots and score files: ``name`` alone, or with a reduced precision or
    ``--compare`` the evaluated model's and the reference's, each tagged with its backend and precision."""
    if args.features is not None or (args.precision == "fp32" and args.compare is None):
        return [name]
    backend = default_backend(args)
    evaluated = backend if args.precision == "fp32" else f"{backend}-{args.precision}"
    return [f"{name}-{evaluated}", f"{name}-{args.compare or backend}"]


def run_name(args: argparse.Namespace) -> str:
    if args.name:
        return args.name.replace("/", "_")
    return (args.weights or args.features).stem


def load_features(path: Path, layout, variant):
    """``--features`` as image features: the file is checked by the safe ``.npy`` reader and mapped;
    ``image_features`` reads it chunk by chunk (dropping the rows it has read from memory), so the peak is the
    ``[N, D]`` result plus one chunk."""
    import numpy as np

    from converters.npy import read_npy
    from eval.ijb_protocol import image_features

    raw = read_npy(path, "[N, 2, D] or [N, D] features", mmap=True)
    n = len(layout.names)
    if raw.dtype.kind != "f" or raw.ndim not in (2, 3) or (raw.ndim == 3 and raw.shape[1] != 2):
        raise UserError(path, f"expected float features [N, 2, D] or [N, D], found {raw.dtype} {list(raw.shape)}")
    if not raw.flags.c_contiguous:
        raise UserError(path, "is stored in Fortran order; save the features with np.save of a C-ordered array")
    if raw.shape[0] != n:
        raise UserError(path, f"{raw.shape[0]} rows, but {layout.paths.face_tid_mid} lists {n} images")
    if raw.ndim == 2 and not variant.flip:
        raise UserError(path, f"[N, D] features are already flip-summed; --variant {variant.name} needs [N, 2, D]")
    try:
        feats = image_features(raw, layout.faceness, variant)
    except ValueError as err:
        raise UserError(path, str(err)) from None
    finite = np.isfinite(feats).all(axis=1)
    if not finite.all():
        bad = int(np.argmin(finite))
        raise UserError(path, f"row {bad} (image {layout.names[bad]}) is not finite")
    return feats


def model_features(args: argparse.Namespace, layout, variant):
    """Embed every face of the layout with the model (workers decode and align); ``(feats, source, backend,
    stats, embedders, cosines)``. With a reduced precision or ``--compare`` two embedders (the evaluated
    model, then the fp32 reference) embed every batch; ``feats`` then holds one ``[N, D]`` array per embedder
    and ``cosines`` the ``[N]`` per-image cosines of their raw flip-summed outputs (else None)."""
    import numpy as np

    from converters.checkpoint import sha256_file
    from converters.runtime import set_threads
    from eval.backends import make_embedders, reference_backend
    from eval.ijb_extract import FeatureCache, extract_features
    from eval.sources import load_weights

    threads = set_threads(args.threads, torch=False)
    source = load_weights(args.weights, args.arch)
    backend = default_backend(args)
    reduced = args.precision != "fp32"
    embedders = make_embedders(source, backend, threads, args.device, args.cache_dir, args.precision,
                               args.calibration, args.compare)
    compare = reference_backend(backend, args.precision, args.compare)
    workers = args.workers if args.workers is not None else max(1, (os.cpu_count() or 2) // 2)
    log.info("%s: %s, sha256 %s...; backend %s%s, %d threads, %d decode worker%s, batch %d faces", args.weights,
             source.label, source.sha256[:16], embedders[0].name,
             f" (compared with {embedders[1].name} on the same images)" if compare else "", threads, workers,
             "" if workers == 1 else "s", args.batch_size)
    source.release()
    caches = None
    if args.cache:
        key = {"weights_sha256": source.sha256, "backend": backend, "device": args.device, "target": args.target,
               "landmarks_sha256": sha256_file(layout.paths.name_5pts_score)}
        if not compare:
            caches = FeatureCache(args.cache, key, len(layout.names))
        else:  # one cache per model, in a subfolder named after its backend and precision
            low = dict(key)
            if reduced:
                low["precision"] = args.precision
            if args.precision == "int8":
                from converters.quantize import calibration_key

                low["calibration"] = calibration_key(args.calibration)
            first = FeatureCache(args.cache / f"{backend}-{args.precision}", low, len(layout.names))
            try:
                caches = [first, FeatureCache(args.cache / f"{compare}-fp32", {**key, "backend": compare},
                                              len(layout.names))]
            except BaseException:
                first.close()  # its lock
                raise
    cosines = np.empty(len(layout.names), np.float64) if compare else None

    def image_cosines(start: int, raws) -> None:
        from eval.ijb_guard import flip_sum_cosines

        cosines[start:start + len(raws[0])] = flip_sum_cosines(raws[1], raws[0])

    feats, stats = extract_features(layout, embedders if compare else embedders[0], variant, args.batch_size,
                                    workers, caches, progress=not args.no_progress,
                                    on_raw=image_cosines if compare else None)
    for note in stats.notes:
        log.info(note)
    if stats.images:
        log.info("embedded %d faces in %.1f s: model %.1f faces/s (each with its mirror), decode + align %.0f "
                 "images/s (%d worker%s)", stats.images, stats.wall_seconds, stats.model_rate, stats.align_rate,
                 workers, "" if workers == 1 else "s")
        if compare:
            log.info("faces/s of each model: %s", ", ".join(
                f"{e.name} {stats.images / t:.1f}" for e, t in zip(embedders, stats.embedder_seconds) if t))
    return feats, source, backend, stats, embedders, cosines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from eval.verify import log_to_stdout

    log_to_stdout()
    from converters.runtime import quiet_paddle_import

    quiet_paddle_import()
    import numpy as np

    from converters.outputs import check_outputs
    from eval.ijb_layout import read_layout
    from eval.ijb_protocol import (
        FARS,
        aggregate_templates,
        format_table,
        pair_scores,
        parse_variant,
        tar_at_far,
    )
    from eval.results import read_results

    try:
        variant = parse_variant(args.variant)
    except ValueError as err:
        raise UserError(None, f"--variant: {err}") from None
    name = run_name(args)
    labels = run_labels(args, name)
    scores_paths = [args.scores_dir / f"{label}_{args.target.lower()}.npy" for label in labels] \
        if args.scores_dir else []
    inputs = {"--weights": [args.weights], "--features": [args.features], "--overlay": args.overlay,
              "--calibration": [args.calibration]}
    check_outputs(inputs, {"--json": args.json, "--results": args.results, "--plot": args.plot,
                           "--scores-dir": scores_paths})
    table = read_results(args.results) if args.results else None  # a bad results file fails before the work
    # saved as <name>_<target>.npy: labelled <name>
    overlays = [(re.sub(r"_ijb[bc]$", "", p.stem), _read_scores(p)) for p in args.overlay]

    t0 = time.perf_counter()
    layout = read_layout(args.data, args.target, images=args.features is None)
    log.info("%s: %d images, %d templates, %d pairs (%d genuine), read in %.1f s", args.data, len(layout.names),
             len(np.unique(layout.templates)), len(layout.labels), int(layout.labels.sum()),
             time.perf_counter() - t0)
    for path, (_, s) in zip(args.overlay, overlays):
        if len(s) != len(layout.labels):
            raise UserError(path, f"{len(s)} scores, but the layout has {len(layout.labels)} pairs")
    source = backend = None
    embedders, cosines = [], None
    if args.features is not None:
        t0 = time.perf_counter()
        feats = load_features(args.features, layout, variant)
        log.info("%s: %d x %d image features (%s) in %.1f s", args.features, *feats.shape, variant.name,
                 time.perf_counter() - t0)
        runs = [feats]
    else:
        feats, source, backend, _, embedders, cosines = model_features(args, layout, variant)
        runs = feats if isinstance(feats, list) else [feats]
    del feats

    t0 = time.perf_counter()
    all_scores, all_tars = [], []
    while runs:  # one model at a time, its image features dropped once scored
        template_feats, unique_templates = aggregate_templates(runs.pop(0), layout.templates, layout.medias)
        try:
            scores = pair_scores(template_feats, unique_templates, layout.p1, layout.p2)
        except ValueError as err:
            raise UserError(layout.paths.template_pair_label, str(err)) from None
        del template_feats
        all_scores.append(scores)
        try:
            all_tars.append(tar_at_far(layout.labels, scores))
        except ValueError as err:  # e.g. a reduced precision's NaN embeddings
            raise UserError(args.weights or args.features, f"[{labels[len(all_tars)]}] {err}") from None
    log.info("templates, scores and TAR table in %.1f s", time.perf_counter() - t0)
    print(format_table(dict(zip(labels, all_tars)), args.target), flush=True)
    scores, tars = all_scores[0], all_tars[0]

    result = {"target": args.target, "variant": variant.name, "images": len(layout.names),
              "templates": len(unique_templates), "pairs": len(layout.labels),
              "genuine_pairs": int(layout.labels.sum()),
              "tar_at_far": {f"{far:.0e}": float(tars[far]) for far in FARS},
              "weights": str(args.weights or args.features),
              "backend": backend or "precomputed", "precision": args.precision if source else None,
              "arch": source.arch if source else None}
    if len(embedders) > 1:
        from eval.ijb_guard import guard_text, ijb_guard

        try:
            guard = ijb_guard(layout.labels, all_scores[1], scores, cosines)
        except ValueError as err:
            raise UserError(args.weights, f"[{embedders[0].name}] {err}") from None
        reduced = args.precision != "fp32"
        print(f"{'accuracy guard' if reduced else 'comparison'}: {embedders[0].name} against {embedders[1].name} "
              "on the same images", flush=True)
        print(guard_text(guard, args.precision if reduced else embedders[0].name,
                         "fp32" if reduced else embedders[1].name), flush=True)
        result["precision_guard" if reduced else "compare"] = {
            "precision": args.precision, "backend": embedders[0].name, "reference": embedders[1].name,
            **guard.to_json()}
    for path, run_scores in zip(scores_paths, all_scores):
        _save_scores(path, run_scores)
    if args.plot:
        _plot(args.plot, layout.labels, [*zip(labels, all_scores), *overlays], args.target)
        log.info("wrote %s", args.plot)
    if args.json:
        from converters.outputs import atomic_output

        with atomic_output(args.json) as tmp:
            tmp.write_text(json.dumps(result, indent=1) + "\n")
        log.info("wrote %s", args.json)
    if table is not None:
        for i, run_tars in enumerate(all_tars):
            _add_row(table, args, source, embedders[i].name if len(embedders) > 1 else backend, variant, run_tars)
        table.write(args.results)
        log.info("wrote %s", args.results)
    return 0


def _read_scores(path: Path):
    from converters.npy import read_npy

    s = read_npy(path, "[P] pair scores")
    if s.ndim != 1 or s.dtype.kind != "f":
        raise UserError(path, f"expected [P] float scores, found {s.dtype} {list(s.shape)}")
    return s


def _save_scores(path: Path, scores) -> None:
    import numpy as np

    from converters.outputs import atomic_output

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, scores)
    log.info("wrote %s", path)


def _plot(path: Path, labels, runs, target: str) -> None:
    """ROC curves, log-scale FAR from 1e-6 to 1e-1, one curve per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from converters.outputs import atomic_output
    from eval.ijb_protocol import FARS, roc

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for label, scores in runs:
        fpr, tpr = roc(labels, scores)
        ax.plot(fpr, tpr, lw=1.2, label=label)
    ax.set_xscale("log")
    ax.set_xlim(FARS[0], FARS[-1])
    ax.set_ylim(0.0, 1.0)
    ax.set_xticks(FARS)
    ax.grid(linestyle="--", linewidth=0.6)
    ax.set_xlabel("False accept rate")
    ax.set_ylabel("True accept rate")
    ax.set_title(f"ROC on {target} (1:1 verification)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _add_row(table, args, source, backend, variant, tars) -> None:
    """A row keyed like eval/verify.py's, cells TAR (%) at the FARs InsightFace publishes."""
    from eval.results import find_known

    if source is not None:
        known = find_known(args.weights, source.sha256, source.arch, source.meta.get("source_sha256"),
                           args.published)
        key = (source.label, str(args.weights), backend, known.name if known else "")
    else:
        known = find_known(args.features, "", None, None, args.published) if args.published else None
        key = ("features", str(args.features), "precomputed", known.name if known else "")
    suffix = "" if variant.name == "N1D1F1" else f" {variant.name}"
    cells = {f"{args.target.lower()}_{far}{suffix}": f"{100 * tars[float(far)]:.2f}" for far in RESULT_FARS}
    table.add(key, cells, {}, "")


if __name__ == "__main__":
    run_cli(lambda: main())
