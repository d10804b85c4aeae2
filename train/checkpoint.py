"""Training checkpoints: ``TrainingCheckpoint``, everything an exact resume needs, one file per rank.

A checkpoint file is a pickle of plain containers and numpy arrays, written atomically and read back
through the project's restricted unpickler (so a checkpoint from elsewhere cannot run code), then checked
field by field before anything uses it. Optimizer accumulators are stored under the parameters' structured
names (``backbone/layer1.0.conv1.weight/velocity_0``), not Paddle's generated ones (``conv2d_3.w_0``), so a
checkpoint does not depend on the order layers were created in a process.
"""

from __future__ import annotations

import os
import pickle
import shlex
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from converters.errors import UserError, describe_value
from converters.outputs import atomic_output
from converters.safe_pickle import load_user_pickle

FORMAT = "arcface-bridge-train/1"
# the config keys a resume compares with the current run, and the progress counters with their minimum
RESUME_CONFIG_KEYS = ("network", "embedding_size", "num_classes", "batch_size", "sample_rate", "pfc_update",
                      "optimizer", "num_image")
COUNTERS = {"step": 0, "epoch": 0, "batch": 0, "world_size": 1}
MAX_COUNTER = 2**62


def checkpoint_path(output: str | Path, rank: int) -> Path:
    """The checkpoint file of ``rank`` in a run's output folder."""
    return Path(output) / f"checkpoint_rank{rank}.pdckpt"


@dataclass
class TrainingCheckpoint:
    """What one rank of a run saves and a resume restores.

    ``step`` optimizer iterations were done; the run continues at batch ``batch`` of epoch ``epoch`` (batches
    of this rank's sampler). ``backbone`` and ``pfc`` are the layers' state_dicts (``pfc`` this rank's shard
    with its ``shard_layout``), ``optimizer`` the optimizer state by structured parameter name with the
    learning-rate schedule under ``LR_Scheduler``, ``rng`` the Partial FC sampling generator's state
    (``pfc_scores``), ``scaler`` the AMP GradScaler's state (None without AMP).
    """

    step: int
    epoch: int
    batch: int
    world_size: int
    config: dict[str, Any]
    backbone: dict[str, np.ndarray]
    pfc: dict[str, np.ndarray]
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    scaler: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------ a run <-> checkpoint
    @classmethod
    def capture(cls, trainer, scores: np.random.Generator, epoch: int, batch: int) -> TrainingCheckpoint:
        """The state of ``trainer`` (backbone, Partial FC, optimizer, schedule, AMP scaler) and of the
        sampling generator ``scores``, about to continue at ``batch`` of ``epoch``."""
        return cls(step=trainer.global_step, epoch=epoch, batch=batch, world_size=trainer.world_size,
                   config=trainer.config.to_dict(), backbone=to_numpy_tree(trainer.backbone.state_dict()),
                   pfc=to_numpy_tree(trainer.pfc.state_dict()),
                   optimizer=optimizer_state(trainer.optimizer, named_parameters(trainer)),
                   rng={"pfc_scores": scores.bit_generator.state},
                   scaler=to_numpy_tree(trainer.scaler.state_dict()) if trainer.scaler is not None else None)

    def check_resumable(self, config, world_size: int, path: str | Path) -> None:
        """A run of ``config`` on ``world_size`` processes can continue this checkpoint (read from ``path``):
        the same world size and the same values of ``RESUME_CONFIG_KEYS``; else a one-line error."""
        if self.world_size != world_size:
            out = resharded_folder(Path(path).parent, world_size)
            raise UserError(path, f"written by {processes(self.world_size)}, resumed with {world_size}; "
                            f"re-shard the run first: {reshard_command(path, world_size)} (then resume with "
                            f"--output {shlex.quote(str(out))})")
        for key in RESUME_CONFIG_KEYS:
            if self.config[key] != getattr(config, key):
                raise UserError(path, f"{key} = {self.config[key]!r} in the checkpoint, "
                                f"{getattr(config, key)!r} now")

    def restore(self, trainer, scores: np.random.Generator, path: str | Path) -> None:
        """Put this checkpoint's state into ``trainer`` and ``scores`` (the inverse of ``capture``); arrays
        that do not fit the trainer's layers are a one-line error naming ``path``."""
        from converters.checkpoint import PaddleWeights
        from converters.models import load_paddle_weights

        check_state_shapes(path, "backbone", self.backbone, trainer.backbone)
        check_state_shapes(path, "pfc", self.pfc, trainer.pfc)
        load_paddle_weights(trainer.backbone, PaddleWeights(self.backbone))
        trainer.pfc.set_state_dict(self.pfc)
        # the optimizer state holds the learning-rate schedule too
        restore_optimizer_state(trainer.optimizer, named_parameters(trainer), self.optimizer, path)
        scores.bit_generator.state = self.rng["pfc_scores"]
        if trainer.scaler is not None and self.scaler:
            trainer.scaler.load_state_dict(self.scaler)
        trainer.global_step = self.step

    # ---------------------------------------------------------------------------------- file <-> object
    def save(self, path: str | Path) -> None:
        """Write atomically: a crash mid-save leaves the previous checkpoint intact."""
        payload = {"format": FORMAT, **{f.name: to_numpy_tree(getattr(self, f.name)) for f in fields(self)}}
        with atomic_output(path) as tmp, open(tmp, "wb") as fh:
            if os.environ.get(PAUSE_HOOK) == str(self.step):
                _write_half_and_pause(fh, payload)
            pickle.dump(payload, fh, protocol=5)

    @classmethod
    def load(cls, path: str | Path) -> TrainingCheckpoint:
        """Read a checkpoint safely and check its schema (keys, types, ranges) before anything uses it."""
        path = Path(path)
        if not path.is_file():
            raise UserError(path, "no checkpoint to resume from")
        state = load_user_pickle(path, "training checkpoint")
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise UserError(path, f"not a training checkpoint of this project (expected format {FORMAT})")
        _validate(state, path)
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})


