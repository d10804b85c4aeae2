"""What an evaluation prints and writes: InsightFace's log lines, tables, ``--json`` and ``results.txt``.

``results.txt`` is a Markdown table that later runs merge into. Rows are models, keyed by
``(model, weights, backend)``; columns are datasets, each cell ``accuracy±std`` in percent (mean and
population std of the 10 fold accuracies, flip-summed embeddings, as InsightFace's tables), plus
``XNorm`` per dataset. A row measured on weights that ``weights/manifest.json`` knows (by path, by the
sha256 of the file or of the checkpoint a ``.pdparams`` was converted from, or named with
``--published``) is followed by one row per published source with the published numbers and, in
parentheses, measured minus published.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from converters.errors import UserError

from .protocol import TAR_FARS, Verification

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "weights" / "manifest.json"
KEY_COLUMNS = ("model", "weights", "backend", "known as")
TAIL_COLUMNS = ("XNorm", "note")
PUBLISHED = "published"
HEADER = ("# Verification accuracy (%): mean±std of the 10 fold accuracies, InsightFace's protocol with "
          "flipped images\n# (eval/verify.py); ijbc_1e-4 and the like: IJB-C/IJB-B TAR (%) at that FAR "
          "(eval/ijb.py). Rows merge by\n# (model, weights, backend); rows with backend 'published' come from "
          "weights/manifest.json, with measured\n# minus published in parentheses.\n")


# ------------------------------------------------------------------------------------------ log lines
def insightface_lines(name: str, result: Verification, step: int = 0) -> list[str]:
    """The lines InsightFace's verification prints, e.g. ``[lfw][0]Accuracy-Flip: 0.99800+-0.00245``."""
    if result.xnorm is None:  # precomputed embeddings: the rows are used as given
        return [f"[{name}][{step}]Accuracy: {result.accuracy:1.5f}+-{result.accuracy_std:1.5f}"]
    return [f"[{name}][{step}]XNorm: {result.xnorm:f}",
            f"[{name}][{step}]Accuracy: {result.accuracy_noflip:1.5f}+-{result.accuracy_noflip_std:1.5f}",
            f"[{name}][{step}]Accuracy-Flip: {result.accuracy:1.5f}+-{result.accuracy_std:1.5f}"]


def summary_table(results: dict[str, Verification], differ: dict[str, int] | None = None) -> str:
    """One row per dataset: accuracy (flip and not), XNorm, VAL@FAR, TAR at FARs, mean best threshold."""
    from tabulate import tabulate

    rows = []
    for name, r in results.items():
        row = [name, r.pairs, f"{100 * r.accuracy:.3f}±{100 * r.accuracy_std:.3f}",
               "-" if r.accuracy_noflip is None else f"{100 * r.accuracy_noflip:.3f}",
               "-" if r.xnorm is None else f"{r.xnorm:.4f}",
               f"{100 * r.val:.2f}±{100 * r.val_std:.2f} @ {r.far:.5f}",
               *(f"{100 * r.tar_at_far(far):.2f}" for far in TAR_FARS), f"{r.threshold_mean:.3f}"]
        if differ is not None:
            row.append(differ.get(name, "-"))
        rows.append(row)
    headers = ["target", "pairs", "accuracy %", "no-flip %", "XNorm", "VAL@1e-3 % @ FAR",
               *(f"TAR % @{far:.0e}" for far in TAR_FARS), "threshold"]
    if differ is not None:
        headers.append("pairs judged differently")
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def write_json(path: Path, results: dict[str, Verification], extra: dict[str, dict] | None = None) -> None:
    """``{target: {accuracy, accuracy_std, fold_accuracies, thresholds, ..., pairs}}``."""
    from converters.outputs import atomic_output

    data = {}
    for name, result in results.items():
        data[name] = result.to_json()
        if extra and name in extra:
            data[name].update(extra[name])
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


