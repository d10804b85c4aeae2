"""InsightFace's ViT family (vit_t ... vit_h): transformer dimensions and training settings, and the state_dict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._layout import Param, batch_norm, conv2d, layer_norm, linear, parameter

IMG_SIZE = 112


@dataclass(frozen=True)
class ViTSpec:
    """InsightFace's ``VisionTransformer``.

    ``embed_dim``, ``depth``, ``num_heads``, ``patch_size`` and ``mlp_ratio`` fix the weights. ``drop_path_rate``
    (the last block's stochastic-depth rate), ``mask_ratio`` (patch masking in training when > 0) and
    ``use_checkpoint`` (activation checkpointing) only change training, so names that differ in them alone
    hold identical weights. ``norm`` is the token normalisation (InsightFace's ``norm_layer``, "ln") and
    ``bn_eps`` the epsilon of the feature head's two BatchNorm1d.
    """

    embed_dim: int
    depth: int
    num_heads: int = 8
    patch_size: int = 9
    drop_path_rate: float = 0.1
    mask_ratio: float = 0.1
    use_checkpoint: bool = False
    norm: str = "ln"
    bn_eps: float = 2e-5
    mlp_ratio: float = 4.0

    family: ClassVar[str] = "vit"
    embedding_key: ClassVar[str] = "feature.3.weight"

    def __post_init__(self) -> None:
        for field in ("embed_dim", "depth", "num_heads", "patch_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ViT {field} must be a positive int, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"ViT embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.patch_size > IMG_SIZE:
            raise ValueError(f"ViT patch_size {self.patch_size} exceeds the {IMG_SIZE}-pixel input")
        if not 0.0 <= self.drop_path_rate < 1.0 or not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError("ViT drop_path_rate and mask_ratio must lie in [0, 1)")
        if self.norm != "ln":
            raise ValueError(f"ViT norm {self.norm!r} is not supported (InsightFace's released ViTs use 'ln')")

    @property
    def num_patches(self) -> int:
        return (IMG_SIZE // self.patch_size) ** 2

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    def describe(self) -> str:
        return (f"ViT dim {self.embed_dim} depth {self.depth} heads {self.num_heads} patch {self.patch_size}")

    def model_kwargs(self, num_features: int) -> dict:
        """Constructor arguments of either framework's ``VisionTransformer`` for this spec."""
        return dict(img_size=IMG_SIZE, patch_size=self.patch_size, num_classes=num_features,
                    embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                    drop_path_rate=self.drop_path_rate, mask_ratio=self.mask_ratio,
                    using_checkpoint=self.use_checkpoint, feature_bn_eps=self.bn_eps)

    def weights_signature(self) -> tuple:
        return (self.family, self.embed_dim, self.depth, self.num_heads, self.patch_size, self.mlp_ratio,
                self.norm)

    def layout(self, num_features: int) -> list[Param]:
        d, hidden = self.embed_dim, self.mlp_hidden
        # the model's own parameters come first in a PyTorch state_dict, then its children in order
        out = parameter("pos_embed", (1, self.num_patches, d)) + parameter("mask_token", (1, 1, d))
        out += conv2d("patch_embed.proj", 3, d, self.patch_size, bias=True)
        for i in range(self.depth):
            p = f"blocks.{i}"
            out += layer_norm(f"{p}.norm1", d) + layer_norm(f"{p}.norm2", d)
            out += linear(f"{p}.attn.qkv", d, 3 * d, bias=False) + linear(f"{p}.attn.proj", d, d)
            out += linear(f"{p}.mlp.fc1", d, hidden) + linear(f"{p}.mlp.fc2", hidden, d)
        out += layer_norm("norm", d)
        out += linear("feature.0", d * self.num_patches, d, bias=False) + batch_norm("feature.1", d, dims=1)
        out += linear("feature.2", d, num_features, bias=False)
        return out + batch_norm("feature.3", num_features, dims=1)
