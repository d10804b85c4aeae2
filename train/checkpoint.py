"""Training checkpoints: everything an exact resume needs, one file per rank, written atomically.

A checkpoint is a pickle of plain containers and numpy arrays (read back through the project's restricted
unpickler, so a checkpoint from elsewhere cannot run code). Optimizer accumulators are stored under the
parameters' structured names (``backbone/layer1.0.conv1.weight/velocity_0``), not Paddle's generated
ones (``conv2d_3.w_0``), so a checkpoint does not depend on the order layers were created in a process.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from converters.checkpoint import atomic_output
from converters.errors import UserError
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
        pickle.dump(payload, fh, protocol=5)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(path, "no checkpoint to resume from")
    state = load_user_pickle(path, "training checkpoint")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(path, f"not a training checkpoint of this project (expected format {FORMAT})")
    return state


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
