"""Config files: InsightFace's values, safe parsing, and one-line errors for bad keys, types and paths."""

from __future__ import annotations

import pytest

from converters.errors import UserError
from train.config import CONFIG_DIR, load_config, parse_overrides, read_config_file

JOBS = ["ms1mv3_r50", "ms1mv3_r50_onegpu", "ms1mv3_r100", "ms1mv2_r50", "ms1mv3_mbf", "glint360k_r100",
        "wf42m_pfc02_r100"]


@pytest.mark.parametrize("name", JOBS)
def test_insightface_job_configs_parse_and_need_their_data(name):
    values = read_config_file(CONFIG_DIR / f"{name}.py")
    assert values["rec"].startswith("/train_tmp/")
    with pytest.raises(UserError, match="training data not found"):
        load_config(name)


def test_insightface_values_and_schedule_constants(tmp_path):
    config = load_config("ms1mv3_r50", [f"rec={tmp_path}"])
    assert (config.lr, config.weight_decay, config.num_classes, config.num_image) == (0.1, 5e-4, 93431, 5179510)
    assert config.margin_list == (1.0, 0.5, 0.0) and config.fp16 is True
    # 8 GPUs x 128 (reference §6.2): 1024, 0 and 101,160; one GPU: 40,464 steps per epoch
    assert config.total_batch(8) == 1024 and config.warmup_step(8) == 0 and config.total_step(8) == 101160
    assert config.steps_per_epoch(1) == 40464
    assert load_config("ms1mv3_r50_onegpu", [f"rec={tmp_path}"]).lr == 0.02
    glint = load_config("glint360k_r100", [f"rec={tmp_path}"])
    assert glint.margin_list == (1.0, 0.0, 0.4) and glint.weight_decay == 1e-4 and glint.num_classes == 360232
    assert load_config("wf42m_pfc02_r100", [f"rec={tmp_path}"]).sample_rate == 0.2
    mbf = load_config("ms1mv3_mbf", [f"rec={tmp_path}"])
    assert (mbf.network, mbf.weight_decay, mbf.num_epoch) == ("mbf", 1e-4, 40)


def test_cpu_configs_resolve_their_data(small_dataset_rec):
    assert load_config("tiny_rec").num_classes == 10
    assert load_config("tiny_synthetic").rec == "synthetic"


def test_overrides_are_typed():
    assert parse_overrides(["lr=0.5", "network=r18", "val_targets=['lfw']", "fp16=False", "lr=1"]) == {
        "lr": 1.0, "network": "r18", "val_targets": ("lfw",), "fp16": False}


