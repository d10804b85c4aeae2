"""train.reshard end to end: a real two-process run re-sharded for one and for three processes keeps every
Partial FC row and its optimizer state, the resumed run continues, and the command the world-size error
suggests is exactly the one that works; bad input is one line and the input is never written."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converters.errors import exit_code
from parity_tests.workers.launch import run_workers
from train.checkpoint import TrainingCheckpoint, checkpoint_path

ROOT = Path(__file__).resolve().parents[2]
# 64 synthetic images, batch 8, Partial FC sampling 0.5, AdamW: with 2 processes 4 steps per epoch
CONFIG = ["tiny_synthetic", "optimizer=adamw", "lr=0.01", "weight_decay=0.1"]
ROW_KEYS = ("pfc/weight/moment1_0", "pfc/weight/moment2_0")


def run_main(main, argv) -> int:
    return exit_code(main, argv)


def rows(folder: Path) -> dict[str, np.ndarray]:
    """The Partial FC weight and its AdamW moments of every rank of a run folder, joined in rank order."""
    world = TrainingCheckpoint.load(checkpoint_path(folder, 0)).world_size
    run = [TrainingCheckpoint.load(checkpoint_path(folder, r)) for r in range(world)]
    for rank, ckpt in enumerate(run):
        assert ckpt.pfc["shard_layout"].tolist() == [64, world, rank, 128]
    joined = {"weight": np.concatenate([c.pfc["weight"] for c in run])}
    joined.update({k: np.concatenate([c.optimizer[k] for c in run]) for k in ROW_KEYS})
    return joined


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """A run of two processes stopped at step 3 (epoch 0, batch 3 of 4)."""
    base = tmp_path_factory.mktemp("reshard")
    run_workers([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
                 str(base / "logs"), str(ROOT / "train" / "train.py"), *CONFIG, "--output", str(base / "run"),
                 "--max-steps", "3"], base / "logs", timeout=600)
    return base / "run"


def test_two_ranks_to_one_and_three_keep_every_row_and_the_run_resumes(two_ranks, tmp_path, capsys):
    from arcface_bridge import dispatch
    from train.train import main as train_main

    before = {p.name: p.read_bytes() for p in two_ranks.iterdir() if p.is_file()}
    source = rows(two_ranks)
    assert source["weight"].shape == (64, 128) and np.abs(source["pfc/weight/moment1_0"]).sum() > 0
    rank0 = TrainingCheckpoint.load(checkpoint_path(two_ranks, 0))
    assert (rank0.world_size, rank0.step, rank0.epoch, rank0.batch) == (2, 3, 0, 3)

    # resuming on one process is refused with the command that re-shards the run; that command works
    one = tmp_path / "one"
    code = run_main(train_main, [*CONFIG, "--output", two_ranks, "--resume", "--max-steps", 8])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    expected_out = two_ranks.with_name("run-1ranks")
    command = f"python -m train.reshard --src {two_ranks} --world-size 1 --out {expected_out}"
    assert code == 2 and line == (f"error: {checkpoint_path(two_ranks, 0)}: written by 2 processes, resumed "
                                  f"with 1; re-shard the run first: {command} (then resume with --output "
                                  f"{expected_out})")
    argv = shlex.split(line.split("re-shard the run first: ")[1].split(" (then resume")[0])
    assert argv[:3] == ["python", "-m", "train.reshard"]
    done = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"re-sharded step 3 (epoch 0, batch 3) of 2 processes into "
                                   f"{expected_out}: step 6 (epoch 0, batch 6) of 1 process; continue with: "
                                   f"python train/train.py CONFIG --resume --output {expected_out}")
    expected_out.rename(one)

    # arcface-bridge reshard: three processes
    three = tmp_path / "three"
    assert run_main(dispatch, ["reshard", "--src", two_ranks, "--world-size", 3, "--out", three]) == 0
    assert sorted(p.name for p in three.iterdir()) == [f"checkpoint_rank{r}.pdckpt" for r in range(3)]
    # 3 processes take 22 of the 64 images each (padded): 2 batches per epoch, both covered by the 48 images
    # 2 processes had taken, so the run goes on at epoch 1 (step 2 of 3 processes)
    three_run = [TrainingCheckpoint.load(checkpoint_path(three, r)) for r in range(3)]
    assert [(c.step, c.epoch, c.batch, c.world_size) for c in three_run] == [(2, 1, 0, 3)] * 3
    for folder, world in ((one, 1), (three, 3)):
        resharded = rows(folder)
        for key, value in source.items():
            np.testing.assert_array_equal(resharded[key], value, err_msg=f"{folder.name}: {key}")
        for rank in range(world):
            ckpt = TrainingCheckpoint.load(checkpoint_path(folder, rank))
            for key, value in rank0.backbone.items():
                np.testing.assert_array_equal(ckpt.backbone[key], value, err_msg=key)
            assert ckpt.rng == rank0.rng and ckpt.config == rank0.config
    # back from three to one: the same rows and the same schedule as two to one
    back = tmp_path / "back"
    assert run_main(dispatch, ["reshard", "--src", three, "--world-size", 1, "--out", back]) == 0
    for key, value in source.items():
        np.testing.assert_array_equal(rows(back)[key], value, err_msg=key)
    schedule = TrainingCheckpoint.load(checkpoint_path(one, 0)).optimizer["LR_Scheduler"]
    assert schedule["last_epoch"] == 6 and schedule["total_iters"] == 8 * 4 and schedule["warmup_iters"] == 8

    # the one-process run resumes where the re-shard put it
    capsys.readouterr()
    assert run_main(train_main, [*CONFIG, "--output", one, "--resume", "--max-steps", 8]) == 0
    assert "resumed from" in capsys.readouterr().out
    logged = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == [7, 8] and [row["epoch"] for row in logged] == [0, 0]
    assert TrainingCheckpoint.load(checkpoint_path(one, 0)).step == 8
    assert {p.name: p.read_bytes() for p in two_ranks.iterdir() if p.is_file()} == before  # never written


def test_bad_input_is_one_line_and_the_source_is_never_written(two_ranks, tmp_path, capsys):
    from train.reshard import main

    def error(*argv) -> str:
        assert run_main(main, [str(a) for a in argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
        return err[0]

    assert error("--src", two_ranks, "--world-size", 1, "--out", two_ranks) == (
        f"error: {two_ranks}: is also the input --src; choose another --out")
    assert error("--src", two_ranks, "--world-size", 1, "--out", two_ranks / "inner") == (
        f"error: {two_ranks / 'inner'}: is inside the input folder --src {two_ranks}; choose another --out")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes").write_text("mine")
    assert error("--src", two_ranks, "--world-size", 1, "--out", taken) == (
        f"error: {taken}: already exists and is not an empty folder; choose a new output folder")
    assert (taken / "notes").read_text() == "mine"
    assert error("--src", two_ranks, "--world-size", 65, "--out", tmp_path / "x") == (
        "error: --world-size 65: 64 classes cannot be split over 65 processes")
    assert error("--src", two_ranks, "--world-size", 9, "--out", tmp_path / "x") == (
        "error: --world-size 9: batch_size 8 x 9 processes exceeds the 64 images: no complete batch")
    assert error("--src", two_ranks, "--world-size", 0) == (
        "error: --world-size: must be a positive integer, got 0")
    assert error("--src", tmp_path / "none", "--world-size", 1, "--out", tmp_path / "x") == (
        f"error: {tmp_path / 'none'}: no such folder (expected a training output folder)")

    partial = tmp_path / "partial"  # a copy without rank 1, then with rank 1 of another step
    partial.mkdir()
    (partial / "checkpoint_rank0.pdckpt").write_bytes(checkpoint_path(two_ranks, 0).read_bytes())
    assert error("--src", partial, "--world-size", 1, "--out", tmp_path / "x") == (
        f"error: {checkpoint_path(partial, 1)}: no such file: the run had 2 processes and re-sharding needs "
        "the checkpoint of each")
    other = TrainingCheckpoint.load(checkpoint_path(two_ranks, 1))
    other.step = 2
    other.save(checkpoint_path(partial, 1))
    assert error("--src", partial, "--world-size", 1, "--out", tmp_path / "x") == (
        f"error: {checkpoint_path(partial, 1)}: step 2 (rank 0: 3) differs from checkpoint_rank0.pdckpt's: "
        "checkpoints of different runs or steps")
    (partial / "checkpoint_rank1.pdckpt").write_bytes(b"garbage")
    line = error("--src", partial, "--world-size", 1, "--out", tmp_path / "x")
    assert line.startswith(f"error: {checkpoint_path(partial, 1)}: not a readable training checkpoint")
    assert not (tmp_path / "x").exists()
