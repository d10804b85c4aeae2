"""Training checkpoints: everything an exact resume needs, one file per rank, written atomically.

A checkpoint is a pickle of plain containers and numpy arrays (read back through the project's restricted
unpickler, so a checkpoint from elsewhere cannot run code). Optimizer accumulators are stored under the
parameters' structured names (``backbone/layer1.0.conv1.weight/velocity_0``), not Paddle's generated
ones (``conv2d_3.w_0``), so a checkpoint does not depend on the order layers were created in a process.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from converters.errors import UserError, describe_value
from converters.outputs import atomic_output
from converters.safe_pickle import load_user_pickle

FORMAT = "arcface-bridge-train/1"


def checkpoint_path(output: str | Path, rank: int) -> Path:
    return Path(output) / f"checkpoint_rank{rank}.pdckpt"


def to_numpy_tree(value: Any) -> Any:
    """Tensors -> numpy arrays inside nested dicts/lists (what the restricted unpickler reads back)."""
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        return np.array(value.numpy(), copy=True)
    if isinstance(value, Mapping):
        return {str(k): to_numpy_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_numpy_tree(v) for v in value)
    return value


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> None:
    """Write ``state`` atomically: a crash mid-save leaves the previous checkpoint intact."""
    payload = {"format": FORMAT, **to_numpy_tree(state)}
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        if os.environ.get(PAUSE_HOOK) == str(state.get("step")):
            _write_half_and_pause(fh, payload)
        pickle.dump(payload, fh, protocol=5)


# test hook (fault injection): the checkpoint of this step stops after half its bytes, so a test can SIGKILL
# the run in the middle of a checkpoint write
PAUSE_HOOK = "ARCFACE_BRIDGE_TEST_PAUSE_SAVE_AT_STEP"


def _write_half_and_pause(fh, payload: dict) -> None:
    import time

    data = pickle.dumps(payload, protocol=5)
    fh.write(data[:len(data) // 2])
    fh.flush()
    time.sleep(3600)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely and check its schema (keys, types, ranges) before anything uses it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(path, "no checkpoint to resume from")
    state = load_user_pickle(path, "training checkpoint")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(path, f"not a training checkpoint of this project (expected format {FORMAT})")
    validate_checkpoint(state, path)
    return state


# the config keys a resume compares with the current run (train/train.py) and the progress counters
RESUME_CONFIG_KEYS = ("network", "embedding_size", "num_classes", "batch_size", "sample_rate", "pfc_update",
                      "optimizer", "num_image")
COUNTERS = {"step": 0, "epoch": 0, "batch": 0, "world_size": 1}
MAX_COUNTER = 2**62


def validate_checkpoint(state: Mapping[str, Any], path: str | Path) -> None:
    """One-line ``UserError`` naming the first missing or mistyped field of a checkpoint's ``state``."""
    from train.config import FIELD_TYPES, _check_type

    def bad(field: str, problem: str):
        raise UserError(path, f"checkpoint field {field!r}: {problem}")

    for key, minimum in COUNTERS.items():
        if key not in state:
            bad(key, "missing")
        value = state[key]
        if not isinstance(value, int) or isinstance(value, bool):
            bad(key, f"expected an integer, found {describe_value(value)}")
        if not minimum <= value <= MAX_COUNTER:
            bad(key, f"must be in [{minimum}, 2**62], got {describe_value(value)}")
    config = _require_dict(state, "config", bad)
    for key in RESUME_CONFIG_KEYS:
        if key not in config:
            bad(f"config.{key}", "missing")
    for key, value in config.items():
        if not isinstance(key, str):
            bad("config", f"key of type {type(key).__name__} (expected strings)")
        if key in FIELD_TYPES:
            try:
                _check_type(key, value)
            except TypeError as err:
                bad(f"config.{key}", str(err))
            if isinstance(value, int) and value.bit_length() > 64:
                bad(f"config.{key}", f"out of range ({describe_value(value)})")
    for name in ("backbone", "pfc"):
        _require_arrays(_require_dict(state, name, bad), name, bad)
    optimizer = _require_dict(state, "optimizer", bad)
    for key, value in optimizer.items():
        if key == "LR_Scheduler":
            if not isinstance(value, dict):
                bad("optimizer.LR_Scheduler", f"expected a dict, found {describe_value(value)}")
            for name, item in value.items():
                if not isinstance(name, str) or not isinstance(item, (int, float, str, type(None))):
                    bad("optimizer.LR_Scheduler", f"entry {str(name)[:40]!r}: expected a number, found {describe_value(item)}")
        elif key == "master_weights":
            if not isinstance(value, dict):
                bad("optimizer.master_weights", f"expected a dict, found {describe_value(value)}")
            _require_arrays(value, "optimizer.master_weights", bad)
        else:
            _require_arrays({key: value}, "optimizer", bad)
    rng = _require_dict(state, "rng", bad)
    if "pfc_scores" not in rng:
        bad("rng.pfc_scores", "missing")
    try:
        np.random.default_rng().bit_generator.state = rng["pfc_scores"]
    except (TypeError, ValueError, KeyError, OverflowError) as err:
        bad("rng.pfc_scores", f"not a numpy generator state ({type(err).__name__}: {str(err)[:120]})")
    scaler = state.get("scaler")
    if scaler is not None and not isinstance(scaler, dict):
        bad("scaler", f"expected a dict or None, found {describe_value(scaler)}")


