"""Reading and writing weight files safely: PyTorch ``.pth``/``.pt`` and Paddle ``.pdparams``.

These are the two formats' codecs; an entry point that takes a user's weights file reads it through
``converters.weights.read_weights``, which picks the format and recognises the architecture.

Everything read from a user goes through ``torch.load(weights_only=True)`` or the restricted unpickler,
never ``pickle.load`` / ``paddle.load`` defaults. Everything written is written to a temporary file in
the destination folder and renamed into place, so a failed run leaves no partial file behind.

Arrays travel between the two frameworks as numpy: a "torch-named" state is an ordered mapping from
InsightFace's state_dict keys to numpy arrays (float32, and int64 for ``num_batches_tracked``).
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
import struct
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError, describe_value
from .outputs import atomic_output  # noqa: F401 (re-exported: the one atomic writer lives in outputs.py)
from .safe_pickle import load_user_pickle

# wrapper keys under which training scripts store the backbone, most specific first
WRAPPER_KEYS = ("state_dict_backbone", "state_dict", "model_state_dict", "model", "backbone")
# prefixes added by DistributedDataParallel / DataParallel and torch.compile
STRIP_PREFIXES = ("module.", "_orig_mod.")
# written into .pdparams files by this project; paddle.load returns it as a plain dict and a Paddle
# model's set_state_dict lists it as unexpected and ignores it
META_KEY = "__arcface_bridge__"
# bookkeeping entry paddle.save adds to state dicts
PADDLE_NAME_TABLE = "StructuredToParameterName@@"


@dataclass
class TorchCheckpoint:
    """A PyTorch backbone state read from a user's file, as numpy arrays with InsightFace names."""

    path: Path
    arrays: OrderedDict[str, np.ndarray]
    source_dtypes: dict[str, str] = field(default_factory=dict)  # key -> original torch dtype
    wrapper: str | None = None  # the dict key the state_dict was found under
    stripped_prefix: str = ""


@dataclass
class PaddleWeights:
    """A Paddle backbone state (Paddle names) plus this project's metadata."""

    arrays: OrderedDict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _require_file(path: Path) -> None:
    if not path.exists():
        raise UserError(path, "no such file")
    if path.is_dir():
        raise UserError(path, "is a directory, expected a checkpoint file")
    if path.stat().st_size == 0:
        raise UserError(path, "file is empty")


