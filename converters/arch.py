"""Recognise which registered backbone a state_dict holds, from its keys and shapes alone.

Nothing here describes an architecture: every registered name's expected layout comes from the registry
(``architectures``) through the mapping table, in PyTorch's naming or Paddle's, and a checkpoint matches a
name when it has exactly those keys with those shapes. Names whose weights are interchangeable (the ViT
names that differ only in training settings) all match; detection then reports the first, with the others
as alternatives, and the user's ``--arch`` picks among them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Sequence

import architectures
from architectures import describe

from .errors import UserError
from .mapping import layout

Layout = Literal["torch", "paddle"]


@dataclass(frozen=True)
class ArchInfo:
    name: str
    num_features: int
    same_weights: tuple[str, ...] = ()  # every registered name the weights fit, ``name`` first

    @property
    def description(self) -> str:
        return f"{describe(self.name)}, {self.num_features}-d embedding"

    @property
    def alternatives(self) -> tuple[str, ...]:
        return tuple(n for n in self.same_weights if n != self.name)


def expected_shapes(name: str, num_features: int, kind: Layout) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``name``'s state_dict in PyTorch's or Paddle's naming and layout."""
    entries = layout(name, num_features)
    if kind == "torch":
        return {e.torch_key: e.torch_shape for e in entries}
    return {e.paddle_key: e.paddle_shape for e in entries if e.paddle_key}


def _embedding_size(shapes: Mapping[str, Sequence[int]], name: str) -> int | None:
    shape = shapes.get(architectures.spec_of(name).embedding_key)
    if shape is None or len(shape) != 1 or int(shape[0]) < 1:
        return None
    return int(shape[0])


def _first_difference(shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]],
                      name: str) -> str:
    for key, shape in expected.items():
        if key not in shapes:
            return f"missing key {key}"
        if shapes[key] != shape:
            return f"{key}: shape {list(shapes[key])} but {name} expects {list(shape)}"
    extra = next(k for k in shapes if k not in expected)
    return f"unexpected key {extra}"


def detect_arch(shapes: Mapping[str, Sequence[int]], path: str | Path, layout: Layout = "torch") -> ArchInfo:
    """Identify the registry name and embedding size; raise ``UserError`` naming the nearest architecture
    and its first difference when nothing matches."""
    found = {k: tuple(int(s) for s in v) for k, v in shapes.items()}
    matches: list[tuple[str, int]] = []
    nearest: tuple[int, str, int] | None = None  # (entries that differ, name, embedding size)
    for name in architectures.names():
        nf = _embedding_size(found, name)
        expected = expected_shapes(name, nf or 512, layout)
        if nf is not None and len(expected) == len(found) and expected == found:
            matches.append((name, nf))
            continue
        common = sum(1 for k, s in expected.items() if found.get(k) == s)
        differ = len(expected) + len(found) - 2 * common
        if common and (nearest is None or differ < nearest[0]):
            nearest = (differ, name, nf or 512)
    if matches:
        name, nf = matches[0]
        return ArchInfo(name, nf, tuple(n for n, _ in matches))
    if nearest is None:
        head = ", ".join(list(found)[:4]) + (", ..." if len(found) > 4 else "")
        raise UserError(path, f"not an InsightFace state_dict of a registered architecture "
                        f"({', '.join(architectures.names())}); keys: {head or 'none'}")
    _, name, nf = nearest
    difference = _first_difference(found, expected_shapes(name, nf, layout), name)
    raise UserError(path, f"matches no registered architecture; nearest is {name} ({describe(name)}): "
                    f"{difference}")


def resolve_arch(requested: str | None, detected: ArchInfo, path: str | Path, option: str = "--arch") -> ArchInfo:
    """Check a user's ``--arch`` (or another ``option`` naming an architecture) against the checkpoint."""
    if requested is None or requested == detected.name:
        return detected
    if requested in detected.same_weights:
        return ArchInfo(requested, detected.num_features, detected.same_weights)
    if requested not in architectures.names():
        raise UserError(None, f"{option} {requested}: unknown architecture (known: "
                        f"{', '.join(architectures.names())})")
    raise UserError(path, f"{option} {requested} expects {describe(requested)}, but the checkpoint is "
                    f"{detected.name} ({detected.description})")
