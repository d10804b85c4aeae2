"""Building blocks of a framework-free state_dict layout: entries in PyTorch's naming, order and shapes."""

from __future__ import annotations

from typing import NamedTuple


class Param(NamedTuple):
    """One state_dict entry as PyTorch names it (``module`` is the owning module's path, ``""`` for the model)."""

    key: str
    shape: tuple[int, ...]
    dtype: str  # "float32" or "int64"
    module: str
    module_type: str  # the PyTorch module class, or "Parameter" for a parameter the model holds directly


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def parameter(prefix: str, shape: tuple[int, ...]) -> list[Param]:
    """A bare parameter such as ``pos_embed``."""
    module, _, _ = prefix.rpartition(".")
    return [Param(prefix, tuple(shape), "float32", module, "Parameter")]


def conv2d(prefix: str, cin: int, cout: int, kernel: int, groups: int = 1, bias: bool = False) -> list[Param]:
    out = [Param(_join(prefix, "weight"), (cout, cin // groups, kernel, kernel), "float32", prefix, "Conv2d")]
    if bias:
        out.append(Param(_join(prefix, "bias"), (cout,), "float32", prefix, "Conv2d"))
    return out


def batch_norm(prefix: str, c: int, dims: int = 2) -> list[Param]:
    kind = f"BatchNorm{dims}d"
    return [Param(_join(prefix, name), (c,), "float32", prefix, kind)
            for name in ("weight", "bias", "running_mean", "running_var")] + [
        Param(_join(prefix, "num_batches_tracked"), (), "int64", prefix, kind)]


def prelu(prefix: str, c: int) -> list[Param]:
    return [Param(_join(prefix, "weight"), (c,), "float32", prefix, "PReLU")]


def linear(prefix: str, cin: int, cout: int, bias: bool = True) -> list[Param]:
    out = [Param(_join(prefix, "weight"), (cout, cin), "float32", prefix, "Linear")]
    if bias:
        out.append(Param(_join(prefix, "bias"), (cout,), "float32", prefix, "Linear"))
    return out


def layer_norm(prefix: str, c: int) -> list[Param]:
    return [Param(_join(prefix, name), (c,), "float32", prefix, "LayerNorm") for name in ("weight", "bias")]
