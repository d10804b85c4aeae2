"""Training configuration: InsightFace's keys and values, read safely from small config files.

A config file is a list of ``key = literal`` assignments (numbers, strings, booleans, None, tuples,
lists), like InsightFace's ``configs/*.py`` (``config.`` prefix optional). It is parsed with ``ast``, never
executed. A run is the defaults of ``TrainConfig`` (InsightFace's ``configs/base.py``, written only there)
+ the job file + ``key=value`` overrides from the command line; unknown keys, wrong types and bad values are
one-line errors naming the file (and line). Keys InsightFace has but this project does not use
(``IGNORED_KEYS``) are accepted; a run that sets one says so in one warning line.
"""

from __future__ import annotations

import ast
import difflib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

from converters.cli import INT32_MAX, SEED_MAX
from converters.errors import UserError, reading

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
ROOT = Path(__file__).resolve().parents[1]
MAX_CONFIG_BYTES = 1 << 20  # a config is a few dozen short lines


@dataclass
class TrainConfig:
    """Every key a config may set, with its default: the one place defaults are written. The defaults are
    InsightFace's ``configs/base.py`` except ``save_all_states`` (always true here); job configs supply
    ``rec``, ``num_classes``, ``num_image``, ``num_epoch``, ``warmup_epoch`` and ``val_targets``."""

    # model and loss
    network: str = "r50"
    embedding_size: int = 512
    margin_list: tuple = (1.0, 0.5, 0.0)  # (m1, m2, m3): ArcFace (1, 0.5, 0), CosFace (1, 0, 0.4)
    scale: float = 64.0  # InsightFace hard-codes s = 64
    grad_mode: str = "insightface"  # ArcFace gradient: "insightface" (straight-through) or "exact"
    interclass_filtering_threshold: float = 0.0
    sample_rate: float = 1.0
    pfc_update: str = "dense"  # "dense" (InsightFace v2) or "sparse" (v1, PLSC)
    dropout: float = 0.0
    fp16: bool = False
    # data
    rec: str = ""  # a RecordIO folder (train.rec/.idx), an image folder / label.txt, or "synthetic"
    num_classes: int = 0
    num_image: int = 0
    val_targets: tuple = ()
    num_workers: int = 2
    dali: bool = False
    dali_aug: bool = False
    # optimisation
    optimizer: str = "sgd"  # "sgd" (momentum 0.9, coupled decay) or "adamw"
    lr: float = 0.1
    momentum: float = 0.9  # ignored, as by InsightFace (SGD momentum is hard-coded 0.9)
    weight_decay: float = 5e-4
    batch_size: int = 128  # per process
    num_epoch: int = 20
    warmup_epoch: int = 0
    gradient_acc: int = 1
    max_norm: float = 5.0  # backbone-only gradient clipping
    seed: int = 2048
    # run
    output: str | None = None
    resume: bool = False  # ignored: train.py --resume continues a run
    save_all_states: bool = True  # ignored: every run writes resumable checkpoints
    save_every: int = 0  # steps between mid-epoch checkpoints; 0 = epoch ends only
    verbose: int = 2000  # steps between verification runs
    frequent: int = 10  # steps between log lines
    notes: str = field(default="", metadata={"help": "free text kept with the run (config.json)"})
    # Weights & Biases logging: ignored
    using_wandb: bool = False
    wandb_key: str = ""
    suffix_run_name: str | None = None
    wandb_entity: str = ""
    wandb_project: str = ""
    wandb_log_all: bool = True
    save_artifacts: bool = False
    wandb_resume: bool = False

    # ------------------------------------------------------------------ derived values (as train_v2.py)
    def total_batch(self, world_size: int) -> int:
        return self.batch_size * world_size

    def steps_per_epoch(self, world_size: int, dataset_len: int | None = None) -> int:
        """InsightFace: num_image // total_batch (the sampler pads, the loader drops the last batch)."""
        return (dataset_len or self.num_image) // self.total_batch(world_size)

    def warmup_step(self, world_size: int) -> int:
        return self.steps_per_epoch(world_size) * self.warmup_epoch

    def total_step(self, world_size: int) -> int:
        return self.steps_per_epoch(world_size) * self.num_epoch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FIELD_TYPES = {f.name: f.type for f in fields(TrainConfig)}
DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}
# InsightFace keys accepted and ignored: DALI augmentation (no DALI with Paddle), SGD momentum (hard-coded,
# as in InsightFace), resume and save_all_states (--resume continues a run; checkpoints are always written),
# Weights & Biases
IGNORED_KEYS = frozenset({"dali_aug", "momentum", "resume", "save_all_states", "using_wandb", "wandb_key",
                          "suffix_run_name", "wandb_entity", "wandb_project", "wandb_log_all",
                          "save_artifacts", "wandb_resume"})
CHOICES = {"optimizer": ("sgd", "adamw"), "grad_mode": ("insightface", "exact"),
           "pfc_update": ("dense", "sparse")}