@pytest.mark.parametrize("text,message", [
    ("lrr = 0.1\n", "line 1: unknown key 'lrr' (did you mean 'lr'?)"),
    ("lr = 'fast'\n", "line 1: lr must be float, got str 'fast'"),
    ("batch_size = 1.5\n", "line 1: batch_size must be int, got float 1.5"),
    ("import os\nlr = os.getcwd()\n", "line 2: lr: value must be a literal"),
    ("lr = (\n", "line 1:"),
    ("optimizer = 'adam'\nrec = 'synthetic'\n", "optimizer must be one of sgd, adamw, got 'adam'"),
    ("network = 'r2060'\nrec = 'synthetic'\n", "network must be one of"),
    ("dali = True\nrec = 'synthetic'\n", "NVIDIA DALI is not available"),
    ("rec = 'synthetic'\nnum_classes = 0\n", "num_classes must be positive"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "job.py"
    # line-numbered errors come from parsing; the others from validation, which needs a usable file
    header = "" if "line" in message else "num_image = 10\n" + ("" if "num_classes" in text else "num_classes = 10\n")
    path.write_text(header + text)
    with pytest.raises(UserError) as err:
        load_config(str(path))
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_override_and_missing_config():
    with pytest.raises(UserError, match="override 'lrate=1': unknown key 'lrate'"):
        parse_overrides(["lrate=1"])
    with pytest.raises(UserError, match="no such config file"):
        load_config("no_such_job")


def test_extends_reads_the_parent_first_and_refuses_loops(tmp_path):
    child = tmp_path / "child.py"
    child.write_text(f"extends = {str(CONFIG_DIR / 'ms1mv3_r50.py')!r}\nlr = 0.5\n")
    values = read_config_file(child)
    assert values["lr"] == 0.5 and values["num_classes"] == 93431
    loop_a, loop_b = tmp_path / "a.py", tmp_path / "b.py"
    loop_a.write_text(f"extends = {str(loop_b)!r}\n")
    loop_b.write_text(f"extends = {str(loop_a)!r}\n")
    with pytest.raises(UserError, match="loops back to itself"):
        read_config_file(loop_a)


@pytest.mark.parametrize("content,message", [
    (b"lr = 0.1  # caf\xe9\n", "not UTF-8 text (invalid byte 0xe9 at offset 15)"),
    (b"lr = 0.1\x00\n", "not a config file"),
    (b"lr = " + b"-" * 100_000 + b"1\n", "too large or too deeply nested to read"),  # parser stack: MemoryError
    (b"lr = a" + b".b" * 100_000 + b"\n", "nested too deeply to read"),  # RecursionError
    (b"val_targets = " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "too many nested parentheses"),
    (b"notes = '" + b"x" * (1 << 20) + b"'\n", "config file larger than 1048576 bytes"),
    (b"lr = " + b"[1, " * 150 + b"]" * 150 + b"\n", "lr must be float, got list [1, [1,"),
])
def test_unreadable_and_hostile_config_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "job.py"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        read_config_file(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


@pytest.mark.parametrize("override,message", [
    ("num_classes=100000000000", "num_classes must be at most 2147483647 (Paddle's int32 labels)"),
    ("num_classes=-3", "num_classes must be positive"),
    ("num_image=2147483648", "num_image must be at most 2147483647"),
    ("lr=-0.1", "lr must be a finite number in [0, inf), got -0.1"),
    ("lr=float('nan')", "lr must be float"),
    ("weight_decay=-1", "weight_decay must be a finite number in [0, inf)"),
    ("batch_size=0", "batch_size must be positive"),
    ("num_epoch=0", "num_epoch must be positive"),
    ("sample_rate=0", "sample_rate must be a finite number in (0, 1]"),
    ("sample_rate=1.5", "sample_rate must be a finite number in (0, 1]"),
    ("num_workers=-1", "num_workers must not be negative"),
    ("gradient_acc=0", "gradient_acc must be positive"),
    ("embedding_size=0", "embedding_size must be positive"),
    ("margin_list=(1.0, 1e400, 0.0)", "margin_list must be three finite numbers"),
    ("val_targets=[1, 2]", "val_targets must be pack names"),
    ("seed=-1", "seed must not be negative"),
])
def test_out_of_range_values_name_the_override(override, message):
    with pytest.raises(UserError) as err:
        load_config("tiny_synthetic", [override])
    text = str(err.value)
    assert text.startswith(f"override {override!r}: ") or "must be float" in message, text
    assert message in text, text


def test_out_of_range_value_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "job.py"
    path.write_text("rec = 'synthetic'\nnum_image = 10\nnum_classes = 10 ** 11\n")
    with pytest.raises(UserError, match="value must be a literal"):
        load_config(str(path))
    path.write_text("rec = 'synthetic'\nnum_image = 10\nnum_classes = 100000000000\nlr = 0.0\n")
    with pytest.raises(UserError) as err:
        load_config(str(path))
    assert str(err.value).startswith(f"{path}: num_classes must be at most 2147483647")
    path.write_text("rec = 'synthetic'\nnum_image = 10\nnum_classes = 10\nlr = 0.0\n")
    assert load_config(str(path)).lr == 0.0  # a frozen run is allowed


def test_deeply_nested_override_is_one_line():
    with pytest.raises(UserError) as err:
        parse_overrides(["lr=" + "-" * 100_000 + "1"])
    assert "\n" not in str(err.value)
