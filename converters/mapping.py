"""The one table that maps InsightFace's PyTorch state_dict to the Paddle backbones and back.

Mapping is by name with shape checks, never by position. Each rule says, for a parameter of a given
torch module type, what the Paddle layer calls it and how its layout changes. The per-architecture
key list (``layout``) comes from the registry (``architectures``), with no framework imported; the parity
suite proves it equals both the PyTorch reference's and the Paddle model's ``state_dict`` key for key.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from architectures import Spec, spec_of

from .checkpoint import PaddleWeights
from .errors import UserError

FORMAT_VERSION = 1


def _transpose(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.T)


@dataclass(frozen=True)
class Rule:
    """torch ``<module type>.<torch_name>`` is Paddle ``<paddle_name>``, transposed or not."""

    modules: tuple[str, ...]
    torch_name: str
    paddle_name: str | None  # None: Paddle has no such state; kept in the weights file's metadata
    transpose: bool = False  # a Linear weight: torch [out, in], Paddle [in, out]

    def to_paddle(self, a: np.ndarray) -> np.ndarray:
        return _transpose(a) if self.transpose else a

    def to_torch(self, a: np.ndarray) -> np.ndarray:
        return _transpose(a) if self.transpose else a

    def paddle_shape(self, torch_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(reversed(torch_shape)) if self.transpose else tuple(torch_shape)


BATCH_NORMS = ("BatchNorm1d", "BatchNorm2d")
RULES: tuple[Rule, ...] = (
    Rule(("Conv2d",), "weight", "weight"),  # [out, in/groups, kh, kw] in both
    Rule(("Linear",), "weight", "weight", transpose=True),  # torch [out, in], Paddle [in, out]
    Rule(("Linear",), "bias", "bias"),
    Rule(BATCH_NORMS, "weight", "weight"),
    Rule(BATCH_NORMS, "bias", "bias"),
    Rule(BATCH_NORMS, "running_mean", "_mean"),
    Rule(BATCH_NORMS, "running_var", "_variance"),
    Rule(BATCH_NORMS, "num_batches_tracked", None),
    Rule(("PReLU",), "weight", "_weight"),
    Rule(("Conv2d",), "bias", "bias"),  # ViT patch embedding
    Rule(("LayerNorm",), "weight", "weight"),
    Rule(("LayerNorm",), "bias", "bias"),
    Rule(("Parameter",), "pos_embed", "pos_embed"),  # [1, patches, D] in both
    Rule(("Parameter",), "mask_token", "mask_token"),  # [1, 1, D] in both
)


@dataclass(frozen=True)
class Entry:
    """One state_dict entry in both frameworks."""

    torch_key: str
    torch_shape: tuple[int, ...]
    torch_dtype: str  # "float32" or "int64"
    module: str  # torch module path, e.g. "layer1.0.bn1"
    module_type: str
    rule: Rule

    @property
    def paddle_key(self) -> str | None:
        if self.rule.paddle_name is None:
            return None
        return f"{self.module}.{self.rule.paddle_name}" if self.module else self.rule.paddle_name

    @property
    def paddle_shape(self) -> tuple[int, ...]:
        return self.rule.paddle_shape(self.torch_shape)


def _find_rule(module_type: str, name: str) -> Rule:
    for rule in RULES:
        if module_type in rule.modules and rule.torch_name == name:
            return rule
    raise KeyError(f"no mapping rule for {module_type}.{name}")


def layout(arch: str, num_features: int = 512) -> tuple[Entry, ...]:
    """Every state_dict entry of ``arch`` in InsightFace's order, with its Paddle name and shape."""
    return _layout(spec_of(arch), num_features)


@functools.cache
def _layout(spec: Spec, num_features: int) -> tuple[Entry, ...]:
    entries = []
    for p in spec.layout(num_features):
        name = p.key.rpartition(".")[2]
        entries.append(Entry(p.key, p.shape, p.dtype, p.module, p.module_type, _find_rule(p.module_type, name)))
    return tuple(entries)


