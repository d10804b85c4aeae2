"""train/train.py end to end on CPU: the loss falls on real faces, every artefact is written, resume is
exact (also after SIGKILL), two processes keep identical weights, and bad input is one line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from converters.checkpoint import read_paddle_weights
from converters.errors import exit_code
from converters.safe_pickle import safe_load
from parity_tests.workers.launch import run_workers

ROOT = Path(__file__).resolve().parents[2]
TRAIN = [sys.executable, str(ROOT / "train" / "train.py")]
# a fast variant of tiny_rec: MobileFaceNet, two steps per epoch, Partial FC sampling, mid-epoch saves
FAST = ["tiny_rec", "network=mbf", "embedding_size=128", "batch_size=5", "sample_rate=0.5", "save_every=3"]


def train(*args, check=True, timeout=900) -> subprocess.CompletedProcess:
    proc = subprocess.run([*TRAIN, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return proc


def metrics(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def test_tiny_rec_30_steps_lowers_the_loss_and_writes_every_artefact(tmp_path, small_dataset_rec):
    out = tmp_path / "run"
    proc = train("tiny_rec", "--output", out, "--max-steps", 30)
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 31))
    losses = np.array([r["loss"] for r in rows])
    assert losses[-5:].mean() < 0.5 * losses[:5].mean(), losses
    assert all(set(r) >= {"step", "epoch", "loss", "lr", "samples_per_sec", "grad_norm", "grad_scale"} for r in rows)
    assert rows[0]["lr"] == 0.02 and rows[-1]["lr"] < rows[0]["lr"]
    # InsightFace's log line every `frequent` steps
    assert "Speed " in proc.stderr and "samples/sec   Loss " in proc.stderr and "Global Step: 30" in proc.stderr
    for name in ("checkpoint_rank0.pdckpt", "model.pdparams", "model.pt", "config.json", "training.log"):
        assert (out / name).is_file(), name

    import torch

    import torch_reference

    state = torch.load(out / "model.pt", weights_only=True)
    torch_reference.get_model("r18").load_state_dict(state, strict=True)  # InsightFace's layout
    assert int(state["layer1.0.bn1.num_batches_tracked"]) == 30
    assert torch.equal(state["features.weight"], torch.ones(512))  # frozen through training
    weights = read_paddle_weights(out / "model.pdparams")
    np.testing.assert_array_equal(weights.arrays["fc.weight"], state["fc.weight"].numpy().T)


def test_stop_and_resume_equals_an_uninterrupted_run_bit_for_bit(tmp_path, small_dataset_rec):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(*FAST, "--output", straight, "--max-steps", 8)
    train(*FAST, "--output", split, "--max-steps", 4)  # stops mid-epoch... and mid-schedule
    train(*FAST, "--output", split, "--max-steps", 8, "--resume")
    assert (straight / "model.pdparams").read_bytes() == (split / "model.pdparams").read_bytes()
    assert [r["loss"] for r in metrics(straight)] == [r["loss"] for r in metrics(split)]
    a, b = safe_load(straight / "checkpoint_rank0.pdckpt"), safe_load(split / "checkpoint_rank0.pdckpt")
    for key in a["optimizer"]:
        if key != "LR_Scheduler":
            np.testing.assert_array_equal(a["optimizer"][key], b["optimizer"][key])
    np.testing.assert_array_equal(a["pfc"]["weight"], b["pfc"]["weight"])


def test_resume_after_sigkill_between_checkpoints_is_exact(tmp_path, small_dataset_rec):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # batch 2: five steps per epoch, so checkpoints come at steps 3 (save_every), 5 (epoch end), 6, 9
    config = [*FAST, "batch_size=2"]
    train(*config, "--output", straight, "--max-steps", 9)
    proc = subprocess.Popen([*TRAIN, *config, "--output", str(killed), "--max-steps", "9"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:  # kill once step 4 is logged: after the step-3 checkpoint, before 5
            path = killed / "metrics.jsonl"
            if path.exists() and len(path.read_text().splitlines()) >= 4:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state = safe_load(killed / "checkpoint_rank0.pdckpt")
    assert state["step"] == 3 and not (killed / "checkpoint_rank0.pdckpt.tmp").exists()
    train(*config, "--output", killed, "--max-steps", 9, "--resume")
    assert (straight / "model.pdparams").read_bytes() == (killed / "model.pdparams").read_bytes()
    assert [r["step"] for r in metrics(killed)] == list(range(1, 10))  # the killed run's extra lines dropped


def test_two_processes_keep_identical_weights_and_the_global_loss(tmp_path):
    log_dir = tmp_path / "logs"
    run_workers([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
                 str(log_dir), str(ROOT / "parity_tests" / "workers" / "train_worker.py"), str(tmp_path)],
                log_dir, timeout=600)

    import paddle

    from train.losses import ArcFace
    from train.partial_fc import PartialFC

    for step in range(3):
        r0, r1 = (np.load(tmp_path / f"rank{r}_step{step}.npz") for r in (0, 1))
        # backbone parameters identical on both ranks after every step (BN running statistics stay per rank)
        for key in r0.files:
            if key.startswith("param/"):
                np.testing.assert_array_equal(r0[key], r1[key], err_msg=f"step {step}: {key}")
        assert float(r0["loss"]) == float(r1["loss"])
        # the loss one process computes from the two ranks' embeddings, with the same class centres
        one = PartialFC(ArcFace(), 64, 11, sample_rate=1.0)
        one.weight.set_value(np.concatenate([r0["shard"], r1["shard"]]))
        loss = one(paddle.to_tensor(np.concatenate([r0["emb"], r1["emb"]])),
                   paddle.to_tensor(np.concatenate([r0["labels"], r1["labels"]])))
        assert abs(float(loss) - float(r0["loss"])) <= 1e-5 * abs(float(loss)), (step, float(loss), float(r0["loss"]))
    assert not np.array_equal(r0["emb"], r1["emb"])  # the ranks really saw different data


def run_main(argv) -> int:
    from train.train import main

    return exit_code(main, argv)


def one_line_error(capsys, code: int, *words: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err and err[-1].startswith("error: "), err
    assert "Traceback" not in "\n".join(err)
    for word in words:
        assert word in err[-1], err[-1]
    return err[-1]


def test_bad_configs_and_files_are_one_line_errors(tmp_path, capsys, small_dataset_rec):
    out = tmp_path / "o"
    assert one_line_error(capsys, run_main(["tiny_rec", "weight_decy=0.1", "--output", out]),
                          "override 'weight_decy=0.1': unknown key 'weight_decy' (did you mean 'weight_decay'?)")
    assert one_line_error(capsys, run_main(["tiny_rec", "batch_size=big", "--output", out]),
                          "batch_size must be int")
    one_line_error(capsys, run_main(["no_such_config"]), "no such config file")
    one_line_error(capsys, run_main(["tiny_rec", f"rec={tmp_path / 'nowhere'}", "--output", out]),
                   "training data not found")
    one_line_error(capsys, run_main(["tiny_rec", "num_image=11", "--output", out]),
                   "holds 10 images but the config says num_image = 11")
    one_line_error(capsys, run_main(["tiny_rec", "--output", out, "--resume"]), "no checkpoint to resume from")

    # --init with weights of another architecture, and a hostile file
    from converters.checkpoint import write_torch_state_dict
    from converters.demo import demo_state_dict

    r18 = tmp_path / "r18.pth"
    write_torch_state_dict(r18, demo_state_dict("r18", batches=1, batch_size=2))
    one_line_error(capsys, run_main([*FAST, "--output", out, "--init", r18]),
                   "network = mbf expects MobileFaceNet", "but the checkpoint is r18")
    evil = tmp_path / "evil.pdparams"
    evil.write_bytes(b"\x80\x04\x95\x1d\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94\x8c"
                     b"\x05touch\x94\x85\x94R\x94.")
    one_line_error(capsys, run_main([*FAST, "--output", out, "--init", evil]), "refused")


def test_existing_checkpoint_needs_resume_and_a_corrupt_one_is_refused(tmp_path, capsys, small_dataset_rec):
    out = tmp_path / "o"
    assert run_main([*FAST, "--output", out, "--max-steps", 1]) == 0
    capsys.readouterr()
    one_line_error(capsys, run_main([*FAST, "--output", out, "--max-steps", 2]), "already holds a training checkpoint")
    one_line_error(capsys, run_main([*FAST, "batch_size=2", "--output", out, "--max-steps", 2, "--resume"]),
                   "batch_size = 5 in the checkpoint, 2 now")
    (out / "checkpoint_rank0.pdckpt").write_bytes(b"garbage")
    one_line_error(capsys, run_main([*FAST, "--output", out, "--max-steps", 2, "--resume"]),
                   "not a readable training checkpoint")


def test_a_diverging_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, capsys, small_dataset_rec):
    out = tmp_path / "o"
    code = run_main([*FAST, "lr=1e6", "save_every=1", "--output", out, "--max-steps", 20])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and "loss is nan at step" in err and "last good checkpoint" in err, err
    bad_step = int(err.split("at step ")[1].split(";")[0])
    from converters.safe_pickle import safe_load

    assert safe_load(out / "checkpoint_rank0.pdckpt")["step"] == bad_step - 1


def test_verification_callback_logs_insightface_lines_on_the_packs_beside_the_data(
        tmp_path, capsys, small_dataset_rec, small_lfw):
    data = tmp_path / "data"  # the training pack with a verification pack beside it, as InsightFace lays out
    data.mkdir()
    for name in ("train.rec", "train.idx", "property"):
        (data / name).symlink_to(small_dataset_rec / name)
    (data / "lfw.bin").symlink_to(small_lfw)
    code = run_main([*FAST, f"rec={data}", "verbose=2", "val_targets=['lfw', 'agedb_30']",
                     "--output", tmp_path / "o", "--max-steps", 4])
    err = capsys.readouterr().err
    assert code == 0
    assert "val target agedb_30" in err and "not found, skipped" in err
    for step in (2, 4):
        assert f"[lfw][{step}]XNorm: " in err and f"[lfw][{step}]Accuracy-Flip: " in err
        assert f"[lfw][{step}]Accuracy-Highest: " in err
    line = next(ln for ln in err.splitlines() if "[lfw][4]Accuracy-Flip: " in ln)
    accuracy = float(line.split("Accuracy-Flip: ")[1].split("+-")[0])
    assert 0.0 <= accuracy <= 1.0
