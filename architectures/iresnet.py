"""The iresnet family (r18 ... r2060): blocks per stage, and the state_dict they imply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._layout import Param, batch_norm, conv2d, linear, prelu

STAGE_WIDTHS = (64, 128, 256, 512)
FC_SCALE = 7 * 7  # spatial size of the last feature map for 112x112 inputs


@dataclass(frozen=True)
class IResNetSpec:
    """InsightFace's iresnet with ``blocks`` IBasicBlocks in its four stages."""

    blocks: tuple[int, int, int, int]

    family: ClassVar[str] = "iresnet"
    embedding_key: ClassVar[str] = "features.weight"

    def __post_init__(self) -> None:
        if len(self.blocks) != 4 or any(not isinstance(b, int) or b < 1 for b in self.blocks):
            raise ValueError(f"iresnet blocks must be four positive ints, got {self.blocks!r}")

    def describe(self) -> str:
        return "iresnet blocks " + "-".join(map(str, self.blocks))

    def weights_signature(self) -> tuple:
        return (self.family, self.blocks)

    def layout(self, num_features: int) -> list[Param]:
        out = conv2d("conv1", 3, 64, 3) + batch_norm("bn1", 64) + prelu("prelu", 64)
        inplanes = 64
        for stage, (width, count) in enumerate(zip(STAGE_WIDTHS, self.blocks), start=1):
            for b in range(count):
                p = f"layer{stage}.{b}"
                cin = inplanes if b == 0 else width
                out += batch_norm(f"{p}.bn1", cin) + conv2d(f"{p}.conv1", cin, width, 3)
                out += batch_norm(f"{p}.bn2", width) + prelu(f"{p}.prelu", width)
                out += conv2d(f"{p}.conv2", width, width, 3) + batch_norm(f"{p}.bn3", width)
                if b == 0:  # the first block of every stage downsamples its shortcut
                    out += conv2d(f"{p}.downsample.0", cin, width, 1) + batch_norm(f"{p}.downsample.1", width)
            inplanes = width
        out += batch_norm("bn2", 512) + linear("fc", 512 * FC_SCALE, num_features)
        return out + batch_norm("features", num_features, dims=1)
