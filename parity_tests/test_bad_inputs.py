"""Every way a user can hand the converters a bad file: one line naming the file and the problem,
exit code 2, no output left behind, and a hostile pickle refused without running anything."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from converters import paddle2torch, torch2paddle
from converters.errors import exit_code

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def r18_state():
    from converters.demo import demo_state_dict

    return OrderedDict((k, torch.from_numpy(v)) for k, v in demo_state_dict("r18", seed=2, batches=1).items())


def check_error(capsys, code, path, *words):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2
    assert lines and lines[-1].startswith(f"error: {path}: "), captured.err
    for word in words:
        assert word in lines[-1], lines[-1]
    assert "Traceback" not in captured.err


def write(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def edited(state, drop=None, add=None, reshape=None):
    state = OrderedDict(state)
    if drop:
        del state[drop]
    if add:
        state[add] = torch.zeros(3)
    if reshape:
        state[reshape] = torch.zeros(1)
    return state


CASES = {
    "missing file": (lambda d, sd: d / "nope.pth", ["no such file"]),
    "directory": (lambda d, sd: d, ["is a directory"]),
    "empty file": (lambda d, sd: _touch(d / "empty.pth"), ["empty"]),
    "not a checkpoint": (lambda d, sd: _text(d / "notes.pth"), ["not a PyTorch checkpoint"]),
    "truncated": (lambda d, sd: _truncate(write(d / "t.pth", sd)), ["truncated or corrupt"]),
    "no tensors": (lambda d, sd: write(d / "o.pth", {"epoch": 3, "lr": 0.1}), ["no backbone state_dict"]),
    "one key missing": (lambda d, sd: write(d / "m.pth", edited(sd, drop="layer2.1.bn2.weight")),
                        ["missing key layer2.1.bn2.weight", "r18"]),
    "one extra key": (lambda d, sd: write(d / "x.pth", edited(sd, add="head.weight")),
                      ["unexpected key head.weight"]),
    "one wrong shape": (lambda d, sd: write(d / "s.pth", edited(sd, reshape="layer3.0.prelu.weight")),
                        ["layer3.0.prelu.weight: shape [1] but r18 expects [256]"]),
    "not insightface": (lambda d, sd: write(d / "n.pth", {"w": torch.zeros(2)}),
                        ["not an InsightFace state_dict of a registered architecture"]),
}


def _touch(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _text(path: Path) -> Path:
    path.write_text("these are not weights\n")
    return path


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_torch2paddle_bad_checkpoint_is_one_line_exit_2_and_no_output(case, r18_state, tmp_path, capsys):
    make, words = CASES[case]
    src = make(tmp_path, r18_state)
    out = tmp_path / "out" / "w.pdparams"
    code = exit_code(torch2paddle.main, ["--src", src, "--out", out, "--no-verify"])
    check_error(capsys, code, src, *words)
    assert not out.exists()


def test_wrong_arch_names_expected_and_found(r18_state, tmp_path, capsys):
    src = write(tmp_path / "r18.pth", r18_state)
    out = tmp_path / "w.pdparams"
    code = exit_code(torch2paddle.main, ["--arch", "r50", "--src", src, "--out", out])
    check_error(capsys, code, src, "--arch r50 expects iresnet blocks 3-4-14-3",
                "but the checkpoint is r18 (iresnet blocks 2-2-2-2")
    assert not out.exists()


def test_hostile_pth_is_refused_and_its_payload_never_runs(hostile, tmp_path, capsys):
    payload, marker = hostile
    src = write(tmp_path / "evil.pth", {"state_dict": {"conv1.weight": payload}})
    code = exit_code(torch2paddle.main, ["--src", src, "--out", tmp_path / "w.pdparams"])
    check_error(capsys, code, src, "refused", "possibly malicious")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_hostile_pdparams_is_refused_and_its_payload_never_runs(protocol, hostile, tmp_path, capsys):
    payload, marker = hostile
    src = tmp_path / "evil.pdparams"
    src.write_bytes(pickle.dumps({"conv1.weight": payload}, protocol=protocol))
    code = exit_code(paddle2torch.main, ["--src", src, "--out", tmp_path / "w.pth"])
    check_error(capsys, code, src, "refused", "posix.system" if os.name == "posix" else "system")
    assert not marker.exists() and not (tmp_path / "w.pth").exists()


def test_pdparams_problems_are_one_line_errors(tmp_path, capsys):
    from converters.checkpoint import PaddleWeights, write_paddle_weights
    from converters.mapping import layout

    good = OrderedDict((e.paddle_key, np.zeros(e.paddle_shape, np.float32)) for e in layout("mbf") if e.paddle_key)
    cases = {
        "truncated.pdparams": ("truncate", "not a readable .pdparams"),
        "missing.pdparams": ("drop", "missing key features.layers.3._variance"),
        "shape.pdparams": ("shape", "layers.2.layers.1.layers.0.weight: shape [128, 2, 3, 3] but mbf expects "
                                    "[128, 1, 3, 3]"),
        "text.pdparams": ("text", "not a readable .pdparams"),
    }
    for name, (how, words) in cases.items():
        path = tmp_path / name
        arrays = OrderedDict(good)
        if how == "drop":
            del arrays["features.layers.3._variance"]
        if how == "shape":
            arrays["layers.2.layers.1.layers.0.weight"] = np.zeros((128, 2, 3, 3), np.float32)
        write_paddle_weights(path, PaddleWeights(arrays, {}))
        if how == "truncate":
            path.write_bytes(path.read_bytes()[:5000])
        if how == "text":
            path.write_text("hello")
        out = tmp_path / f"{name}.pth"
        code = exit_code(paddle2torch.main, ["--src", path, "--out", out] + (["--arch", "mbf"] if how == "shape" else []))
        check_error(capsys, code, path, words)
        assert not out.exists()


def test_cli_process_exit_code_and_single_stderr_line(tmp_path):
    """Through a real process: exit status 2, exactly one stderr line, nothing written."""
    out = tmp_path / "w.pdparams"
    proc = subprocess.run([sys.executable, str(ROOT / "converters" / "torch2paddle.py"), "--src",
                           str(tmp_path / "missing.pth"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing.pth'}: no such file"]
    assert not out.exists()


@pytest.mark.parametrize("meta,words", [
    ("r18", "__arcface_bridge__: metadata must be a dict, found str 'r18'"),
    ([1, 2], "__arcface_bridge__: metadata must be a dict, found list with 2 entries"),
    (10**30, "__arcface_bridge__: metadata must be a dict, found int of 100 bits"),
    ({"num_features": 10**30}, "__arcface_bridge__.num_features: expected an integer in [1, 65536], found int of 100 bits"),
    ({"num_features": "512"}, "__arcface_bridge__.num_features: expected an integer in [1, 65536], found str '512'"),
    ({"arch": ["r18"]}, "__arcface_bridge__.arch: expected an architecture name, found list"),
    ({"num_batches_tracked": "many"}, "__arcface_bridge__.num_batches_tracked: expected a dict"),
    ({"num_batches_tracked": {"bn1.num_batches_tracked": 10**30}}, "__arcface_bridge__.num_batches_tracked"),
    ({"demo": "yes"}, "__arcface_bridge__.demo: expected a boolean"),
    ({7: 1}, "__arcface_bridge__: metadata key int 7 is not a string"),
])
def test_pdparams_metadata_is_checked_by_schema(meta, words, tmp_path, capsys):
    from converters.checkpoint import META_KEY
    from converters.mapping import layout

    arrays = {e.paddle_key: np.zeros(e.paddle_shape, np.float32) for e in layout("mbf") if e.paddle_key}
    src = tmp_path / "meta.pdparams"
    src.write_bytes(pickle.dumps({**arrays, META_KEY: meta}, protocol=4))
    out = tmp_path / "w.pth"
    code = exit_code(paddle2torch.main, ["--src", src, "--out", out])
    check_error(capsys, code, src, words)
    assert not out.exists()


def test_pdparams_with_valid_and_unknown_metadata_converts(tmp_path, capsys):
    from converters.checkpoint import META_KEY, read_paddle_weights
    from converters.mapping import layout

    arrays = {e.paddle_key: np.zeros(e.paddle_shape, np.float32) for e in layout("mbf") if e.paddle_key}
    src = tmp_path / "ok.pdparams"
    meta = {"format": 1, "arch": "mbf", "num_features": 512, "num_batches_tracked": {}, "demo": False,
            "source_dtypes": ["float32"], "a_future_key": [1, 2]}
    src.write_bytes(pickle.dumps({**arrays, META_KEY: meta}, protocol=4))
    assert read_paddle_weights(src).meta == meta