# -------------------------------------------------------------------------------------------- manifest
@dataclass
class KnownModel:
    """A manifest entry: a checkpoint and the accuracies published for it (percent, per source)."""

    name: str
    arch: str
    path: str | None
    sha256: str | None
    published: list[dict]  # [{"source": str, "accuracy": {dataset: percent}}]


def load_manifest(path: Path = MANIFEST) -> list[KnownModel]:
    """Every model in ``weights/manifest.json`` (``models`` and ``paddle_models``)."""
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
        return [KnownModel(m["name"], m["arch"], m.get("path"), m.get("sha256"), list(m.get("published", [])))
                for key in ("models", "paddle_models") for m in data.get(key, [])]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(path, f"malformed manifest ({type(err).__name__}: {err})") from None


def find_known(weights: Path, sha256: str, arch: str | None, source_sha256: str | None = None,
               name: str | None = None, manifest: Path = MANIFEST) -> KnownModel | None:
    """The manifest model these weights are: by ``name``, sha256 (of the file or of the checkpoint a
    ``.pdparams`` was converted from), or by the path the manifest lists."""
    from converters.checkpoint import sha256_file

    models = load_manifest(manifest)
    if name is not None:
        found = next((m for m in models if m.name == name), None)
        if found is None:
            raise UserError(manifest, f"no model named '{name}' (known: {', '.join(m.name for m in models)})")
        return found
    digests = {sha256, source_sha256} - {None}
    weights_dir = manifest.parent
    for m in models:
        if m.sha256 and m.sha256 in digests:
            return m
        if m.path and (weights_dir / m.path).resolve() == weights.resolve():
            return m
    if source_sha256:  # converted weights: compare with the checkpoints present under weights/
        for m in models:
            local = weights_dir / m.path if m.path else None
            if (_same_weights(m.arch, arch) and local is not None and local.is_file()
                    and sha256_file(local) == source_sha256):
                return m
    return None


def _same_weights(listed: str, detected: str | None) -> bool:
    """Whether weights detected as ``detected`` can be the manifest's ``listed`` architecture (the ViT names
    that differ only in training settings share their weights; detection reports the first of them)."""
    import architectures

    return listed == detected or (listed in architectures.names() and detected in architectures.same_weights(listed))


# ------------------------------------------------------------------------------------------ results.txt
@dataclass
class ResultsTable:
    """``results.txt`` in memory: measured rows by key, dataset columns in order."""

    datasets: list[str] = field(default_factory=list)
    rows: dict[tuple[str, ...], dict[str, str]] = field(default_factory=dict)

    def add(self, key: tuple[str, str, str, str], cells: dict[str, str], xnorm: dict[str, float],
            note: str = "") -> None:
        """Merge one measured row: new datasets overwrite old cells of the same row, others stay."""
        key = tuple(_clean(k) for k in key)
        row = self.rows.setdefault(key, {})
        for name, cell in cells.items():
            if name not in self.datasets:
                self.datasets.append(name)
            row[name] = cell
        merged = _parse_xnorm(row.get("XNorm", ""))
        merged.update({k: f"{v:.2f}" for k, v in xnorm.items()})
        row["XNorm"] = ", ".join(f"{k} {v}" for k, v in merged.items())
        row["note"] = _clean(note)

    def render(self, manifest: Path = MANIFEST) -> str:
        """The Markdown table, with the published rows of every known model after its measured rows."""
        from tabulate import tabulate

        known = {m.name: m for m in load_manifest(manifest)}
        lines = []
        done: set[str] = set()
        measured = list(self.rows.items())
        for i, (key, row) in enumerate(measured):
            lines.append([*key, *(row.get(d, "") for d in self.datasets), row.get("XNorm", ""), row.get("note", "")])
            name = key[3]
            last_of_model = all(k[3] != name for k, _ in measured[i + 1:])
            if name and name in known and last_of_model and name not in done:
                done.add(name)
                same = [r for k, r in measured if k[3] == name]
                lines += self._published_rows(known[name], same)
        headers = [*KEY_COLUMNS, *self.datasets, *TAIL_COLUMNS]
        return HEADER + tabulate(lines, headers=headers, tablefmt="github", disable_numparse=True) + "\n"

    def _published_rows(self, model: KnownModel, measured: list[dict[str, str]]) -> list[list[str]]:
        rows = []
        for source in model.published:
            # verification-pack accuracies and IJB TAR columns (``ijbc_1e-4``: TAR % at FAR 1e-4, eval/ijb.py)
            accuracy = {**source.get("accuracy", {}), **source.get("ijbc_tar", {}), **source.get("ijbb_tar", {})}
            if not any(d in accuracy for d in self.datasets):
                continue
            cells = []
            for d in self.datasets:
                if d not in accuracy:
                    cells.append("")
                    continue
                deltas = []
                for row in measured:
                    value = _percent(row.get(d, ""))
                    if value is not None:
                        delta = f"{value - float(accuracy[d]):+.3f}"
                        if delta not in deltas:
                            deltas.append(delta)
                cells.append(_published_cell(float(accuracy[d])) + (f" ({'/'.join(deltas)})" if deltas else ""))
            rows.append([model.arch, "-", PUBLISHED, model.name, *cells, "", _clean(source.get("source", ""))])
        return rows

    def write(self, path: Path, manifest: Path = MANIFEST) -> None:
        from converters.outputs import atomic_output

        with atomic_output(path) as tmp:
            tmp.write_text(self.render(manifest))


