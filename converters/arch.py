"""Recognise which InsightFace backbone a state_dict holds, from its keys and shapes alone."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Sequence

from torch_reference.specs import IRESNET_LAYERS, MBF_VARIANTS, MODEL_NAMES

from .errors import UserError

Layout = Literal["torch", "paddle"]
UNSUPPORTED_IRESNET = {(3, 128, 896, 3): "r2060"}


@dataclass(frozen=True)
class ArchInfo:
    name: str
    num_features: int

    @property
    def description(self) -> str:
        return f"{describe(self.name)}, {self.num_features}-d embedding"


def describe(name: str) -> str:
    """Human description of a registry name, e.g. ``iresnet blocks 3-4-14-3``."""
    if name in IRESNET_LAYERS:
        return "iresnet blocks " + "-".join(map(str, IRESNET_LAYERS[name]))
    blocks, scale = MBF_VARIANTS[name]
    return f"MobileFaceNet blocks {'-'.join(map(str, blocks))} scale {scale}"


def _count(keys: Sequence[str], pattern: str) -> int:
    """Number of distinct integer indices captured by ``pattern`` (max index + 1), 0 if none."""
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def _linear_out(shape: Sequence[int], layout: Layout) -> int:
    return int(shape[0] if layout == "torch" else shape[-1])


def detect_arch(shapes: Mapping[str, Sequence[int]], path: str | Path, layout: Layout = "torch") -> ArchInfo:
    """Identify the registry name and embedding size; raise ``UserError`` naming what was found."""
    keys = list(shapes)
    if "conv1.weight" in shapes and any(k.startswith("layer1.") for k in keys):
        blocks = tuple(_count(keys, rf"layer{i}\.(\d+)\.") for i in range(1, 5))
        fc = shapes.get("fc.weight")
        if fc is None or len(fc) != 2:
            raise UserError(path, "iresnet checkpoint without a 2-D fc.weight")
        nf = _linear_out(fc, layout)
        for name, layers in IRESNET_LAYERS.items():
            if blocks == layers:
                return ArchInfo(name, nf)
        if blocks in UNSUPPORTED_IRESNET:
            raise UserError(path, f"{UNSUPPORTED_IRESNET[blocks]} is not supported (supported: "
                            f"{', '.join(IRESNET_LAYERS)}, {', '.join(MBF_VARIANTS)})")
        raise UserError(path, f"iresnet with blocks {'-'.join(map(str, blocks))} matches no known depth "
                        f"({', '.join(f'{n} {describe(n)[15:]}' for n in IRESNET_LAYERS)})")
    stem = shapes.get("layers.0.layers.0.weight")
    if stem is not None and len(stem) == 4:
        scale = int(stem[0]) // 64
        unit = r"\.layers\.(\d+)\.layers\.0\.layers\.0\.weight$"
        first = 1 if "layers.1.layers.0.weight" in shapes else _count(keys, r"layers\.1" + unit)
        blocks = (first, *(_count(keys, rf"layers\.{i}" + unit) for i in (3, 5, 7)))
        head = shapes.get("features.layers.2.weight")
        if head is None or len(head) != 2:
            raise UserError(path, "MobileFaceNet checkpoint without a 2-D features.layers.2.weight")
        nf = _linear_out(head, layout)
        for name, variant in MBF_VARIANTS.items():
            if (blocks, scale) == variant:
                return ArchInfo(name, nf)
        raise UserError(path, f"MobileFaceNet with blocks {'-'.join(map(str, blocks))} scale {scale} "
                        f"matches no known variant ({', '.join(f'{n}: {describe(n)}' for n in MBF_VARIANTS)})")
    head = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
    raise UserError(path, f"not an InsightFace iresnet or MobileFaceNet state_dict (keys: {head})")


def resolve_arch(requested: str | None, detected: ArchInfo, path: str | Path, option: str = "--arch") -> ArchInfo:
    """Check a user's ``--arch`` (or another ``option`` naming an architecture) against the checkpoint."""
    if requested is None or requested == detected.name:
        return detected
    if requested not in MODEL_NAMES:
        raise UserError(None, f"{option} {requested}: unknown architecture (known: {', '.join(MODEL_NAMES)})")
    raise UserError(path, f"{option} {requested} expects {describe(requested)}, but the checkpoint is "
                    f"{detected.name} ({detected.description})")
