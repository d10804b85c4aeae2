"""TrainingCheckpoint: what a checkpoint holds, captured from a trainer, written, read back safely and
restored into a fresh trainer; the compatibility checks against the resuming run."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import paddle
import pytest

from converters.errors import UserError
from train.checkpoint import FORMAT, TrainingCheckpoint, checkpoint_path, reshard_command, resharded_folder
from train.config import TrainConfig

CONFIG = dict(network="mbf", embedding_size=16, num_classes=11, num_image=40, batch_size=4, rec="synthetic",
              sample_rate=0.5, optimizer="adamw", lr=0.01)


def trainer_and_scores(**changes):
    from paddle_models import get_model
    from train.engine import Trainer

    config = TrainConfig(**{**CONFIG, **changes})
    paddle.seed(config.seed)
    scores = np.random.default_rng(config.seed)
    trainer = Trainer(config, get_model("mbf", num_features=16), total_steps=30, warmup_steps=3,
                      score_source=scores.random)
    return trainer, scores


@pytest.fixture(scope="module")
def trained():
    """A trainer after two AdamW steps, with its checkpoint at (epoch 0, batch 2)."""
    trainer, scores = trainer_and_scores()
    data = np.random.default_rng(1)
    for _ in range(2):
        images = paddle.to_tensor(data.uniform(-1, 1, (4, 3, 112, 112)).astype("float32"))
        trainer.train_step(images, paddle.to_tensor(data.integers(0, 11, 4)))
    return trainer, scores, TrainingCheckpoint.capture(trainer, scores, epoch=0, batch=2)


def test_capture_holds_the_run_state(trained):
    trainer, scores, ckpt = trained
    assert (ckpt.step, ckpt.epoch, ckpt.batch, ckpt.world_size) == (2, 0, 2, 1)
    assert ckpt.config == trainer.config.to_dict() and ckpt.scaler is None
    assert ckpt.pfc["shard_layout"].tolist() == [11, 1, 0, 16] and ckpt.pfc["weight"].shape == (11, 16)
    assert ckpt.optimizer["pfc/weight/moment1_0"].shape == (11, 16)
    schedule = ckpt.optimizer["LR_Scheduler"]
    assert (schedule["last_epoch"], schedule["warmup_iters"], schedule["total_iters"]) == (2, 3, 30)
    assert ckpt.rng["pfc_scores"] == scores.bit_generator.state
    state = trainer.backbone.state_dict()
    assert list(ckpt.backbone) == list(state)
    for key, value in state.items():
        np.testing.assert_array_equal(ckpt.backbone[key], value.numpy(), err_msg=key)


def test_save_load_restore_round_trip(trained, tmp_path):
    trainer, scores, ckpt = trained
    path = checkpoint_path(tmp_path, 0)
    assert path.name == "checkpoint_rank0.pdckpt"
    ckpt.save(path)
    with open(path, "rb") as fh:
        raw = pickle.load(fh)  # noqa: S301 (written by this test)
    assert list(raw) == ["format", "step", "epoch", "batch", "world_size", "config", "backbone", "pfc",
                         "optimizer", "rng", "scaler"] and raw["format"] == FORMAT
    loaded = TrainingCheckpoint.load(path)
    assert (loaded.step, loaded.epoch, loaded.batch, loaded.config) == (2, 0, 2, ckpt.config)

    fresh, fresh_scores = trainer_and_scores()
    assert not np.array_equal(fresh.pfc.weight.numpy(), trainer.pfc.weight.numpy())
    loaded.restore(fresh, fresh_scores, path)
    assert fresh.global_step == 2 and fresh.optimizer.get_lr() == trainer.optimizer.get_lr()
    assert fresh_scores.bit_generator.state == scores.bit_generator.state
    again = TrainingCheckpoint.capture(fresh, fresh_scores, epoch=0, batch=2)
    for field in ("backbone", "pfc"):
        for key, value in getattr(ckpt, field).items():
            np.testing.assert_array_equal(getattr(again, field)[key], value, err_msg=f"{field}.{key}")
    for key, value in ckpt.optimizer.items():
        if key != "LR_Scheduler":
            np.testing.assert_array_equal(again.optimizer[key], value, err_msg=key)
    assert again.optimizer["LR_Scheduler"] == ckpt.optimizer["LR_Scheduler"]


def test_resume_compatibility_is_checked_against_the_config(trained, tmp_path):
    trainer, _, ckpt = trained
    path = checkpoint_path(tmp_path / "run", 0)
    ckpt.check_resumable(trainer.config, 1, path)
    with pytest.raises(UserError) as err:
        ckpt.check_resumable(dataclasses.replace(trainer.config, batch_size=8), 1, path)
    assert str(err.value) == f"{path}: batch_size = 4 in the checkpoint, 8 now"
    with pytest.raises(UserError) as err:
        ckpt.check_resumable(trainer.config, 3, path)
    new = tmp_path / "run-3ranks"
    command = f"python -m train.reshard --src {tmp_path / 'run'} --world-size 3 --out {new}"
    assert str(err.value) == (f"{path}: written by 1 process, resumed with 3; re-shard the run first: "
                              f"{command} (then resume with --output {new})")
    assert reshard_command(checkpoint_path("my run", 0), 2) == (
        "python -m train.reshard --src 'my run' --world-size 2 --out 'my run-2ranks'")
    assert resharded_folder(".", 2) == Path.cwd().with_name(f"{Path.cwd().name}-2ranks")


def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path):
    path = tmp_path / "x.pdckpt"
    with pytest.raises(UserError, match="no checkpoint to resume from"):
        TrainingCheckpoint.load(path)
    path.write_bytes(pickle.dumps({"format": "other"}))
    with pytest.raises(UserError) as err:
        TrainingCheckpoint.load(path)
    assert str(err.value) == f"{path}: not a training checkpoint of this project (expected format {FORMAT})"
