"""train/train.py end to end on CPU: the loss falls on real faces, every artefact is written, resume is
exact (also after SIGKILL), two processes keep identical weights, and bad input is one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

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


def test_tiny_rec_lowers_the_loss_and_writes_every_artefact(tmp_path, small_dataset_rec):
    # six r18 steps on the 10 faces (a Paddle dygraph CPU step takes ~7 s here): the loss falls from ~34 to
    # a few units within them (measured: 34.2, 8.6, 8.5, 0.6, 4.1, 0.004)
    out = tmp_path / "run"
    proc = train("tiny_rec", "--output", out, "--max-steps", 6)
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 7))
    losses = np.array([r["loss"] for r in rows])
    assert losses[-3:].mean() < 0.5 * losses[:3].mean(), losses
    assert all(set(r) >= {"step", "epoch", "loss", "lr", "samples_per_sec", "grad_norm", "grad_scale"} for r in rows)
    assert rows[0]["lr"] == 0.02 and rows[-1]["lr"] < rows[0]["lr"]
    # InsightFace's log line every `frequent` steps
    assert "Speed " in proc.stdout and "samples/sec   Loss " in proc.stdout and "Global Step: 5" in proc.stdout
    for name in ("checkpoint_rank0.pdckpt", "model.pdparams", "model.pt", "config.json", "training.log"):
        assert (out / name).is_file(), name

    import torch

    import torch_reference

    state = torch.load(out / "model.pt", weights_only=True)
    torch_reference.get_model("r18").load_state_dict(state, strict=True)  # InsightFace's layout
    assert int(state["layer1.0.bn1.num_batches_tracked"]) == 6
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


# batch 2: five steps per epoch, so checkpoints come at steps 3 (save_every), 5 (epoch end), 6, 9
KILL_CONFIG = [*FAST, "batch_size=2"]


@pytest.fixture(scope="module")
def straight9(tmp_path_factory, small_dataset_rec) -> Path:
    """An uninterrupted run of KILL_CONFIG to step 9, for the killed-and-resumed runs to match."""
    out = tmp_path_factory.mktemp("straight") / "run"
    train(*KILL_CONFIG, "--output", out, "--max-steps", 9)
    return out


def test_resume_after_sigkill_between_checkpoints_is_exact(tmp_path, small_dataset_rec, straight9):
    straight, killed = straight9, tmp_path / "killed"
    config = KILL_CONFIG
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
    out = capsys.readouterr().out  # progress on stdout, stderr kept for errors
    assert code == 0
    assert "val target agedb_30" in out and "not found, skipped" in out
    for step in (2, 4):
        assert f"[lfw][{step}]XNorm: " in out and f"[lfw][{step}]Accuracy-Flip: " in out
        assert f"[lfw][{step}]Accuracy-Highest: " in out
    line = next(ln for ln in out.splitlines() if "[lfw][4]Accuracy-Flip: " in ln)
    accuracy = float(line.split("Accuracy-Flip: ")[1].split("+-")[0])
    assert 0.0 <= accuracy <= 1.0


def corrupt_pack(folder: Path, small_dataset_rec: Path, record: int = 3) -> Path:
    """A copy of the sample pack whose ``record``-th JPEG payload has its first 200 bytes zeroed."""
    import shutil

    shutil.copytree(small_dataset_rec, folder)
    for path in folder.iterdir():
        path.chmod(0o644)
    rec = folder / "train.rec"
    data = bytearray(rec.read_bytes())
    starts = [i for i in range(len(data) - 3) if data[i:i + 3] == b"\xff\xd8\xff"]
    data[starts[record]:starts[record] + 200] = bytes(200)
    rec.write_bytes(bytes(data))
    return folder



@pytest.mark.parametrize("workers", [0, 1, 2])
def test_a_corrupt_record_stops_training_with_one_error_line_for_any_worker_count(workers, tmp_path,
                                                                                   small_dataset_rec):
    pack = corrupt_pack(tmp_path / "pack", small_dataset_rec)
    started = time.monotonic()
    proc = train(*FAST, f"rec={pack}", f"num_workers={workers}", "--output", tmp_path / "o", "--max-steps", 6,
                 check=False, timeout=120)
    assert time.monotonic() - started < 90
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert lines[-1].startswith(f"error: {pack / 'train.rec'}: record key 4: cannot be decoded"), lines[-1]
    assert "Traceback" not in proc.stderr and "DataLoader" not in proc.stderr
    assert [ln for ln in lines if not ln.startswith("Training: ")] == [lines[-1]]  # only the run's log lines


def test_resume_checkpoint_fields_are_checked_by_schema(tmp_path, capsys, small_dataset_rec):
    import pickle

    out = tmp_path / "o"
    assert run_main([*FAST, "--output", out, "--max-steps", 1]) == 0
    capsys.readouterr()
    ckpt = out / "checkpoint_rank0.pdckpt"
    good = safe_load(ckpt)
    some_key = next(iter(good["backbone"]))

    def without(key):
        return {k: v for k, v in good.items() if k != key}

    cases = [
        (without("step"), "checkpoint field 'step': missing"),
        ({**good, "epoch": "1"}, "checkpoint field 'epoch': expected an integer, found str '1'"),
        ({**good, "world_size": 0}, "checkpoint field 'world_size': must be in [1, 2**62], got int 0"),
        ({**good, "step": 10**30}, "checkpoint field 'step': must be in [0, 2**62], got int of 100 bits"),
        ({**good, "config": "r50"}, "checkpoint field 'config': expected a dict, found str 'r50'"),
        ({**good, "config": {k: v for k, v in good["config"].items() if k != "num_classes"}},
         "checkpoint field 'config.num_classes': missing"),
        ({**good, "config": {**good["config"], "batch_size": [5]}},
         "checkpoint field 'config.batch_size': batch_size must be int, got list [5]"),
        (without("backbone"), "checkpoint field 'backbone': missing"),
        ({**good, "backbone": {**good["backbone"], some_key: "w"}},
         f"checkpoint field 'backbone.{some_key}': expected an array, found str 'w'"),
        ({**good, "backbone": {**good["backbone"], some_key: np.zeros(3, np.float32)}},
         f"checkpoint field 'backbone.{some_key}': shape [3], this run's model needs"),
        ({**good, "backbone": {k: v for k, v in good["backbone"].items() if k != some_key}},
         f"checkpoint field 'backbone': missing '{some_key}'"),
        ({**good, "pfc": {**good["pfc"], "weight": np.zeros((3, 3), np.float32)}},
         "checkpoint field 'pfc.weight': shape [3, 3], this run's model needs"),
        ({**good, "optimizer": [1]}, "checkpoint field 'optimizer': expected a dict, found list"),
        ({**good, "rng": {}}, "checkpoint field 'rng.pfc_scores': missing"),
        ({**good, "rng": {"pfc_scores": {"bit_generator": "PCG64"}}},
         "checkpoint field 'rng.pfc_scores': not a numpy generator state"),
    ]
    for state, words in cases:
        with open(ckpt, "wb") as fh:
            pickle.dump(state, fh, protocol=5)
        line = one_line_error(capsys, run_main([*FAST, "--output", out, "--max-steps", 2, "--resume"]), words)
        assert line.startswith(f"error: {ckpt}: "), line


def test_sigkill_in_a_checkpoint_write_keeps_the_previous_one_and_the_folder_is_locked_meanwhile(
        tmp_path, capsys, small_dataset_rec, straight9):
    from train.checkpoint import PAUSE_HOOK

    killed = tmp_path / "killed"
    env = {**os.environ, PAUSE_HOOK: "5"}  # the step-5 checkpoint stops after writing half its bytes
    proc = subprocess.Popen([*TRAIN, *KILL_CONFIG, "--output", str(killed), "--max-steps", "9"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    half = killed / f".checkpoint_rank0.pdckpt.tmp-{proc.pid}"
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            logged = killed / "metrics.jsonl"
            if logged.exists() and len(logged.read_text().splitlines()) >= 5 and half.exists() \
                    and half.stat().st_size > 0:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before its step-5 checkpoint"
        # meanwhile, a second run on the same --output refuses, naming the running pid
        code = run_main([*KILL_CONFIG, "--output", killed, "--max-steps", 9, "--resume"])
        line = one_line_error(capsys, code, f"in use by another run (pid {proc.pid} on ")
        assert line.startswith(f"error: {killed}: ")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert safe_load(killed / "checkpoint_rank0.pdckpt")["step"] == 3  # the previous checkpoint, intact
    assert half.exists()  # the half-written temporary was never renamed over it
    resumed = train(*KILL_CONFIG, "--output", killed, "--max-steps", 9, "--resume")
    assert f"taking over the stale lock of pid {proc.pid}" in resumed.stderr  # the kernel dropped the flock
    assert "resumed from" in resumed.stdout and "at step 3 " in resumed.stdout
    assert (straight9 / "model.pdparams").read_bytes() == (killed / "model.pdparams").read_bytes()
    assert [r["step"] for r in metrics(killed)] == list(range(1, 10))
    assert [r["loss"] for r in metrics(killed)] == [r["loss"] for r in metrics(straight9)]
    assert not [p.name for p in killed.iterdir() if ".tmp-" in p.name or p.name.startswith(".lock")]


def test_output_folder_problems_and_init_inside_it_are_one_line_before_the_work(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "model.pdparams").write_bytes(b"earlier weights")
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert one_line_error(capsys, run_main([*FAST, "--output", out, "--init", out / "model.pdparams"]),
                          "is also the input --init; choose another --output").startswith(
        f"error: {out / 'model.pdparams'}: ")
    one_line_error(capsys, run_main([*FAST, "--output", afile]), f"error: {afile}: is a file, not a folder")
    one_line_error(capsys, run_main([*FAST, "--output", afile / "run"]), f"{afile} is a file, not a folder")
    one_line_error(capsys, run_main([*FAST, "--output", tmp_path / ("r" * 300)]), "file name too long (300 bytes")
    assert (out / "model.pdparams").read_bytes() == b"earlier weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "o"] and afile.read_text() == "x"
    assert [p.name for p in out.iterdir()] == ["model.pdparams"]


def test_tiny_vit_trains_through_the_cli_and_its_weights_load_in_both_frameworks(tmp_path, small_dataset_rec):
    import paddle
    import torch

    import torch_reference
    from converters.models import load_paddle_weights
    from paddle_models import get_model

    out = tmp_path / "vit"
    proc = train("tiny_vit", "using_wandb=True", "momentum=0.5", "--output", out, "--max-steps", 3)
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["lr"] for r in rows] == [0.001, 0.0005, 0.001]  # AdamW, one warmup epoch of two steps
    assert all(np.isfinite(r["loss"]) and 0.0 < r["loss"] < 69.08 for r in rows), rows  # 69.08 = -log(1e-30)
    ignored = [line for line in proc.stdout.splitlines() if "ignored here" in line]
    assert len(ignored) == 1 and ignored[0].endswith("-config keys accepted for InsightFace compatibility but "
                                                     "ignored here: momentum = 0.5, using_wandb = True")

    network = "vit_t_dp005_mask0"
    paddle_model = get_model(network, num_features=512)
    load_paddle_weights(paddle_model, read_paddle_weights(out / "model.pdparams"))  # strict
    torch_model = torch_reference.get_model(network, num_features=512)
    torch_model.load_state_dict(torch.load(out / "model.pt", weights_only=True), strict=True)
    paddle_model.eval()
    torch_model.eval()
    image = np.random.default_rng(0).uniform(-1, 1, (2, 3, 112, 112)).astype(np.float32)
    ours = paddle_model(paddle.to_tensor(image)).numpy()
    with torch.no_grad():
        theirs = torch_model(torch.from_numpy(image)).numpy()
    assert ours.shape == (2, 512) and np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()
