"""Adding architectures through the registry alone: a new iresnet size and a tiny ViT, registered at run
time, convert in both directions through the command-line tools, are detected from their checkpoints and
pass layer-by-layer forward parity, with no other code touched."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

import architectures
from converters import paddle2torch, torch2paddle
from converters.arch import detect_arch
from converters.checkpoint import read_paddle_weights, read_torch_checkpoint
from converters.demo import demo_state_dict
from converters.errors import UserError, exit_code
from converters.inputs import seeded_images
from converters.mapping import torch_to_paddle
from converters.models import paddle_model, torch_model
from converters.parity import EMBEDDING_COSINE, EVAL_LAYER_REL, compare_forward

NEW = {
    "r_2342": architectures.IResNetSpec((2, 3, 4, 2)),
    # 16-pixel patches (49 tokens), 4 heads of 16: nothing of vit_t's shape is assumed anywhere
    "vit_tiny": architectures.ViTSpec(64, 2, num_heads=4, patch_size=16, drop_path_rate=0.1, mask_ratio=0.1),
}


@pytest.fixture(params=list(NEW))
def new_arch(request):
    with architectures.registered(request.param, NEW[request.param]):
        yield request.param
    assert request.param not in architectures.names()


def test_registered_architecture_converts_both_ways_is_detected_and_passes_parity(new_arch, tmp_path, capsys):
    arrays = demo_state_dict(new_arch, seed=5, num_features=128)
    src, out, back = tmp_path / "m.pth", tmp_path / "m.pdparams", tmp_path / "back.pth"
    torch.save(OrderedDict((k, torch.from_numpy(v)) for k, v in arrays.items()), src)

    # detected from the checkpoint's keys and shapes, without --arch
    assert exit_code(torch2paddle.main, ["--src", src, "--out", out, "--table", "none", "--batch", "2"]) == 0
    assert "PASS forward-eval" in capsys.readouterr().out
    weights = read_paddle_weights(out)
    assert (weights.meta["arch"], weights.meta["num_features"]) == (new_arch, 128)
    info = detect_arch({k: v.shape for k, v in weights.arrays.items()}, out, "paddle")
    assert (info.name, info.num_features) == (new_arch, 128)

    assert exit_code(paddle2torch.main, ["--src", out, "--out", back, "--check-against", src]) == 0
    restored = read_torch_checkpoint(back).arrays
    assert list(restored) == list(arrays)
    assert all(restored[k].tobytes() == arrays[k].tobytes() for k in arrays)

    ref = torch_model(new_arch, arrays, num_features=128)
    model = paddle_model(new_arch, torch_to_paddle(arrays, new_arch, 128, "mem"), num_features=128)
    report = compare_forward(ref, model, seeded_images(3, seed=21))
    assert report.passed and max(r.rel for r in report.rows) <= EVAL_LAYER_REL
    assert report.embedding_cosine >= EMBEDDING_COSINE
    with torch.no_grad():
        emb = ref(torch.from_numpy(seeded_images(4, seed=2))).numpy()
    assert emb.shape == (4, 128) and np.isfinite(emb).all()


def test_registry_refuses_bad_names_duplicates_and_specs():
    with pytest.raises(ValueError, match="already registered"):
        architectures.register("r50", architectures.IResNetSpec((1, 1, 1, 1)))
    with pytest.raises(ValueError, match="identifier"):
        architectures.register("r-50", architectures.IResNetSpec((1, 1, 1, 1)))
    with pytest.raises(TypeError, match="spec must be one of"):
        architectures.register("x", {"blocks": (1, 1, 1, 1)})
    with pytest.raises(ValueError, match="built in"):
        architectures.unregister("r50")
    with pytest.raises(ValueError, match="four positive ints"):
        architectures.IResNetSpec((3, 4, 14))
    with pytest.raises(ValueError, match="not divisible"):
        architectures.ViTSpec(100, 2, num_heads=8)
    with pytest.raises(ValueError, match="norm 'bn' is not supported"):
        architectures.ViTSpec(64, 2, norm="bn")
    with pytest.raises(ValueError, match="unknown architecture 'r51'; known: r18, r34"):
        architectures.spec_of("r51")


def test_every_command_and_config_check_sees_a_registered_name(tmp_path):
    from train.config import TrainConfig, validate

    config = TrainConfig(network="r_2342", num_classes=10, num_image=10, rec="synthetic")
    with architectures.registered("r_2342", NEW["r_2342"]):
        parser_choices = torch2paddle.parse_args(["--arch", "r_2342", "--no-verify"]).arch
        assert parser_choices == "r_2342"
        validate(config)
    with pytest.raises(UserError, match="network must be one of"):
        validate(config)
