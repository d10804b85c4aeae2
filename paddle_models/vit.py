"""InsightFace's ViT face-recognition backbones (``vit_t`` ... ``vit_h``) in Paddle, with the PyTorch twin's
sublayer names.

Parameter names equal PyTorch's except where Paddle's layers name them differently (BatchNorm ``_mean`` /
``_variance``, no ``num_batches_tracked``); every Linear weight is stored ``[in, out]``, the transpose of
PyTorch's. ``pos_embed`` ``[1, 144, D]`` and ``mask_token`` ``[1, 1, D]`` keep PyTorch's shapes.

The network, the training-mode randomness and its injection follow the PyTorch reference exactly:

* patch masking (when ``mask_ratio > 0``) keeps ``int(144 * (1 - 0.1))`` = 129 tokens per sample, chosen by
  argsorting per-sample noise ``[N, 144]`` (stable sort), and after the final ``norm`` fills the dropped
  positions with ``mask_token`` and restores the order;
* stochastic depth with PyTorch's float32 ``linspace`` rates (``drop_path_rates`` reproduces them exactly),
  ``x * keep / keep_prob`` per sample;
* optional recomputation of every block in training (``paddle.distributed.fleet.utils.recompute``).

``forward(x, noise=..., drop_masks=...)`` or ``inject_randomness(...)`` supplies the noise ``[N, 144]`` and the
keep flags ``[depth, 2, N]`` (branch 0 attention, 1 MLP); otherwise they come from Paddle's generator, drawn
before the blocks run so that a recomputed block sees the same masks. Attention and the final ``norm`` run in
float32 at least (float64 models stay float64). Build a float64 model under
``paddle.set_default_dtype("float64")``; its LayerNorm and BatchNorm still apply epsilon as a float32 value
(1e-5 -> 9.99999974737875e-06), so a float64 PyTorch twin matches it to ~1e-14 only with rounded epsilons.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from architectures import spec_of

from .layers import BN_MOMENTUM, amp_enabled

IMG_SIZE = 112
PATCH_SIZE = 9
NUM_PATCHES = (IMG_SIZE // PATCH_SIZE) ** 2  # 144, row-major
NUM_HEADS = 8
MLP_RATIO = 4.0
LN_EPS = 1e-5
FEATURE_BN_EPS = 2e-5
MASKED_FRACTION = 0.1  # what InsightFace masks whenever mask_ratio > 0
INIT_STD = 0.02




def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
    """PyTorch's float32 ``linspace(0, rate, depth)`` values, bit for bit.

    The step is the float32 quotient; the first half of the points is ``round32(step * i)`` and the second
    half ``round32(rate - step * (depth - 1 - i))``, each with one rounding (the fused multiply-add PyTorch's
    CPU kernel compiles to). numpy's or Paddle's linspace differ from it in the last bit for most depths.
    """
    if depth == 1:
        return [0.0]
    end = np.float32(drop_path_rate)
    step = np.float64(end / np.float32(depth - 1))
    rates = []
    for i in range(depth):
        exact = step * i if i < depth // 2 else np.float64(end) - step * (depth - 1 - i)
        rates.append(float(np.float32(exact)))
    return rates


def _compute_dtype(x: paddle.Tensor) -> Any:
    return paddle.float32 if x.dtype in (paddle.float16, paddle.bfloat16) else x.dtype


def _trunc_normal_attr() -> paddle.ParamAttr:
    # bounds +-2 (absolute), as PyTorch's trunc_normal_: > 100 std, in effect a normal distribution
    return paddle.ParamAttr(initializer=nn.initializer.TruncatedNormal(0.0, INIT_STD, a=-2.0, b=2.0))


def _zeros_attr() -> paddle.ParamAttr:
    return paddle.ParamAttr(initializer=nn.initializer.Constant(0.0))


def linear(cin: int, cout: int, bias: bool = True) -> nn.Linear:
    """Linear with trunc_normal(0.02) weights ``[in, out]`` and zero bias."""
    return nn.Linear(cin, cout, weight_attr=_trunc_normal_attr(), bias_attr=_zeros_attr() if bias else False)


def layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, epsilon=LN_EPS, weight_attr=paddle.ParamAttr(initializer=nn.initializer.Constant(1.0)),
                        bias_attr=_zeros_attr())


def feature_bn(c: int, eps: float = FEATURE_BN_EPS) -> nn.BatchNorm1D:
    return nn.BatchNorm1D(c, momentum=BN_MOMENTUM, epsilon=eps,
                          weight_attr=paddle.ParamAttr(initializer=nn.initializer.Constant(1.0)),
                          bias_attr=_zeros_attr())


class DropPath(nn.Layer):
    """Per-sample stochastic depth: ``x * keep / keep_prob`` with ``keep`` a 0/1 flag per sample."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: paddle.Tensor, keep: paddle.Tensor | None = None) -> paddle.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep_prob = 1.0 - self.drop_prob
        if keep is None:
            keep = paddle.bernoulli(paddle.full([x.shape[0]], keep_prob, dtype=x.dtype))
        scale = keep.astype(x.dtype) / keep_prob
        return x * scale.reshape([x.shape[0]] + [1] * (x.ndim - 1))

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Layer):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = linear(dim, hidden)
        self.act = nn.ReLU6()
        self.fc2 = linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Layer):
    def __init__(self, dim: int, num_heads: int = NUM_HEADS):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = linear(dim, dim * 3, bias=False)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        n, t, d = x.shape
        amp = amp_enabled(True, x)
        with paddle.amp.auto_cast(enable=amp):
            qkv = self.qkv(x).reshape([n, t, 3, self.num_heads, d // self.num_heads]).transpose([2, 0, 3, 1, 4])
        with paddle.amp.auto_cast(enable=False):
            dtype = _compute_dtype(qkv)
            q, k, v = qkv[0].astype(dtype), qkv[1].astype(dtype), qkv[2].astype(dtype)
            attn = F.softmax(paddle.matmul(q, k, transpose_y=True) * self.scale, axis=-1)
            out = paddle.matmul(self.attn_drop(attn), v).transpose([0, 2, 1, 3]).reshape([n, t, d])
        with paddle.amp.auto_cast(enable=amp):
            return self.proj_drop(self.proj(out))


class Block(nn.Layer):
    def __init__(self, dim: int, num_heads: int, drop_path: float, mlp_ratio: float = MLP_RATIO):
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.norm2 = layer_norm(dim)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _drop(self, x: paddle.Tensor, keep: paddle.Tensor | None) -> paddle.Tensor:
        return self.drop_path(x, keep) if isinstance(self.drop_path, DropPath) else self.drop_path(x)

    def forward(self, x: paddle.Tensor, keep_attn: paddle.Tensor | None = None,
                keep_mlp: paddle.Tensor | None = None) -> paddle.Tensor:
        x = x + self._drop(self.attn(self.norm1(x)), keep_attn)
        with paddle.amp.auto_cast(enable=amp_enabled(True, x)):
            return x + self._drop(self.mlp(self.norm2(x)), keep_mlp)


class PatchEmbed(nn.Layer):
    def __init__(self, img_size: int = IMG_SIZE, patch_size: int = PATCH_SIZE, in_channels: int = 3,
                 embed_dim: int = 256):
        super().__init__()
        self.img_size = img_size
        self.num_patches = (img_size // patch_size) ** 2
        bound = 1.0 / math.sqrt(in_channels * patch_size * patch_size)  # PyTorch's default Conv2d init
        uniform = nn.initializer.Uniform(-bound, bound)
        self.proj = nn.Conv2D(in_channels, embed_dim, patch_size, stride=patch_size,
                              weight_attr=paddle.ParamAttr(initializer=uniform),
                              bias_attr=paddle.ParamAttr(initializer=nn.initializer.Uniform(-bound, bound)))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if tuple(x.shape[2:]) != (self.img_size, self.img_size):
            raise ValueError(f"input size {tuple(x.shape[2:])} is not {self.img_size}x{self.img_size}")
        return self.proj(x).flatten(2).transpose([0, 2, 1])


class VisionTransformer(nn.Layer):
    def __init__(self, img_size: int = IMG_SIZE, patch_size: int = PATCH_SIZE, in_channels: int = 3,
                 num_classes: int = 512, embed_dim: int = 256, depth: int = 12, num_heads: int = NUM_HEADS,
                 mlp_ratio: float = MLP_RATIO, drop_path_rate: float = 0.0, mask_ratio: float = 0.1,
                 using_checkpoint: bool = False, feature_bn_eps: float = FEATURE_BN_EPS):
        super().__init__()
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.num_patches = (img_size // patch_size) ** 2
        # parameters first, in PyTorch's state_dict order
        self.pos_embed = self.create_parameter([1, self.num_patches, embed_dim], attr=_trunc_normal_attr())
        self.mask_token = self.create_parameter(
            [1, 1, embed_dim], attr=paddle.ParamAttr(initializer=nn.initializer.Normal(0.0, INIT_STD)))
        self.patch_embed = PatchEmbed(img_size, patch_size, in_channels, embed_dim)
        self.mask_ratio = mask_ratio
        self.masked_fraction = MASKED_FRACTION
        self.using_checkpoint = using_checkpoint
        self.pos_drop = nn.Dropout(0.0)
        self.drop_path_rates = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.LayerList([Block(embed_dim, num_heads, rate, mlp_ratio) for rate in self.drop_path_rates])
        self.norm = layer_norm(embed_dim)
        self.feature = nn.Sequential(
            linear(embed_dim * self.num_patches, embed_dim, bias=False),
            feature_bn(embed_dim, feature_bn_eps),
            linear(embed_dim, num_classes, bias=False),
            feature_bn(num_classes, feature_bn_eps),
        )
        self._injected: tuple[Any, Any] = (None, None)

    # ------------------------------------------------------------------------------------ randomness
    def inject_randomness(self, noise: Any = None, drop_masks: Any = None) -> None:
        """Masks used by every later train-mode forward that is not given its own; no arguments clears."""
        self._injected = (noise, drop_masks)

    def _keep_masks(self, n: int, x: paddle.Tensor, drop_masks: Any) -> list[tuple[Any, Any]]:
        depth = len(self.blocks)
        if not self.training:
            return [(None, None)] * depth
        if drop_masks is not None:
            drop_masks = paddle.to_tensor(drop_masks) if not isinstance(drop_masks, paddle.Tensor) else drop_masks
            if tuple(drop_masks.shape) != (depth, 2, n):
                raise ValueError(f"drop_masks has shape {tuple(drop_masks.shape)}, expected {(depth, 2, n)}")
            drop_masks = drop_masks.astype(x.dtype)
        keeps = []
        for i, rate in enumerate(self.drop_path_rates):
            if rate <= 0.0:
                keeps.append((None, None))
            elif drop_masks is not None:
                keeps.append((drop_masks[i, 0], drop_masks[i, 1]))
            else:
                flags = paddle.bernoulli(paddle.full([2, n], 1.0 - rate, dtype=x.dtype))
                keeps.append((flags[0], flags[1]))
        return keeps

    def random_masking(self, x: paddle.Tensor, noise: Any = None) -> tuple[paddle.Tensor, paddle.Tensor]:
        n, length, d = x.shape
        len_keep = int(length * (1 - self.masked_fraction))
        if noise is None:
            noise = paddle.rand([n, length])
        elif not isinstance(noise, paddle.Tensor):
            noise = paddle.to_tensor(np.asarray(noise))
        if tuple(noise.shape) != (n, length):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {(n, length)}")
        ids_shuffle = paddle.argsort(noise, axis=1, stable=True)
        ids_restore = paddle.argsort(ids_shuffle, axis=1, stable=True)
        ids_keep = ids_shuffle[:, :len_keep]
        return paddle.take_along_axis(x, ids_keep.unsqueeze(-1).tile([1, 1, d]), axis=1), ids_restore

    # --------------------------------------------------------------------------------------- forward
    def forward_features(self, x: paddle.Tensor, noise: Any = None, drop_masks: Any = None) -> paddle.Tensor:
        n = x.shape[0]
        if noise is None and drop_masks is None:
            noise, drop_masks = self._injected
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)
        masking = self.training and self.mask_ratio > 0
        if masking:
            x, ids_restore = self.random_masking(x, noise)
        for block, (keep_attn, keep_mlp) in zip(self.blocks, self._keep_masks(n, x, drop_masks)):
            if self.using_checkpoint and self.training:
                from paddle.distributed.fleet.utils import recompute

                x = recompute(block, x, keep_attn, keep_mlp, use_reentrant=False)
            else:
                x = block(x, keep_attn, keep_mlp)
        x = self.norm(x.astype(_compute_dtype(x)))
        if masking:
            fill = self.mask_token.astype(x.dtype).tile([n, ids_restore.shape[1] - x.shape[1], 1])
            x = paddle.concat([x, fill], axis=1)
            x = paddle.take_along_axis(x, ids_restore.unsqueeze(-1).tile([1, 1, x.shape[2]]), axis=1)
        return x.reshape([n, self.num_patches * self.embed_dim])

    def forward(self, x: paddle.Tensor, noise: Any = None, drop_masks: Any = None) -> paddle.Tensor:
        return self.feature(self.forward_features(x, noise, drop_masks))


def vit(name: str = "vit_t", num_features: int = 512, **overrides: Any) -> VisionTransformer:
    """Build the registered ViT ``name`` in the default dtype; keyword ``overrides`` replace any constructor argument
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