def _torch_load(path: Path) -> Any:
    import torch

    with open(path, "rb") as fh:
        head = fh.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save zip, or a legacy pickle
        raise UserError(path, "not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)")
    try:
        # torch warns about pickle protocols and sparse invariants while loading: not the user's concern;
        # sparse tensors are checked for consistency (a forged one could otherwise be read out of bounds)
        with warnings.catch_warnings(), torch.sparse.check_sparse_tensor_invariants(enable=True):
            warnings.simplefilter("ignore")
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap can only be used" not in str(err):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except MemoryError:
        raise UserError(path, "refused: the checkpoint declares more data than fits in memory") from None
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" in text:
            detail = next((ln.strip() for ln in text.splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "")
            raise UserError(path, "refused: the file's pickle asks for code a weights-only load does not "
                            f"allow (possibly malicious){': ' + detail if detail else ''}") from None
        raise UserError(path, f"not a PyTorch checkpoint ({text.splitlines()[0] if text else 'bad pickle'})") from None
    except RuntimeError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "zip archive" in first or "central directory" in first:
            raise UserError(path, "truncated or corrupt PyTorch checkpoint (its zip archive is unreadable)") from None
        raise UserError(path, f"cannot read as a PyTorch checkpoint: {first[:200]}") from None
    except (EOFError, ValueError, OSError, AttributeError, ImportError, KeyError, IndexError, TypeError,
            OverflowError, RecursionError, struct.error) as err:
        detail = str(err)[:160] or ("ends before the data it declares" if isinstance(err, EOFError) else "")
        raise UserError(path, f"not a readable PyTorch checkpoint ({type(err).__name__}: {detail})") from None


def _is_state_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _unwrap(obj: Any, path: Path) -> tuple[dict, str | None]:
    if _is_state_dict(obj):
        return obj, None
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if key in obj and _is_state_dict(obj[key]):
                return obj[key], key
        names = ", ".join(map(str, list(obj)[:6]))
        raise UserError(path, f"no backbone state_dict found (top-level keys: {names}; expected tensors "
                        f"or one of {', '.join(WRAPPER_KEYS)})")
    raise UserError(path, f"not a state_dict: the file holds a {type(obj).__name__}")


def strip_prefixes(keys: list[str]) -> str:
    """The DDP/compile prefix shared by every key (possibly nested, e.g. ``module._orig_mod.``), or ''."""
    prefix = ""
    while True:
        for p in STRIP_PREFIXES:
            if keys and all(k.startswith(prefix + p) for k in keys):
                prefix += p
                break
        else:
            return prefix


def _check_tensor(tensor: Any, name: str, path: Path) -> None:
    """Refuse tensors that are not plain dense ones backed by their own bytes in the file.

    A tensor's shape and strides are free in a checkpoint: zero or overlapping strides make a tiny
    storage look like gigabytes (a 55 KB file expanding to 23 GiB on the first copy). A dense tensor
    that views its storage without overlap never has more elements than the storage holds."""
    import torch

    if tensor.layout != torch.strided:
        raise UserError(path, f"{name}: a {str(tensor.layout).replace('torch.', '')} tensor; a backbone "
                        "state_dict holds dense tensors only")
    if tensor.numel() == 0:
        return
    needed = tensor.numel() * tensor.element_size()
    storage = tensor.untyped_storage().nbytes() - tensor.storage_offset() * tensor.element_size()
    if needed > storage or any(s <= 0 for s, n in zip(tensor.stride(), tensor.shape) if n > 1):
        raise UserError(path, f"{name}: shape {list(tensor.shape)} with strides {list(tensor.stride())} views "
                        f"{needed} bytes through {max(storage, 0)} stored bytes (expanded or overlapping "
                        "strides; refused)")


def read_torch_checkpoint(path: str | Path) -> TorchCheckpoint:
    """Read a ``.pth``/``.pt`` backbone safely: raw or wrapped state_dicts, DDP prefixes, fp16/bf16 cast to fp32."""
    import torch

    path = Path(path)
    _require_file(path)
    obj = _torch_load(path)
    state, wrapper = _unwrap(obj, path)
    prefix = strip_prefixes(list(state))
    arrays: OrderedDict[str, np.ndarray] = OrderedDict()
    dtypes: dict[str, str] = {}
    for key, tensor in state.items():
        name = key[len(prefix):]
        _check_tensor(tensor, name, path)
        dtypes[name] = str(tensor.dtype).replace("torch.", "")
        if tensor.is_floating_point():
            tensor = tensor.detach()
            arrays[name] = (tensor if tensor.dtype == torch.float32 else tensor.float()).numpy()
        elif tensor.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            arrays[name] = tensor.detach().numpy().astype(np.int64, copy=False)
        else:
            raise UserError(path, f"{name}: unsupported tensor dtype {tensor.dtype}")
    return TorchCheckpoint(path, arrays, dtypes, wrapper, prefix)


def read_paddle_weights(path: str | Path) -> PaddleWeights:
    """Read a ``.pdparams`` file through the restricted unpickler (never ``paddle.load``)."""
    path = Path(path)
    _require_file(path)
    obj = load_user_pickle(path, ".pdparams file")
    if not isinstance(obj, dict):
        raise UserError(path, f"not a Paddle state_dict: the file holds a {type(obj).__name__}")
    meta = obj.get(META_KEY, {})
    arrays: OrderedDict[str, np.ndarray] = OrderedDict()
    for key, value in obj.items():
        if key in (META_KEY, PADDLE_NAME_TABLE):
            continue
        if not isinstance(value, np.ndarray):
            raise UserError(path, f"{key}: expected an array, found {type(value).__name__}")
        if value.dtype.kind == "f" and value.dtype != np.float32:
            value = value.astype(np.float32)
        arrays[str(key)] = value
    if not arrays:
        raise UserError(path, "no arrays in the file")
    return PaddleWeights(arrays, validate_meta(meta, path))


INT64_MAX = 2**63 - 1
# the metadata this project writes into .pdparams (converters/mapping.py, torch2paddle.py): key -> check
META_SCHEMA = {
    "format": ("an integer", lambda v: _is_int(v) and 0 <= v <= 1_000_000),
    "arch": ("an architecture name", lambda v: isinstance(v, str) and 0 < len(v) <= 64),
    "num_features": ("an integer in [1, 65536]", lambda v: _is_int(v) and 1 <= v <= 65536),
    "num_batches_tracked": ("a dict of state_dict key -> integer in [0, 2**63)",
                            lambda v: isinstance(v, dict) and all(
                                isinstance(k, str) and _is_int(n) and 0 <= n <= INT64_MAX for k, n in v.items())),
    "demo": ("a boolean", lambda v: isinstance(v, bool)),
    "source_sha256": ("a sha256 hex string", lambda v: isinstance(v, str) and len(v) <= 128),
    "source_dtypes": ("a list of dtype names", lambda v: isinstance(v, list) and all(
        isinstance(d, str) and len(d) <= 64 for d in v)),
    "source_format": ("a format name", lambda v: isinstance(v, str) and 0 < len(v) <= 32),
    "folded_batchnorm": ("a list of module names", lambda v: isinstance(v, list) and all(
        isinstance(d, str) and len(d) <= 256 for d in v)),
    "input_normalisation": ("null or a dict with mean and std", lambda v: v is None or (
        isinstance(v, dict) and set(v) == {"mean", "std"})),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_meta(meta: Any, path: str | Path) -> dict[str, Any]:
    """The ``__arcface_bridge__`` entry checked against ``META_SCHEMA`` (unknown keys are kept unread);
    a wrong type or range is a one-line error naming the field."""
    if not isinstance(meta, dict):
        raise UserError(path, f"{META_KEY}: metadata must be a dict, found {describe_value(meta)}")
    for key, value in meta.items():
        if not isinstance(key, str):
            raise UserError(path, f"{META_KEY}: metadata key {describe_value(key)} is not a string")
        rule = META_SCHEMA.get(key)
        if rule is not None and not rule[1](value):
            raise UserError(path, f"{META_KEY}.{key}: expected {rule[0]}, found {describe_value(value)}")
    return dict(meta)


def write_paddle_weights(path: str | Path, weights: PaddleWeights, atomic: bool = True) -> None:
    """Write a ``.pdparams`` that ``paddle.load`` reads (a pickle of numpy arrays under Paddle names, as
    ``paddle.save`` writes), through a temporary file unless ``atomic=False``."""
    payload: dict[str, Any] = dict(weights.arrays)
    if weights.meta:
        payload[META_KEY] = weights.meta
    # protocol 5 writes each array's buffer without the copy (kept alive by the pickler's memo until the
    # end) that protocol 4 makes, which halves peak memory; paddle.load reads it (Python >= 3.8)
    with atomic_output(path) if atomic else contextlib.nullcontext(Path(path)) as target, \
            open(target, "wb") as fh:
        pickle.dump(payload, fh, protocol=5)


def write_torch_state_dict(path: str | Path, arrays: OrderedDict[str, np.ndarray], atomic: bool = True) -> None:
    """Save numpy arrays as an ordered PyTorch state_dict (``torch.save``), through a temporary file."""
    import torch

    state = OrderedDict((k, torch.from_numpy(v if v.flags.c_contiguous else v.copy())) for k, v in arrays.items())
    # through a Python file object: a failed write (no space, ...) raises OSError, not torch's RuntimeError
    with atomic_output(path) if atomic else contextlib.nullcontext(Path(path)) as target, \
            open(target, "wb") as fh:
        torch.save(state, fh)
