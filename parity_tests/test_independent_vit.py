"""A vit_t checkpoint made by an independent PyTorch implementation of InsightFace's ViT (a parameter dict
built from its own description of the module tree, and a functional forward over it: no torch_reference
class, no nn.Module) converts through the real CLI with every layer within its gate; the Paddle model's
embeddings of the real faces have cosine >= 0.999999 to that implementation's own; paddle2torch gives back
the identical tensors; and the independent forward equals torch_reference's vit_t holding the same weights.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import architectures
from converters import paddle2torch, torch2paddle
from converters.errors import exit_code
from converters.inputs import faces_from_bin
from converters.parity import EMBEDDING_COSINE, EVAL_LAYER_REL, OUTPUT

# InsightFace's vit_t: 112x112 input cut into 12x12 patches of 9x9, width 256, 12 blocks of 8 heads, MLP 4x
DIM, DEPTH, HEADS, PATCH, GRID, FEATURES = 256, 12, 8, 9, 12, 512
TOKENS = GRID * GRID
HEAD_DIM = DIM // HEADS
LN_EPS, BN_EPS = 1e-5, 2e-5
FORWARD_REL = 1e-5  # independent forward against torch_reference's, float32


def module_tree() -> list[tuple[str, str, tuple[int, ...]]]:
    """(prefix, kind, size) in InsightFace's registration order: the model's own parameters first
    (``pos_embed``, ``mask_token``), then ``patch_embed``, ``blocks`` (each: norm1, norm2, attn, mlp), the
    final ``norm`` and the ``feature`` head Sequential(Linear, BatchNorm1d, Linear, BatchNorm1d)."""
    tree = [("pos_embed", "param", (1, TOKENS, DIM)), ("mask_token", "param", (1, 1, DIM)),
            ("patch_embed.proj", "conv", (DIM, 3, PATCH, PATCH))]
    for i in range(DEPTH):
        tree += [(f"blocks.{i}.norm1", "ln", (DIM,)), (f"blocks.{i}.norm2", "ln", (DIM,)),
                 (f"blocks.{i}.attn.qkv", "linear-nobias", (3 * DIM, DIM)),
                 (f"blocks.{i}.attn.proj", "linear", (DIM, DIM)),
                 (f"blocks.{i}.mlp.fc1", "linear", (4 * DIM, DIM)), (f"blocks.{i}.mlp.fc2", "linear", (DIM, 4 * DIM))]
    return tree + [("norm", "ln", (DIM,)), ("feature.0", "linear-nobias", (DIM, TOKENS * DIM)),
                   ("feature.1", "bn", (DIM,)), ("feature.2", "linear-nobias", (FEATURES, DIM)),
                   ("feature.3", "bn", (FEATURES,))]


def initial_value(kind: str, name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Non-trivial values of InsightFace's scale: N(0, 0.02) Linear weights and tokens, PyTorch's Conv2d
    range, LayerNorm / BatchNorm scales in [0.5, 1.5], small random shifts; BN statistics (0, 1) until
    calibrated."""
    if kind == "param":
        return rng.normal(0.0, 0.02, shape)
    if kind == "conv":
        bound = 1.0 / np.sqrt(3 * PATCH * PATCH)
        return rng.uniform(-bound, bound, shape)
    if name == "weight":
        return rng.normal(0.0, 0.02, shape) if kind.startswith("linear") else rng.uniform(0.5, 1.5, shape)
    if name == "bias":
        return rng.normal(0.0, 0.1 if kind == "bn" else 0.05, shape)
    return np.zeros(shape) if name == "running_mean" else np.ones(shape)


ENTRIES = {"param": [None], "conv": ["weight", "bias"], "ln": ["weight", "bias"], "linear": ["weight", "bias"],
           "linear-nobias": ["weight"], "bn": ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]}


def independent_state(seed: int = 2025) -> OrderedDict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    for prefix, kind, shape in module_tree():
        for name in ENTRIES[kind]:
            key = prefix if name is None else f"{prefix}.{name}"
            if name == "num_batches_tracked":
                sd[key] = torch.tensor(0, dtype=torch.int64)
                continue
            size = shape[:1] if kind in ("ln", "bn") or name == "bias" else shape
            sd[key] = torch.from_numpy(initial_value(kind, name or "param", size, rng).astype(np.float32))
    return sd


