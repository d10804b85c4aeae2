"""The issue's acceptance test: an r50 checkpoint made by an independent PyTorch implementation of
InsightFace's layout (functional ops driven by the published key list, not torch_reference's classes)
converts with every layer within its gate; the Paddle model's embeddings of the real faces have cosine
>= 0.999999 to that implementation's; paddle2torch gives back the identical tensors."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from converters import paddle2torch, torch2paddle
from converters.errors import exit_code
from converters.inputs import faces_from_bin, seeded_images

TSV = Path(__file__).resolve().parents[2] / "shared" / "reference" / "insightface_r50_state_dict.tsv"


def insightface_keys() -> list[tuple[str, tuple[int, ...], str]]:
    if not TSV.exists():
        pytest.skip(f"reference key list not found: {TSV}")
    rows = []
    for line in TSV.read_text().splitlines():
        if line and not line.startswith("#"):
            _, key, shape, dtype, _ = line.split("\t")
            rows.append((key, tuple(int(s) for s in shape.strip("[]").split(",") if s.strip()), dtype))
    return rows


def forward(sd: dict[str, torch.Tensor], x: torch.Tensor, train: bool = False, momentum: float = 0.1):
    """iresnet forward written from the architecture text (reference §1.2) with functional ops."""

    def bn(name, h):
        return F.batch_norm(h, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                            sd[f"{name}.bias"], training=train, momentum=momentum, eps=1e-5)

    h = F.prelu(bn("bn1", F.conv2d(x, sd["conv1.weight"], padding=1)), sd["prelu.weight"])
    for stage in range(1, 5):
        block = 0
        while f"layer{stage}.{block}.bn1.weight" in sd:
            p = f"layer{stage}.{block}"
            out = F.conv2d(bn(f"{p}.bn1", h), sd[f"{p}.conv1.weight"], padding=1)
            out = F.prelu(bn(f"{p}.bn2", out), sd[f"{p}.prelu.weight"])
            out = bn(f"{p}.bn3", F.conv2d(out, sd[f"{p}.conv2.weight"], stride=2 if block == 0 else 1, padding=1))
            if block == 0:  # every stage's first block downsamples the raw input
                h = bn(f"{p}.downsample.1", F.conv2d(h, sd[f"{p}.downsample.0.weight"], stride=2))
            h = out + h
            block += 1
    h = bn("bn2", h).flatten(1)
    return bn("features", F.linear(h, sd["fc.weight"], sd["fc.bias"]))


def independent_checkpoint() -> OrderedDict[str, torch.Tensor]:
    """Random r50 weights in the published key order, BN statistics calibrated on seeded inputs."""
    rng = np.random.default_rng(2024)
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, shape, dtype in insightface_keys():
        name = key.rsplit(".", 1)[1]
        if dtype == "int64":
            value = np.array(0, np.int64)
        elif name == "running_var":
            value = np.ones(shape, np.float32)
        elif name == "running_mean":
            value = np.zeros(shape, np.float32)
        elif len(shape) == 4:
            value = rng.normal(0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
        elif key == "fc.weight" or key == "fc.bias":
            value = rng.uniform(-1 / np.sqrt(25088), 1 / np.sqrt(25088), shape)
        elif key == "features.weight":
            value = np.ones(shape)
        elif "prelu" in key:
            value = rng.uniform(0.05, 0.4, shape)
        elif name == "weight":
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0, 0.1, shape)
        sd[key] = torch.from_numpy(np.asarray(value, np.int64 if dtype == "int64" else np.float32))
    with torch.no_grad():
        for step in range(3):  # cumulative average of batch statistics
            forward(sd, torch.from_numpy(seeded_images(6, seed=100 + step)), train=True, momentum=1 / (step + 1))
            for key in sd:
                if key.endswith("num_batches_tracked"):
                    sd[key] += 1
    return sd


def test_independent_r50_converts_within_gates_and_round_trips_exactly(tmp_path, small_lfw):
    import paddle

    import paddle_models

    original = independent_checkpoint()
    src, out, back, report = (tmp_path / n for n in ("r50.pth", "r50.pdparams", "back.pth", "report.json"))
    torch.save(original, src)

    # 1. convert with the per-layer check on the 20 real faces
    assert exit_code(torch2paddle.main, ["--src", src, "--out", out, "--input", small_lfw, "--batch", "20",
                                   "--report", report, "--table", "failures"]) == 0
    parity = json.loads(report.read_text())["parity"]
    assert parity["passed"] and len(parity["rows"]) == 192 and parity["worst_rel"] <= 5e-5

    # 2. the Paddle model, loaded as a Paddle user would, against the independent implementation
    faces = faces_from_bin(small_lfw)
    model = paddle_models.get_model("r50")
    missing, _ = model.set_state_dict(paddle.load(str(out)))  # trusted: written by this test
    assert list(missing) == []
    model.eval()
    with paddle.no_grad():
        emb_paddle = model(paddle.to_tensor(faces)).numpy().astype(np.float64)
    with torch.no_grad():
        emb_ref = forward(original, torch.from_numpy(faces)).numpy().astype(np.float64)
    cosine = np.sum(emb_paddle * emb_ref, 1) / np.linalg.norm(emb_paddle, axis=1) / np.linalg.norm(emb_ref, axis=1)
    assert cosine.shape == (20,) and cosine.min() >= 0.999999
    assert 10 < np.linalg.norm(emb_ref, axis=1).mean() < 45

    # 3. back to PyTorch: the published key order, every tensor identical
    assert exit_code(paddle2torch.main, ["--src", out, "--out", back, "--check-against", src]) == 0
    restored = torch.load(back, weights_only=True)
    assert [k for k, _, _ in insightface_keys()] == list(restored)
    for key, value in original.items():
        assert restored[key].dtype == value.dtype and torch.equal(restored[key], value), key
    assert int(restored["layer4.2.bn3.num_batches_tracked"]) == 3
