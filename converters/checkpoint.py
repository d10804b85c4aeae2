"""Reading and writing weight files safely: PyTorch ``.pth``/``.pt`` and Paddle ``.pdparams``.

Everything read from a user goes through ``torch.load(weights_only=True)`` or the restricted unpickler,
never ``pickle.load`` / ``paddle.load`` defaults. Everything written is written to a temporary file in
the destination folder and renamed into place, so a failed run leaves no partial file behind.

Arrays travel between the two frameworks as numpy: a "torch-named" state is an ordered mapping from
InsightFace's state_dict keys to numpy arrays (float32, and int64 for ``num_batches_tracked``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import UserError
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
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap can only be used" not in str(err):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
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
    except (EOFError, ValueError, OSError, AttributeError, ImportError, KeyError, IndexError) as err:
        raise UserError(path, f"not a readable PyTorch checkpoint ({type(err).__name__}: {str(err)[:160]})") from None


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
    if not isinstance(meta, dict):
        raise UserError(path, f"{META_KEY}: malformed metadata")
    return PaddleWeights(arrays, dict(meta))


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


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
    with atomic_output(path) if atomic else contextlib.nullcontext(Path(path)) as target:
        torch.save(state, target)