def _check_keys(found: Iterable[str], expected: Iterable[str], path: str | Path, arch: str) -> None:
    found, expected = list(found), list(expected)
    found_set, expected_set = set(found), set(expected)
    missing = [k for k in expected if k not in found_set]
    extra = [k for k in found if k not in expected_set]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(path, f"missing key {missing[0]}{more}: {arch} needs all {len(expected)} entries")
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise UserError(path, f"unexpected key {extra[0]}{more}: not part of {arch}")


def _check_array(key: str, arr: np.ndarray, shape: tuple[int, ...], dtype: str, path: str | Path,
                 arch: str) -> None:
    if tuple(arr.shape) != shape:
        raise UserError(path, f"{key}: shape {list(arr.shape)} but {arch} expects {list(shape)}")
    kind = "i" if dtype == "int64" else "f"
    if arr.dtype.kind not in (kind, "u" if kind == "i" else kind):
        raise UserError(path, f"{key}: dtype {arr.dtype} but {arch} expects {dtype}")
    if kind == "f" and not np.isfinite(arr).all():
        raise UserError(path, f"{key}: contains NaN or infinite values")


def torch_to_paddle(arrays: Mapping[str, np.ndarray], arch: str, num_features: int,
                    path: str | Path) -> PaddleWeights:
    """InsightFace-named arrays -> Paddle-named arrays; strict on keys, shapes and dtypes."""
    entries = layout(arch, num_features)
    _check_keys(arrays, [e.torch_key for e in entries], path, arch)
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    tracked: dict[str, int] = {}
    for e in entries:
        arr = arrays[e.torch_key]
        _check_array(e.torch_key, arr, e.torch_shape, e.torch_dtype, path, arch)
        if e.paddle_key is None:
            tracked[e.torch_key] = int(arr)
        else:
            out[e.paddle_key] = e.rule.to_paddle(np.asarray(arr, dtype=np.float32))
    meta = {"format": FORMAT_VERSION, "arch": arch, "num_features": num_features,
            "num_batches_tracked": tracked}
    return PaddleWeights(out, meta)


def paddle_to_torch(weights: PaddleWeights, arch: str, num_features: int,
                    path: str | Path) -> OrderedDict[str, np.ndarray]:
    """Paddle-named arrays -> InsightFace's state_dict (keys, order, dtypes), strict.

    ``num_batches_tracked`` comes from the file's metadata when this project wrote it, else zeros.
    """
    entries = layout(arch, num_features)
    _check_keys(weights.arrays, [e.paddle_key for e in entries if e.paddle_key], path, arch)
    tracked = weights.meta.get("num_batches_tracked", {})
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for e in entries:
        if e.paddle_key is None:
            out[e.torch_key] = np.array(int(tracked.get(e.torch_key, 0)), dtype=np.int64)
            continue
        arr = weights.arrays[e.paddle_key]
        _check_array(e.paddle_key, arr, e.paddle_shape, e.torch_dtype, path, arch)
        out[e.torch_key] = e.rule.to_torch(arr)
    return out


def trainable_pairs(arch: str, num_features: int = 512) -> list[tuple[str, str, Callable[[np.ndarray], np.ndarray]]]:
    """(torch name, Paddle name, Paddle-to-torch layout) of every trainable backbone parameter: each
    weight and bias (PReLU slopes included) and a ViT's ``pos_embed`` and ``mask_token``, but no BatchNorm
    statistics and not iresnet's frozen ``features.weight``."""
    frozen = "features.weight" if spec_of(arch).family == "iresnet" else None
    return [(e.torch_key, e.paddle_key, e.rule.to_torch) for e in layout(arch, num_features)
            if e.paddle_key and e.rule.torch_name not in ("running_mean", "running_var") and e.torch_key != frozen]
