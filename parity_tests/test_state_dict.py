"""State_dict layout: InsightFace's keys, order, shapes and dtypes in the PyTorch reference, the Paddle
models' names and shapes equal to the mapping table, and a bit-identical torch -> paddle -> torch trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import architectures
import paddle_models
import torch_reference
from converters.mapping import layout, paddle_to_torch, torch_to_paddle
from parity_tests.archs import ARCHS

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"

# InsightFace's own counts (reference §1.3): state_dict entries and parameters including features.weight
INSIGHTFACE_COUNTS = {
    "r18": (187, 24_025_600), "r34": (331, 34_139_328), "r50": (475, 43_590_848),
    "r100": (925, 65_156_160), "r200": (1807, 118_833_920), "mbf": (333, 2_059_520),
}


def lazy_paddle_model(arch: str):
    """The Paddle model built under ``paddle.LazyGuard``: names, order and shapes without initialising the
    weights (r200 in 0.9 s instead of 5.9 s; eager construction is exercised by the forward parity tests)."""
    import paddle

    with paddle.LazyGuard():
        return paddle_models.get_model(arch)


def read_tsv(name: str) -> list[tuple[str, list[int], str]]:
    path = REFERENCE / name
    if not path.exists():
        pytest.skip(f"reference key list not found: {path}")
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        _, key, shape, dtype, _ = line.split("\t")
        rows.append((key, [int(s) for s in shape.strip("[]").split(",") if s.strip()], dtype))
    return rows


@pytest.mark.parametrize("arch,tsv", [("r50", "insightface_r50_state_dict.tsv"),
                                      ("mbf", "insightface_mbf_state_dict.tsv")])
def test_torch_reference_state_dict_equals_insightface_key_list(arch, tsv):
    expected = read_tsv(tsv)
    with torch.device("meta"):
        model = torch_reference.get_model(arch)
    got = [(k, list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()]
    assert len(got) == len(expected)
    assert got == expected


@pytest.mark.parametrize("arch", architectures.names())
def test_registry_layout_equals_the_torch_reference_built_on_the_meta_device(arch):
    """The framework-free layout every converter and detector uses is the PyTorch model's state_dict, entry
    for entry (key, shape, dtype, owning module and its type)."""
    with torch.device("meta"):
        model = torch_reference.get_model(arch, num_features=384)
    modules = dict(model.named_modules())
    got = [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()]
    entries = architectures.layout(arch, 384)
    assert got == [(p.key, p.shape, p.dtype) for p in entries]
    for p in entries:
        kind = type(modules[p.module]).__name__
        assert kind == p.module_type or (p.module_type == "Parameter" and p.module == ""), p.key


@pytest.mark.parametrize("arch", list(INSIGHTFACE_COUNTS))
def test_torch_reference_entry_and_parameter_counts_match_insightface(arch):
    entries, params = INSIGHTFACE_COUNTS[arch]
    with torch.device("meta"):
        model = torch_reference.get_model(arch)
    assert len(model.state_dict()) == entries
    assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize("arch", ARCHS)
def test_paddle_state_dict_names_order_and_shapes_follow_the_mapping_table(arch):
    model = lazy_paddle_model(arch)
    state = model.state_dict()
    expected = [(e.paddle_key, e.paddle_shape) for e in layout(arch) if e.paddle_key]
    assert [(k, tuple(v.shape)) for k, v in state.items()] == expected
    # every torch entry maps somewhere except the BN step counters, which Paddle does not have
    dropped = [e.torch_key for e in layout(arch) if e.paddle_key is None]
    assert all(k.endswith(".num_batches_tracked") for k in dropped)
    assert len(dropped) == sum(1 for e in layout(arch) if e.rule.torch_name == "running_mean")


@pytest.mark.parametrize("arch", ARCHS)
def test_paddle_and_torch_sublayer_names_are_identical(arch):
    with torch.device("meta"):
        torch_names = [n for n, _ in torch_reference.get_model(arch).named_modules() if n]
    paddle_names = [n for n, _ in lazy_paddle_model(arch).named_sublayers()]
    assert torch_names == paddle_names


@pytest.mark.parametrize("arch", ARCHS)
def test_torch_to_paddle_to_torch_is_bit_identical(arch):
    rng = np.random.default_rng(7)
    original = {}
    for e in layout(arch):
        if e.torch_dtype == "int64":
            original[e.torch_key] = np.array(rng.integers(0, 10**6), dtype=np.int64)
        else:
            original[e.torch_key] = rng.standard_normal(e.torch_shape, dtype=np.float32)
    back = paddle_to_torch(torch_to_paddle(original, arch, 512, "mem"), arch, 512, "mem")
    assert list(back) == [e.torch_key for e in layout(arch)]
    for key, arr in original.items():
        assert back[key].dtype == arr.dtype and back[key].shape == arr.shape, key
        assert back[key].tobytes() == arr.tobytes(), key


def test_linear_weights_are_transposed_and_bn_stats_renamed():
    arrays = {e.torch_key: np.zeros(e.torch_shape, np.int64 if e.torch_dtype == "int64" else np.float32)
              for e in layout("r18")}
    arrays["fc.weight"] = np.arange(512 * 25088, dtype=np.float32).reshape(512, 25088)
    arrays["bn1.running_var"] = np.full(64, 3.0, np.float32)
    arrays["prelu.weight"] = np.full(64, 0.2, np.float32)
    paddle_side = torch_to_paddle(arrays, "r18", 512, "mem").arrays
    assert paddle_side["fc.weight"].shape == (25088, 512)
    assert paddle_side["fc.weight"][3, 5] == arrays["fc.weight"][5, 3]
    assert (paddle_side["bn1._variance"] == 3.0).all()
    assert (paddle_side["prelu._weight"] == np.float32(0.2)).all()
    assert not any("running" in k or "num_batches" in k for k in paddle_side)


def test_paddle_file_without_metadata_gets_zero_step_counters():
    from converters.checkpoint import PaddleWeights

    weights = torch_to_paddle({e.torch_key: np.ones(e.torch_shape, np.int64 if e.torch_dtype == "int64"
                                                    else np.float32) for e in layout("mbf")}, "mbf", 512, "m")
    back = paddle_to_torch(PaddleWeights(weights.arrays, {}), "mbf", 512, "m")
    counters = [v for k, v in back.items() if k.endswith("num_batches_tracked")]
    assert len(counters) == 50  # MobileFaceNet has 50 BatchNorms
    assert all(c.dtype == np.int64 and c.shape == () and c == 0 for c in counters)
