"""The one registry of InsightFace backbones: registry name -> family spec, with no framework imported.

Everything that needs to know an architecture derives it from here: both frameworks' ``get_model``, the
state_dict layout and the Paddle mapping (``converters.mapping``), architecture detection from a checkpoint's
keys and shapes (``converters.arch``), the commands' ``--arch`` choices, training-config validation and the
tests parametrised over architectures.

A spec is a frozen dataclass of one family (``IResNetSpec``, ``MobileFaceNetSpec``, ``ViTSpec``) with

* ``family`` — the key of the family's model builder in ``paddle_models`` and ``torch_reference``;
* ``layout(num_features)`` — every state_dict entry in PyTorch's naming, order, shape and dtype;
* ``embedding_key`` — the 1-D entry whose length is the embedding size;
* ``weights_signature()`` — equal for names whose weights are interchangeable (the ViT names that differ
  only in training settings);
* ``describe()`` — the dimensions in words, for messages.

Adding a size of an existing family is one ``register`` call (or one line in ``BUILTIN`` below).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Union

from ._layout import Param
from .iresnet import IResNetSpec
from .mobilefacenet import MobileFaceNetSpec
from .vit import ViTSpec

Spec = Union[IResNetSpec, MobileFaceNetSpec, ViTSpec]
SPEC_TYPES = (IResNetSpec, MobileFaceNetSpec, ViTSpec)

# InsightFace arcface_torch's factory names, in its order, with its hyper-parameters
BUILTIN: dict[str, Spec] = {
    "r18": IResNetSpec((2, 2, 2, 2)),
    "r34": IResNetSpec((3, 4, 6, 3)),
    "r50": IResNetSpec((3, 4, 14, 3)),
    "r100": IResNetSpec((3, 13, 30, 3)),
    "r200": IResNetSpec((6, 26, 60, 6)),
    "r2060": IResNetSpec((3, 128, 896, 3)),
    "mbf": MobileFaceNetSpec((1, 4, 6, 2), 2),
    "mbf_large": MobileFaceNetSpec((2, 8, 12, 4), 4),
    "vit_t": ViTSpec(256, 12, drop_path_rate=0.1, mask_ratio=0.1),
    "vit_t_dp005_mask0": ViTSpec(256, 12, drop_path_rate=0.05, mask_ratio=0.0),
    "vit_s": ViTSpec(512, 12, drop_path_rate=0.1, mask_ratio=0.1),
    "vit_s_dp005_mask_0": ViTSpec(512, 12, drop_path_rate=0.05, mask_ratio=0.0),
    "vit_b": ViTSpec(512, 24, drop_path_rate=0.1, mask_ratio=0.1, use_checkpoint=True),
    "vit_b_dp005_mask_005": ViTSpec(512, 24, drop_path_rate=0.05, mask_ratio=0.05, use_checkpoint=True),
    "vit_l_dp005_mask_005": ViTSpec(768, 24, drop_path_rate=0.05, mask_ratio=0.05, use_checkpoint=True),
    "vit_h": ViTSpec(1024, 48, drop_path_rate=0.1, mask_ratio=0.0, use_checkpoint=True),
}

_REGISTRY: dict[str, Spec] = dict(BUILTIN)


def register(name: str, spec: Spec) -> None:
    """Add an architecture under ``name``; every command, converter and builder then knows it."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"architecture name must be an identifier, got {name!r}")
    if not isinstance(spec, SPEC_TYPES):
        raise TypeError(f"{name}: spec must be one of {', '.join(t.__name__ for t in SPEC_TYPES)}")
    if name in _REGISTRY:
        raise ValueError(f"architecture {name!r} is already registered ({describe(name)})")
    _REGISTRY[name] = spec


def unregister(name: str) -> None:
    """Remove an architecture added by ``register`` (the built-in ones stay)."""
    if name in BUILTIN:
        raise ValueError(f"{name} is built in and cannot be removed")
    spec_of(name)
    del _REGISTRY[name]


@contextlib.contextmanager
def registered(name: str, spec: Spec) -> Iterator[Spec]:
    """``register`` for the duration of a ``with`` block."""
    register(name, spec)
    try:
        yield spec
    finally:
        _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """Every registered name, built-in ones first in InsightFace's order."""
    return tuple(_REGISTRY)


def spec_of(name: str) -> Spec:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(_REGISTRY)}") from None


def family_of(name: str) -> str:
    return spec_of(name).family


def describe(name: str) -> str:
    """The dimensions of ``name`` in words, e.g. ``iresnet blocks 3-4-14-3``."""
    return spec_of(name).describe()


def layout(name: str, num_features: int = 512) -> tuple[Param, ...]:
    """Every state_dict entry of ``name`` as InsightFace's PyTorch code names and orders it."""
    return tuple(spec_of(name).layout(num_features))


def same_weights(name: str) -> tuple[str, ...]:
    """The registered names whose weights are interchangeable with ``name``'s (itself included)."""
    signature = spec_of(name).weights_signature()
    return tuple(n for n, s in _REGISTRY.items() if s.weights_signature() == signature)


def parameter_count(name: str, num_features: int = 512) -> int:
    """Floating-point elements of the state_dict (parameters and BatchNorm statistics)."""
    total = 0
    for p in layout(name, num_features):
        if p.dtype != "int64":
            n = 1
            for s in p.shape:
                n *= s
            total += n
    return total


__all__ = ["BUILTIN", "IResNetSpec", "MobileFaceNetSpec", "Param", "SPEC_TYPES", "Spec", "ViTSpec", "describe",
           "family_of", "layout", "names", "parameter_count", "register", "registered", "same_weights",
           "spec_of", "unregister"]
