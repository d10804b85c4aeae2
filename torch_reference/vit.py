"""InsightFace's ViT face-recognition backbones (``vit_t`` ... ``vit_h``) in PyTorch.

Written from a description of InsightFace's ``VisionTransformer`` (not its code) so that ``state_dict()`` has
exactly its keys, order, shapes and dtypes: ``pos_embed``, ``mask_token``, ``patch_embed.proj.*``, per block
``norm1``, ``norm2``, ``attn.qkv`` (no bias), ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``, then ``norm.*`` and the
``feature`` head (Linear without bias -> BatchNorm1d eps 2e-5 -> Linear without bias -> BatchNorm1d eps 2e-5).

Input ``[N, 3, 112, 112]`` RGB in [-1, 1]; a 9x9 stride-9 patch embedding gives 144 tokens. Output: the
un-normalised embedding ``[N, num_features]``.

Training mode follows InsightFace:

* random patch masking: per-sample noise ``[N, 144]`` is argsorted (``ids_shuffle``), argsorted again
  (``ids_restore``); the first ``int(144 * (1 - 0.1))`` = 129 shuffled tokens go through the blocks, and after
  the final ``norm`` the dropped positions are filled with ``mask_token`` and put back in place through
  ``ids_restore``. InsightFace's ``mask_ratio`` only switches masking on (> 0): its masking routine is called
  with its default fraction 0.1, so ``vit_b_dp005_mask_005`` masks 15 of 144 tokens, not 8
  (``MASKED_FRACTION``);
* stochastic depth: block ``i`` drops each residual branch per sample with probability
  ``torch.linspace(0, drop_path_rate, depth)[i]`` (float32 values) and scales kept samples by 1/keep_prob;
  a block with rate 0 has an ``nn.Identity`` there;
* optional activation checkpointing of every block (``torch.utils.checkpoint``).

The randomness is injectable so that a test can feed two frameworks identical masks: ``forward(x, noise=...,
drop_masks=...)`` or ``inject_randomness(...)`` for callers that only pass ``x``. ``noise`` is ``[N, 144]``
(any float dtype; only its order matters) and ``drop_masks`` is ``[depth, 2, N]`` of 0/1 keep flags (branch 0
attention, 1 MLP); rows of blocks with rate 0 are ignored. Without injection they are drawn from torch's
generator, before the blocks run, so that a checkpointed block recomputes with the same masks.

Attention scores, softmax and the final ``norm`` run in float32 even under CUDA autocast (in float64 when the
model is float64; InsightFace casts to float32, which would fail in float64).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from architectures import spec_of

IMG_SIZE = 112
PATCH_SIZE = 9
NUM_PATCHES = (IMG_SIZE // PATCH_SIZE) ** 2  # 144, row-major
NUM_HEADS = 8
MLP_RATIO = 4.0
FEATURE_BN_EPS = 2e-5
MASKED_FRACTION = 0.1  # what InsightFace masks whenever mask_ratio > 0
INIT_STD = 0.02




def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
    """Per-block stochastic-depth rates as InsightFace computes them (a float32 ``torch.linspace``)."""
    return [v.item() for v in torch.linspace(0, drop_path_rate, depth, device="cpu")]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half precisions, else the dtype itself (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


class DropPath(nn.Module):
    """Per-sample stochastic depth: ``x * keep / keep_prob`` with ``keep`` a 0/1 flag per sample."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep_prob = 1.0 - self.drop_prob
        if keep is None:
            keep = x.new_empty(x.shape[0]).bernoulli_(keep_prob)
        scale = keep.to(x.dtype) / keep_prob
        return x * scale.reshape((x.shape[0],) + (1,) * (x.ndim - 1))

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """fc1 -> ReLU6 -> dropout -> fc2 -> dropout (the same dropout module twice, p = 0)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention; ``qkv`` has no bias, ``proj`` has one."""

    def __init__(self, dim: int, num_heads: int = NUM_HEADS):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        with torch.autocast("cuda", enabled=x.is_cuda):
            qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        with torch.autocast("cuda", enabled=False):
            dtype = _compute_dtype(qkv.dtype)
            q, k, v = qkv[0].to(dtype), qkv[1].to(dtype), qkv[2].to(dtype)
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            out = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(n, t, d)
        with torch.autocast("cuda", enabled=x.is_cuda):
            return self.proj_drop(self.proj(out))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + drop_path(attn(norm1(x)))``, then ``x + drop_path(mlp(norm2(x)))``."""

    def __init__(self, dim: int, num_heads: int, drop_path: float, mlp_ratio: float = MLP_RATIO):
        super().__init__()
        # registration order is the state_dict order: norm1, norm2, attn, mlp
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _drop(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        return self.drop_path(x, keep) if isinstance(self.drop_path, DropPath) else self.drop_path(x)

    def forward(self, x: torch.Tensor, keep_attn: torch.Tensor | None = None,
                keep_mlp: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self._drop(self.attn(self.norm1(x)), keep_attn)
        with torch.autocast("cuda", enabled=x.is_cuda):
            return x + self._drop(self.mlp(self.norm2(x)), keep_mlp)


class PatchEmbed(nn.Module):
    """Conv2d(3, D, 9, stride 9) -> ``[N, 144, D]`` tokens in row-major patch order."""

    def __init__(self, img_size: int = IMG_SIZE, patch_size: int = PATCH_SIZE, in_channels: int = 3,
                 embed_dim: int = 256):
        super().__init__()
        self.img_size = img_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != (self.img_size, self.img_size):
            raise ValueError(f"input size {tuple(x.shape[2:])} is not {self.img_size}x{self.img_size}")
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """InsightFace's ``VisionTransformer`` (LayerNorm variant) with its module names and init."""

    def __init__(self, img_size: int = IMG_SIZE, patch_size: int = PATCH_SIZE, in_channels: int = 3,
                 num_classes: int = 512, embed_dim: int = 256, depth: int = 12, num_heads: int = NUM_HEADS,
                 mlp_ratio: float = MLP_RATIO, drop_path_rate: float = 0.0, mask_ratio: float = 0.1,
                 using_checkpoint: bool = False, feature_bn_eps: float = FEATURE_BN_EPS):
        super().__init__()
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(img_size, patch_size, in_channels, embed_dim)
        self.mask_ratio = mask_ratio
        self.masked_fraction = MASKED_FRACTION
        self.using_checkpoint = using_checkpoint
        self.num_patches = self.patch_embed.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(0.0)
        self.drop_path_rates = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, rate, mlp_ratio) for rate in self.drop_path_rates])
        self.norm = nn.LayerNorm(embed_dim)
        self.feature = nn.Sequential(
            nn.Linear(embed_dim * self.num_patches, embed_dim, bias=False),
            nn.BatchNorm1d(embed_dim, eps=feature_bn_eps),
            nn.Linear(embed_dim, num_classes, bias=False),
            nn.BatchNorm1d(num_classes, eps=feature_bn_eps),
        )
        # created (and so listed) whatever mask_ratio is, as in InsightFace
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self._injected: tuple[Any, Any] = (None, None)
        if not self.pos_embed.is_meta:  # a meta model (read for its layout) has nothing to initialise
            self._init_weights()

    def _init_weights(self) -> None:
        # truncation at +-2 (absolute) is > 100 std: in effect a normal distribution
        nn.init.normal_(self.mask_token, std=INIT_STD)
        nn.init.trunc_normal_(self.pos_embed, std=INIT_STD)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=INIT_STD)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # patch_embed.proj and the BatchNorms keep PyTorch's defaults

    # ------------------------------------------------------------------------------------ randomness
    def inject_randomness(self, noise: Any = None, drop_masks: Any = None) -> None:
        """Masks used by every later train-mode forward that is not given its own; no arguments clears."""
        self._injected = (noise, drop_masks)

    def _keep_masks(self, n: int, x: torch.Tensor, drop_masks: Any) -> list[tuple[Any, Any]]:
        """Per block (keep_attn, keep_mlp): ``None`` where nothing is dropped, else 0/1 flags ``[n]``."""
        depth = len(self.blocks)
        if not self.training:
            return [(None, None)] * depth
        if drop_masks is not None:
            drop_masks = torch.as_tensor(drop_masks, device=x.device)
            if tuple(drop_masks.shape) != (depth, 2, n):
                raise ValueError(f"drop_masks has shape {tuple(drop_masks.shape)}, expected {(depth, 2, n)}")
        keeps = []
        for i, rate in enumerate(self.drop_path_rates):
            if rate <= 0.0:
                keeps.append((None, None))
            elif drop_masks is not None:
                keeps.append((drop_masks[i, 0], drop_masks[i, 1]))
            else:
                flags = torch.empty(2, n, device=x.device, dtype=x.dtype).bernoulli_(1.0 - rate)
                keeps.append((flags[0], flags[1]))
        return keeps

    def random_masking(self, x: torch.Tensor, noise: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep ``int(L * (1 - masked_fraction))`` tokens per sample, chosen by ascending noise."""
        n, length, d = x.shape
        len_keep = int(length * (1 - self.masked_fraction))
        if noise is None:
            noise = torch.rand(n, length, device=x.device)
        noise = torch.as_tensor(noise, device=x.device)
        if tuple(noise.shape) != (n, length):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {(n, length)}")
        ids_shuffle = torch.argsort(noise, dim=1, stable=True)
        ids_restore = torch.argsort(ids_shuffle, dim=1, stable=True)
        ids_keep = ids_shuffle[:, :len_keep]
        return torch.gather(x, 1, ids_keep.unsqueeze(-1).repeat(1, 1, d)), ids_restore

    # --------------------------------------------------------------------------------------- forward
    def forward_features(self, x: torch.Tensor, noise: Any = None, drop_masks: Any = None) -> torch.Tensor:
        n = x.shape[0]
        if noise is None and drop_masks is None:
            noise, drop_masks = self._injected
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)
        masking = self.training and self.mask_ratio > 0
        if masking:
            x, ids_restore = self.random_masking(x, noise)
        for block, (keep_attn, keep_mlp) in zip(self.blocks, self._keep_masks(n, x, drop_masks)):
            if self.using_checkpoint and self.training:
                x = checkpoint(block, x, keep_attn, keep_mlp, use_reentrant=False)
            else:
                x = block(x, keep_attn, keep_mlp)
        x = self.norm(x.to(_compute_dtype(x.dtype)))
        if masking:
            fill = self.mask_token.to(x.dtype).repeat(n, ids_restore.shape[1] - x.shape[1], 1)
            x = torch.cat([x, fill], dim=1)
            x = torch.gather(x, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        return x.reshape(n, self.num_patches * self.embed_dim)

    def forward(self, x: torch.Tensor, noise: Any = None, drop_masks: Any = None) -> torch.Tensor:
        return self.feature(self.forward_features(x, noise, drop_masks))


def vit(name: str = "vit_t", num_features: int = 512, **overrides: Any) -> VisionTransformer:
    """Build the registered ViT ``name``; keyword ``overrides`` replace any constructor argument
    (e.g. ``depth=2`` for a fast test model)."""
    spec = spec_of(name)
    if spec.family != "vit":
        raise ValueError(f"{name} is not a ViT ({spec.describe()})")
    return vit_from_spec(spec, num_features, **overrides)


def vit_from_spec(spec: Any, num_features: int = 512, **overrides: Any) -> VisionTransformer:
    """Build the ViT a registry ``ViTSpec`` describes, with constructor ``overrides``."""
    kwargs: dict[str, Any] = spec.model_kwargs(num_features)
    kwargs.update(overrides)
    return VisionTransformer(**kwargs)