def read_results(path: Path) -> ResultsTable:
    """Parse a ``results.txt`` this module wrote (published rows are dropped: they are re-derived)."""
    table = ResultsTable()
    if not path.exists():
        return table
    if path.is_dir():
        raise UserError(path, "is a directory, not a results table; give a file name for --results")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(path, "is not a text file (not a results table written by eval/verify.py); "
                        "choose another --results file") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        raise UserError(path, "exists but holds no results table (choose another --results file)")
    header = _cells(lines[0])
    if tuple(header[:len(KEY_COLUMNS)]) != KEY_COLUMNS or tuple(header[-len(TAIL_COLUMNS):]) != TAIL_COLUMNS:
        raise UserError(path, f"not a results table written by eval/verify.py (columns {', '.join(header)})")
    table.datasets = header[len(KEY_COLUMNS):-len(TAIL_COLUMNS)]
    for line in lines[2:]:
        cells = _cells(line)
        if len(cells) != len(header):
            raise UserError(path, f"row with {len(cells)} cells under {len(header)} columns: {line[:80]}")
        key = tuple(cells[:len(KEY_COLUMNS)])
        if key[2] == PUBLISHED:
            continue
        table.rows[key] = {c: v for c, v in zip(header[len(KEY_COLUMNS):], cells[len(KEY_COLUMNS):]) if v}
    return table


def accuracy_cell(result: Verification) -> str:
    return f"{100 * result.accuracy:.3f}±{100 * result.accuracy_std:.3f}"


def _published_cell(percent: float) -> str:
    """As published: 2 decimals (InsightFace, ``99.80``) or 3 (``99.667`` from a 5-decimal fraction)."""
    text = f"{percent:.3f}"
    return text[:-1] if text.endswith("0") else text


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _clean(text: Any) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def _percent(cell: str) -> float | None:
    head = cell.split("±")[0].split(" ")[0]
    try:
        value = float(head)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _parse_xnorm(cell: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in cell.split(","))):
        name, _, value = part.rpartition(" ")
        if name:
            out[name] = value
    return out


def differ_note(primary: str, counts: Iterable[tuple[str, int, int]]) -> str:
    """``decisions differ from paddle-inference: lfw 0/6000, ...`` for a ``--compare`` row."""
    return f"decisions differ from {primary}: " + ", ".join(f"{n} {k}/{p}" for n, k, p in counts)
