"""Config files: InsightFace's values, safe parsing, and one-line errors for bad keys, types and paths."""

from __future__ import annotations

import pytest

from converters.errors import UserError
from train.config import (
    CONFIG_DIR,
    IGNORED_KEYS,
    TrainConfig,
    ignored_warning,
    load_config,
    parse_overrides,
    read_config_file,
)

VIT_JOBS = ["wf42m_pfc03_40epoch_8gpu_vit_t", "wf42m_pfc03_40epoch_8gpu_vit_b",
            "wf42m_pfc03_40epoch_64gpu_vit_s", "wf42m_pfc03_40epoch_64gpu_vit_l", "wf42m_pfc02_vit_h"]
JOBS = ["ms1mv3_r50", "ms1mv3_r50_onegpu", "ms1mv3_r100", "ms1mv2_r50", "ms1mv3_mbf", "glint360k_r100",
        "wf42m_pfc02_r100", *VIT_JOBS]
CPU_CONFIGS = ["tiny_rec", "tiny_synthetic", "tiny_vit"]


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
    # 8 GPUs x 128: 1024, 0 and 101,160; one GPU: 40,464 steps per epoch
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
    assert load_config("tiny_vit").network == "vit_t_dp005_mask0"


def test_every_config_file_is_listed_here_and_loads_and_validates(tmp_path, small_dataset_rec):
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.py")) == sorted(JOBS + CPU_CONFIGS)
    for name in JOBS:  # their data lives on a training machine; any folder passes the path check
        assert load_config(name, [f"rec={tmp_path}"]).output == f"work_dirs/{name}"
    for name in CPU_CONFIGS:
        assert load_config(name).num_image in (10, 64)


def test_insightface_vit_jobs(tmp_path):
    """The WebFace42M ViT jobs of arcface_torch/configs: CosFace, AdamW lr 0.001 decay 0.1, fp16."""
    jobs = {name: load_config(name, [f"rec={tmp_path}"]) for name in VIT_JOBS}
    for config in jobs.values():
        assert config.margin_list == (1.0, 0.0, 0.4) and config.embedding_size == 512
        assert (config.optimizer, config.lr, config.weight_decay, config.fp16) == ("adamw", 0.001, 0.1, True)
        assert (config.num_classes, config.num_image, config.val_targets) == (2059906, 42474557, ())
        assert (config.verbose, config.dali) == (2000, False)
    rows = {name: (c.network, c.sample_rate, c.batch_size, c.gradient_acc, c.num_epoch, c.warmup_epoch)
            for name, c in jobs.items()}
    assert rows == {
        "wf42m_pfc03_40epoch_8gpu_vit_t": ("vit_t_dp005_mask0", 0.3, 512, 1, 40, 4),
        "wf42m_pfc03_40epoch_8gpu_vit_b": ("vit_b_dp005_mask_005", 0.3, 256, 12, 40, 4),
        "wf42m_pfc03_40epoch_64gpu_vit_s": ("vit_s_dp005_mask_0", 0.3, 384, 1, 40, 4),
        "wf42m_pfc03_40epoch_64gpu_vit_l": ("vit_l_dp005_mask_005", 0.3, 384, 1, 40, 4),
        "wf42m_pfc02_vit_h": ("vit_h", 0.5, 768, 1, 16, 2),
    }
    # 8 GPUs x 512 = 4096 images per step: 10,369 steps per epoch, 41,476 of warmup, 414,760 in all
    vit_t = jobs["wf42m_pfc03_40epoch_8gpu_vit_t"]
    assert (vit_t.steps_per_epoch(8), vit_t.warmup_step(8), vit_t.total_step(8)) == (10369, 41476, 414760)
    assert ignored_warning(jobs["wf42m_pfc02_vit_h"]) == (
        "config keys accepted for InsightFace compatibility but ignored here: dali_aug = True")


def test_defaults_are_written_once_in_the_dataclass(tmp_path):
    """No base.py: a job file sets only what differs from TrainConfig's defaults (InsightFace's base.py)."""
    assert not (CONFIG_DIR / "base.py").exists()
    path = tmp_path / "job.py"
    path.write_text("rec = 'synthetic'\nnum_classes = 10\nnum_image = 10\n")
    expected = TrainConfig(rec="synthetic", num_classes=10, num_image=10, output="work_dirs/job")
    assert load_config(str(path)) == expected
    assert (expected.lr, expected.weight_decay, expected.batch_size, expected.seed, expected.num_epoch) == (
        0.1, 5e-4, 128, 2048, 20)


def test_setting_ignored_insightface_keys_draws_one_warning_line():
    assert sorted(IGNORED_KEYS) == ["dali_aug", "momentum", "resume", "save_all_states", "save_artifacts",
                                    "suffix_run_name", "using_wandb", "wandb_entity", "wandb_key",
                                    "wandb_log_all", "wandb_project", "wandb_resume"]
    assert ignored_warning(load_config("tiny_synthetic")) is None
    defaults = load_config("tiny_synthetic", ["momentum=0.9", "save_all_states=True"])
    assert ignored_warning(defaults) is None
    line = ignored_warning(load_config("tiny_synthetic", ["using_wandb=True", "momentum=0.5", "resume=True",
                                                          "wandb_project=faces"]))
    assert line == ("config keys accepted for InsightFace compatibility but ignored here: momentum = 0.5, "
                    "resume = True, using_wandb = True, wandb_project = 'faces'; --resume continues a run")


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
    ("network = 'r2061'\nrec = 'synthetic'\n", "network must be one of"),
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
