"""The InsightFace backbone registry as plain data (no torch import): blocks per stage and variants."""

from __future__ import annotations

# iresnet blocks per stage, keyed by registry name (reference §1.1)
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}
# MobileFaceNet (blocks, scale) keyed by registry name (reference §1.5)
MBF_VARIANTS: dict[str, tuple[tuple[int, int, int, int], int]] = {
    "mbf": ((1, 4, 6, 2), 2),
    "mbf_large": ((2, 8, 12, 4), 4),
}
MODEL_NAMES: tuple[str, ...] = (*IRESNET_LAYERS, *MBF_VARIANTS)