def check_state_shapes(path: str | Path, name: str, saved: Mapping[str, Any], layer) -> None:
    """The checkpoint's ``saved`` arrays for ``layer`` (``name``: backbone or pfc) have exactly the layer's
    keys and shapes: Paddle's ``set_state_dict`` would only warn and keep the current values."""
    expected = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    missing = [k for k in expected if k not in saved]
    if missing:
        raise UserError(path, f"checkpoint field '{name}': missing {missing[0]!r}"
                        + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                        + " (written for another network or embedding_size?)")
    extra = [k for k in saved if k not in expected]
    if extra:
        raise UserError(path, f"checkpoint field '{name}': unexpected entry {str(extra[0])[:80]!r}")
    for key, shape in expected.items():
        if tuple(saved[key].shape) != shape:
            raise UserError(path, f"checkpoint field '{name}.{key}': shape {list(saved[key].shape)}, "
                            f"this run's model needs {list(shape)}")


def _require_dict(state: Mapping[str, Any], key: str, bad) -> dict:
    if key not in state:
        bad(key, "missing")
    if not isinstance(state[key], dict):
        bad(key, f"expected a dict, found {describe_value(state[key])}")
    return state[key]


def _require_arrays(arrays: Mapping[str, Any], name: str, bad) -> None:
    for key, value in arrays.items():
        if not isinstance(key, str):
            bad(name, f"key of type {type(key).__name__} (expected parameter names)")
        if not isinstance(value, np.ndarray):
            bad(f"{name}.{key}", f"expected an array, found {describe_value(value)}")
        if value.dtype.kind not in "fiub":
            bad(f"{name}.{key}", f"expected a numeric array, found dtype {value.dtype}")


# ---------------------------------------------------------------------------- optimizer state by name
def optimizer_state(optimizer, named_params: Mapping[str, Any]) -> dict[str, Any]:
    """Paddle optimizer state with accumulators keyed ``<structured name>/<accumulator>``."""
    by_internal = {p.name: name for name, p in named_params.items()}
    state: dict[str, Any] = {}
    for key, value in optimizer.state_dict().items():
        if key == "LR_Scheduler":
            state[key] = dict(value)  # the learning-rate schedule (Paddle restores it with the optimizer)
            continue
        if key == "master_weights":
            state[key] = {by_internal.get(k, k): v for k, v in value.items()}
            continue
        owner = _owner(key, by_internal)
        if owner is None:
            raise KeyError(f"optimizer state {key!r} belongs to no known parameter")
        state[f"{by_internal[owner]}/{key[len(owner) + 1:]}"] = value
    return to_numpy_tree(state)


def restore_optimizer_state(optimizer, named_params: Mapping[str, Any], state: Mapping[str, Any],
                            path: str | Path) -> None:
    """Inverse of ``optimizer_state`` for the parameters of this process; mismatches are user errors."""
    import paddle

    internal = {name: p.name for name, p in named_params.items()}
    shapes = {name: tuple(p.shape) for name, p in named_params.items()}
    restored: dict[str, Any] = {}
    for key, value in state.items():
        if key == "LR_Scheduler":
            restored[key] = dict(value)
            continue
        if key == "master_weights":
            restored[key] = {internal.get(k, k): paddle.to_tensor(v) for k, v in value.items()}
            continue
        name, _, accumulator = key.rpartition("/")
        if name not in internal:
            raise UserError(path, f"optimizer state for {name!r}, which this model does not have")
        if value.size > 1 and tuple(value.shape) != shapes[name]:
            raise UserError(path, f"optimizer state {key}: shape {list(value.shape)}, parameter {list(shapes[name])}")
        restored[f"{internal[name]}_{accumulator}"] = paddle.to_tensor(value)
    optimizer.set_state_dict(restored)


def _owner(key: str, by_internal: Mapping[str, str]) -> str | None:
    """The longest parameter name that ``key`` starts with followed by '_'."""
    best = None
    for internal in by_internal:
        if key.startswith(internal + "_") and (best is None or len(internal) > len(best)):
            best = internal
    return best