def processes(count: int) -> str:
    return f"{count} process" + ("" if count == 1 else "es")


def resharded_folder(src: str | Path, world_size: int) -> Path:
    """``RUN-<N>ranks`` beside the run folder ``src``: where ``train.reshard`` puts a re-sharded copy."""
    src = Path(src)
    named = src if src.name not in ("", "..") else src.resolve()
    return named.with_name(f"{named.name}-{world_size}ranks")


def reshard_command(path: str | Path, world_size: int) -> str:
    """The command that re-shards the run holding the checkpoint ``path`` for ``world_size`` processes."""
    folder = Path(path).parent
    return (f"python -m train.reshard --src {shlex.quote(str(folder))} --world-size {world_size} "
            f"--out {shlex.quote(str(resharded_folder(folder, world_size)))}")


def named_parameters(trainer) -> dict[str, Any]:
    """The trainer's parameters under the structured names the optimizer state is saved with."""
    return {**{f"backbone/{k}": p for k, p in trainer.backbone.named_parameters()},
            **{f"pfc/{k}": p for k, p in trainer.pfc.named_parameters()}}


def to_numpy_tree(value: Any) -> Any:
    """Tensors -> numpy arrays inside nested dicts/lists (what the restricted unpickler reads back)."""
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        return np.array(value.numpy(), copy=True)
    if isinstance(value, Mapping):
        return {str(k): to_numpy_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_numpy_tree(v) for v in value)
    return value


# test hook (fault injection): the checkpoint of this step stops after half its bytes, so a test can SIGKILL
# the run in the middle of a checkpoint write
PAUSE_HOOK = "ARCFACE_BRIDGE_TEST_PAUSE_SAVE_AT_STEP"


def _write_half_and_pause(fh, payload: dict) -> None:
    import time

    data = pickle.dumps(payload, protocol=5)
    fh.write(data[:len(data) // 2])
    fh.flush()
    time.sleep(3600)


def _validate(state: Mapping[str, Any], path: str | Path) -> None:
    """One-line ``UserError`` naming the first missing or mistyped field of a checkpoint file's ``state``."""
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
