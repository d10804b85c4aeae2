"""Model sources: every weights file read by the one reader (converters.weights), ONNX files checked here."""

from __future__ import annotations

import numpy as np
import pytest

from converters.errors import UserError
from converters.weights import read_weights
from eval.sources import load_weights


def test_weights_problems_are_user_errors(r18_files, tmp_path):
    with pytest.raises(UserError, match="unknown weights format '.npz'"):
        load_weights(tmp_path / "model.npz")
    with pytest.raises(UserError, match="no such file"):
        load_weights(tmp_path / "missing.pth")
    with pytest.raises(UserError, match="--arch r50 expects"):
        load_weights(r18_files["pdparams"], arch="r50")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage")
    with pytest.raises(UserError, match="not a readable ONNX model|expected one image input"):
        load_weights(broken)


def test_both_formats_read_to_the_same_arrays_and_architecture(r18_files):
    pth, pdparams = read_weights(r18_files["pth"]), read_weights(r18_files["pdparams"])
    assert (pth.format, pdparams.format) == ("torch", "paddle")
    assert pth.arch == pdparams.arch and (pth.name, pth.num_features) == ("r18", 512)
    assert pth.meta == {} and pdparams.meta["arch"] == "r18" and pdparams.meta["num_features"] == 512
    assert pth.checkpoint.wrapper is None and pth.checkpoint.stripped_prefix == ""
    torch_arrays, converted = pth.torch_state(), pdparams.torch_state()
    assert len(torch_arrays) == 187 and list(converted) == list(torch_arrays)
    assert all(np.array_equal(converted[k], v) for k, v in torch_arrays.items())
    paddle_arrays = pth.paddle_state().arrays
    assert len(paddle_arrays) == 156 and list(paddle_arrays) == list(pdparams.paddle_state().arrays)
    assert len(pth.sha256) == 64 and pth.sha256 != pdparams.sha256
    source = load_weights(r18_files["pdparams"])
    assert (source.kind, source.arch, source.sha256) == ("paddle", "r18", pdparams.sha256)
    source.release()
    assert source.weights.paddle_weights is None and source.weights.torch_arrays is None


def test_the_reader_takes_a_forced_format_and_names_what_it_expects(r18_files, tmp_path):
    renamed = tmp_path / "backbone.bin"
    renamed.write_bytes(r18_files["pth"].read_bytes())
    assert read_weights(renamed, format="torch").name == "r18"
    with pytest.raises(UserError, match=r"backbone\.bin: unknown weights format '\.bin' \(expected \.pth, \.pt, "
                                        r"\.pdparams\)"):
        read_weights(renamed)
    with pytest.raises(UserError, match="network = r50 expects"):
        read_weights(r18_files["pth"], "r50", option="network =")


def test_vit_weights_are_detected_and_take_any_name_with_the_same_weights(tmp_path):
    """vit_t and vit_t_dp005_mask0 differ only in training settings: either name reads the same file."""
    from converters.checkpoint import write_paddle_weights, write_torch_state_dict
    from converters.demo import demo_state_dict
    from converters.mapping import torch_to_paddle

    arrays = demo_state_dict("vit_t", batches=1, batch_size=2)
    write_torch_state_dict(tmp_path / "vit.pth", arrays)
    write_paddle_weights(tmp_path / "vit.pdparams", torch_to_paddle(arrays, "vit_t", 512, "demo"))
    for name in ("vit.pth", "vit.pdparams"):
        detected = read_weights(tmp_path / name)
        assert detected.name == "vit_t" and detected.arch.same_weights == ("vit_t", "vit_t_dp005_mask0")
        assert read_weights(tmp_path / name, "vit_t_dp005_mask0").name == "vit_t_dp005_mask0"
        with pytest.raises(UserError, match="--arch vit_s expects"):
            read_weights(tmp_path / name, "vit_s")
    assert load_weights(tmp_path / "vit.pdparams", "vit_t_dp005_mask0").arch == "vit_t_dp005_mask0"