def forward(sd: dict[str, torch.Tensor], x: torch.Tensor, calibrate_step: int | None = None) -> torch.Tensor:
    """Eval-mode vit_t, functionally. With ``calibrate_step`` the two BatchNorms use batch statistics and
    fold them into a cumulative average of the running statistics (step 0, 1, ...)."""
    n = x.shape[0]

    def norm(name: str, h: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(h, (DIM,), sd[f"{name}.weight"], sd[f"{name}.bias"], eps=LN_EPS)

    def bn(name: str, h: torch.Tensor) -> torch.Tensor:
        train = calibrate_step is not None
        return F.batch_norm(h, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                            sd[f"{name}.bias"], training=train, eps=BN_EPS,
                            momentum=1.0 / (calibrate_step + 1) if train else 0.0)

    # patches: the top-left 108x108 (a stride-9 convolution never reaches the last 4 rows and columns) as
    # [n, 3, 12, 9, 12, 9] -> [n, 144, 243] row-major, then one matmul with the flattened kernel
    crop = x[:, :, : GRID * PATCH, : GRID * PATCH]
    patches = crop.reshape(n, 3, GRID, PATCH, GRID, PATCH).permute(0, 2, 4, 1, 3, 5).reshape(n, TOKENS, -1)
    tokens = patches @ sd["patch_embed.proj.weight"].reshape(DIM, -1).T + sd["patch_embed.proj.bias"]
    tokens = tokens + sd["pos_embed"][0]
    for i in range(DEPTH):
        p = f"blocks.{i}"
        qkv = norm(f"{p}.norm1", tokens) @ sd[f"{p}.attn.qkv.weight"].T  # [n, 144, (q|k|v, head, d)]
        q, k, v = qkv.reshape(n, TOKENS, 3, HEADS, HEAD_DIM).unbind(dim=2)
        weights = torch.softmax(torch.einsum("nqhd,nkhd->nhqk", q, k) / np.sqrt(HEAD_DIM), dim=-1)
        mixed = torch.einsum("nhqk,nkhd->nqhd", weights, v).reshape(n, TOKENS, DIM)
        tokens = tokens + F.linear(mixed, sd[f"{p}.attn.proj.weight"], sd[f"{p}.attn.proj.bias"])
        hidden = F.linear(norm(f"{p}.norm2", tokens), sd[f"{p}.mlp.fc1.weight"], sd[f"{p}.mlp.fc1.bias"])
        tokens = tokens + F.linear(hidden.clamp(0.0, 6.0), sd[f"{p}.mlp.fc2.weight"], sd[f"{p}.mlp.fc2.bias"])
    flat = norm("norm", tokens).reshape(n, TOKENS * DIM)
    head = bn("feature.1", flat @ sd["feature.0.weight"].T)
    return bn("feature.3", head @ sd["feature.2.weight"].T)


def calibrate(sd: dict[str, torch.Tensor], images: np.ndarray, batches: int) -> None:
    """Running statistics = the average of the batch statistics of ``batches`` slices of ``images``."""
    with torch.no_grad():
        for step, chunk in enumerate(np.array_split(images, batches)):
            forward(sd, torch.from_numpy(np.ascontiguousarray(chunk)), calibrate_step=step)
            for key in ("feature.1.num_batches_tracked", "feature.3.num_batches_tracked"):
                sd[key] += 1


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def faces(small_lfw):
    return faces_from_bin(small_lfw)


@pytest.fixture(scope="module")
def original(faces):
    """The independent checkpoint, its BatchNorm statistics calibrated on the mirrored faces (the real-image
    distribution, not the very inputs the checks run on)."""
    sd = independent_state()
    calibrate(sd, faces[..., ::-1], batches=2)
    return sd


def test_independent_state_dict_is_insightface_vit_t_layout(original):
    expected = [(p.key, tuple(p.shape), p.dtype) for p in architectures.layout("vit_t")]
    assert [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in original.items()] == expected
    assert len(original) == 150
    assert int(original["feature.3.num_batches_tracked"]) == 2
    # every float entry holds non-trivial values (calibrated statistics included)
    for key, value in original.items():
        if value.is_floating_point():
            assert value.std() > 0 or value.numel() == 1, key
            assert not torch.all(value == 1) and not torch.all(value == 0), key


def test_independent_forward_equals_torch_reference(original, faces):
    from torch_reference import get_model

    with torch.device("meta"):  # no init: every value comes from the checkpoint
        reference = get_model("vit_t")
    reference.load_state_dict(original, strict=True, assign=True)
    reference.eval()
    assert all(reference.state_dict()[k].data_ptr() == v.data_ptr() for k, v in original.items())
    x = torch.from_numpy(faces)
    with torch.no_grad():
        expected = reference(x).numpy().astype(np.float64)
        got = forward(original, x).numpy().astype(np.float64)
    value = float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))
    print(f"independent vs torch_reference: rel {value:.3e}, min cosine {cosines(got, expected).min():.12f}")
    assert value <= FORWARD_REL