def _check_type(key: str, value: Any) -> Any:
    kind = FIELD_TYPES[key]
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind == "tuple" and isinstance(value, list):
        value = tuple(value)
    expected = {"int": (int,), "float": (float,), "str": (str,), "bool": (bool,), "tuple": (tuple,),
                "str | None": (str, type(None))}[kind]
    if isinstance(value, bool) and kind in ("int", "float"):
        raise TypeError(f"{key} must be {kind}, got a boolean")
    if not isinstance(value, expected):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:60] + "..."
        raise TypeError(f"{key} must be {kind}, got {type(value).__name__} {shown}")
    return value


def _unknown(key: str) -> str:
    close = difflib.get_close_matches(key, FIELD_TYPES, n=1)
    return f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def read_config_file(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """``key = literal`` assignments of a config file, type-checked, without executing it.

    ``extends = "name"`` first reads that config (by name or path), so a variant shows only what differs.
    """
    if not path.is_file():
        raise UserError(path, "no such config file")
    text = _read_text(path)
    try:
        with reading(path, "config file"):
            tree = ast.parse(text, filename=str(path))
    except SyntaxError as err:
        raise UserError(path, f"line {err.lineno}: {err.msg}" if err.lineno else f"not a config file ({err.msg})") from None
    except ValueError as err:  # e.g. null bytes
        raise UserError(path, f"not a config file ({err})") from None
    values: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue  # a docstring
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue  # InsightFace configs import easydict; nothing is imported here
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "config":
            key = target.attr  # InsightFace's "config.lr = 0.1" spelling
        elif isinstance(target, ast.Name):
            key = target.id
        else:
            raise UserError(path, f"line {node.lineno}: only 'key = value' assignments are allowed")
        if key == "config":
            continue  # "config = edict()"
        if key == "extends":
            parent = node.value.value if isinstance(node.value, ast.Constant) else None
            if not isinstance(parent, str):
                raise UserError(path, f"line {node.lineno}: extends must be a config name or path string")
            parent_path = resolve_config_path(parent)
            if parent_path.resolve() in [p.resolve() for p in (*_seen, path)]:
                raise UserError(path, f"line {node.lineno}: extends {parent!r} loops back to itself")
            values.update(read_config_file(parent_path, (*_seen, path)))
            continue
        if key not in FIELD_TYPES:
            raise UserError(path, f"line {node.lineno}: {_unknown(key)}")
        try:
            with reading(path, f"line {node.lineno}: {key}"):
                values[key] = _check_type(key, ast.literal_eval(node.value))
        except ValueError:
            raise UserError(path, f"line {node.lineno}: {key}: value must be a literal "
                            "(number, string, bool, None, tuple or list)") from None
        except TypeError as err:
            raise UserError(path, f"line {node.lineno}: {err}") from None
    return values


def _read_text(path: Path) -> str:
    """The config file as UTF-8 text, refusing binary, non-UTF-8 and over-long files in one line."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise UserError(path, f"cannot read the config file ({err.strerror or err})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise UserError(path, f"config file larger than {MAX_CONFIG_BYTES} bytes (a config is a few "
                        "'key = value' lines)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(path, f"not UTF-8 text (invalid byte 0x{data[err.start]:02x} at offset {err.start})") from None


def resolve_config_path(name_or_path: str) -> Path:
    """A config given by name (``ms1mv3_r50``) or by path."""
    path = Path(name_or_path)
    if path.suffix == ".py" or path.exists() or "/" in name_or_path:
        return path
    return CONFIG_DIR / f"{name_or_path}.py"


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``key=value`` strings from the command line; values are Python literals, or else strings."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(None, f"override {item!r}: expected key=value")
        if key not in FIELD_TYPES:
            raise UserError(None, f"override {item!r}: {_unknown(key)}")
        try:
            with reading(None, f"override {key}"):
                value = ast.literal_eval(raw)
        except (ValueError, SyntaxError, TypeError):
            value = raw
        if FIELD_TYPES[key] == "str" and not isinstance(value, str):
            value = raw
        try:
            values[key] = _check_type(key, value)
        except TypeError as err:
            raise UserError(None, f"override {item!r}: {err}") from None
    return values


def load_config(name_or_path: str, overrides: Iterable[str] = ()) -> TrainConfig:
    """The defaults, then the job config, then command-line overrides; validated."""
    path = resolve_config_path(name_or_path)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.py")))
        raise UserError(path, f"no such config file (names in train/configs: {known})")
    values = read_config_file(path)
    overrides = list(overrides)
    given = parse_overrides(overrides)
    values.update(given)
    config = TrainConfig(**values)
    if config.output is None:
        config.output = str(Path("work_dirs") / path.stem)
    # a bad value is reported where it was given: the last override of the key, else the config file
    origins = {item.partition("=")[0]: item for item in overrides if item.partition("=")[0] in given}
    validate(config, path, origins)
    return config


# integer keys: (smallest, largest, why the largest); every size fits Paddle's int32
INT_RANGES = {
    "embedding_size": (1, 65536, ""),
    "num_classes": (1, INT32_MAX, " (Paddle's int32 labels)"),
    "num_image": (1, INT32_MAX, " (Paddle's int32 indices)"),
    "batch_size": (1, INT32_MAX, ""),
    "num_epoch": (1, 1_000_000, ""),
    "warmup_epoch": (0, 1_000_000, ""),
    "gradient_acc": (1, INT32_MAX, ""),
    "num_workers": (0, 256, ""),
    "seed": (0, SEED_MAX, ""),
    "save_every": (0, INT32_MAX, ""),
    "verbose": (1, INT32_MAX, ""),
    "frequent": (1, INT32_MAX, ""),
}
# float keys: (low, high, low excluded, high excluded)
FLOAT_RANGES = {
    "lr": (0.0, math.inf, False, True),
    "weight_decay": (0.0, math.inf, False, True),
    "momentum": (0.0, 1.0, False, False),
    "scale": (0.0, math.inf, True, True),
    "max_norm": (0.0, math.inf, True, True),
    "dropout": (0.0, 1.0, False, True),
    "sample_rate": (0.0, 1.0, True, False),
    "interclass_filtering_threshold": (0.0, 1.0, False, False),
}


def validate(config: TrainConfig, path: Path | None = None, origins: dict[str, str] | None = None) -> None:
    """Values that are well-typed but unusable are errors before anything runs (naming the config file,
    or the command-line override in ``origins`` that gave the key)."""
    import architectures

    def bad(message: str):
        key = message.split(" ", 1)[0].rstrip(":")
        if origins and key in origins:
            raise UserError(None, f"override {origins[key][:80]!r}: {message}")
        raise UserError(path, message)

    for key, options in CHOICES.items():
        if getattr(config, key) not in options:
            bad(f"{key} must be one of {', '.join(options)}, got {getattr(config, key)!r}")
    if config.network not in architectures.names():
        bad(f"network must be one of {', '.join(architectures.names())}, got {config.network!r}")
    if len(config.margin_list) != 3 or not all(isinstance(m, (int, float)) for m in config.margin_list):
        bad(f"margin_list must be three numbers (m1, m2, m3), got {config.margin_list!r}")
    if config.dali:
        bad("dali = True: NVIDIA DALI is not available with Paddle; use the RecordIO reader (dali = False)")
    if not all(isinstance(m, (int, float)) and not isinstance(m, bool) and math.isfinite(m)
               for m in config.margin_list):
        bad(f"margin_list must be three finite numbers, got {config.margin_list!r}")
    if not all(isinstance(t, str) and t for t in config.val_targets):
        bad(f"val_targets must be pack names (strings), got {config.val_targets!r}"[:300])
    for key, (low, high, note) in INT_RANGES.items():
        value = getattr(config, key)
        if value < low:
            bad(f"{key} must be positive, got {value}" if low == 1 else f"{key} must not be negative, got {value}")
        if value > high:
            bad(f"{key} must be at most {high}{note}, got {value}")
    for key, (low, high, low_open, high_open) in FLOAT_RANGES.items():
        value = getattr(config, key)
        if not (math.isfinite(value) and (value > low if low_open else value >= low)
                and (value < high if high_open else value <= high)):
            span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            bad(f"{key} must be a finite number in {span}, got {value}")
    if config.warmup_epoch >= config.num_epoch:
        bad(f"warmup_epoch ({config.warmup_epoch}) must be smaller than num_epoch ({config.num_epoch})")
    if not config.rec:
        bad("rec is not set: a RecordIO folder, an image folder or label.txt, or 'synthetic'")
    if config.rec != "synthetic" and not data_path(config).exists():
        bad(f"rec: training data not found: {data_path(config)}")


def ignored_settings(config: TrainConfig) -> dict[str, Any]:
    """The ``IGNORED_KEYS`` that ``config`` sets to something other than their default."""
    return {key: getattr(config, key) for key in sorted(IGNORED_KEYS)
            if getattr(config, key) != DEFAULTS[key]}


def ignored_warning(config: TrainConfig) -> str | None:
    """One line naming the ignored keys the config sets (None if it sets none)."""
    ignored = ignored_settings(config)
    if not ignored:
        return None
    hint = "; --resume continues a run" if "resume" in ignored else ""
    return ("config keys accepted for InsightFace compatibility but ignored here: "
            + ", ".join(f"{key} = {value!r}" for key, value in ignored.items()) + hint)


def data_path(config: TrainConfig) -> Path:
    """``rec`` as a path; relative paths are taken from the project root (``../data/...`` works)."""
    path = Path(config.rec)
    return path if path.is_absolute() or path.exists() else ROOT / path


def dump(config: TrainConfig) -> str:
    return json.dumps(config.to_dict(), indent=2, default=list)