def test_independent_vit_t_converts_within_gates_and_round_trips_exactly(tmp_path, small_lfw, faces, original):
    import paddle

    import paddle_models

    src, out, back, report = (tmp_path / n for n in ("vit_t.pth", "vit_t.pdparams", "back.pth", "report.json"))
    torch.save(original, src)

    # 1. convert with the per-layer check on the 20 real faces
    assert exit_code(torch2paddle.main, ["--src", src, "--arch", "vit_t", "--out", out, "--input", small_lfw,
                                         "--batch", "20", "--report", report, "--table", "failures"]) == 0
    data = json.loads(report.read_text())
    parity = data["parity"]
    rows = parity["rows"]
    assert data["arch"] == "vit_t" and parity["passed"] and parity["input"]["shape"] == [20, 3, 112, 112]
    assert all(r["passed"] for r in rows) and all(r["rel"] <= EVAL_LAYER_REL for r in rows)
    layers = {r["layer"] for r in rows}
    assert {f"blocks.{i}" for i in range(DEPTH)} | {"norm", "feature.3", OUTPUT} <= layers
    assert rows[-1]["layer"] == OUTPUT and rows[-1]["cosine"] >= EMBEDDING_COSINE
    print(f"report: {len(rows)} rows, worst rel {parity['worst_rel']:.3e} at {parity['worst_layer']}, "
          f"embedding cosine {parity['embedding_cosine']:.12f}")

    # 2. the Paddle model, loaded as a Paddle user would, against the independent implementation
    model = paddle_models.get_model("vit_t")
    missing, _ = model.set_state_dict(paddle.load(str(out)))  # trusted: written by this test
    assert list(missing) == []
    model.eval()
    with paddle.no_grad():
        emb_paddle = model(paddle.to_tensor(faces)).numpy()
    with torch.no_grad():
        emb_ref = forward(original, torch.from_numpy(faces)).numpy()
    cosine = cosines(emb_paddle, emb_ref)
    print(f"Paddle vs independent: min cosine {cosine.min():.12f}, "
          f"rel {np.max(np.abs(emb_paddle - emb_ref)) / np.max(np.abs(emb_ref)):.3e}")
    assert cosine.shape == (20,) and cosine.min() >= EMBEDDING_COSINE
    norms = np.linalg.norm(emb_ref.astype(np.float64), axis=1)
    neighbours = cosines(emb_ref[:-1], emb_ref[1:])
    print(f"embedding norms {norms.min():.1f} ... {norms.max():.1f}, consecutive faces' cosine <= {neighbours.max():.3f}")
    assert 10 < norms.mean() < 45  # calibrated: near sqrt(512), as a trained model's
    assert neighbours.max() < 0.99  # distinct faces, distinct embeddings

    # 3. back to PyTorch: the published key order, every tensor identical
    assert exit_code(paddle2torch.main, ["--src", out, "--out", back, "--check-against", src]) == 0
    restored = torch.load(back, weights_only=True)
    assert list(restored) == list(original)
    for key, value in original.items():
        assert restored[key].dtype == value.dtype and torch.equal(restored[key], value), key
    assert int(restored["feature.1.num_batches_tracked"]) == 2
