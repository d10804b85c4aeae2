"""InsightFace's ViT family (``vit_t`` ... ``vit_h``) in both frameworks.

* the PyTorch reference has InsightFace's state_dict: keys, order, shapes and dtypes of every name, and its
  published sizes (entries and elements);
* the Paddle twin has the same sublayer names and, key for key, the same state (BatchNorm statistics renamed
  ``_mean`` / ``_variance``, no ``num_batches_tracked``, Linear weights transposed);
* with weights copied by name, the eval-mode forward agrees at every layer in float32 (seeded inputs and real
  faces), and so does the train-mode forward with the same injected patch-masking noise and stochastic-depth
  masks (float32, and float64 within 1e-10); float64 gradients of every parameter agree within 1e-8, with and
  without activation checkpointing / recompute.
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch

import architectures
from converters.inputs import faces_from_bin, seeded_images
from converters.parity import (
    EMBEDDING_COSINE,
    EVAL_LAYER_REL,
    OUTPUT,
    capture_paddle,
    capture_torch,
    compare_captures,
    compare_forward,
)
from paddle_models import vit as pv
from torch_reference import vit as tv

# InsightFace's state_dict sizes with num_features 512: entries, millions of elements (one decimal)
INSIGHTFACE_SIZES = {
    "vit_t": (150, 19.1), "vit_t_dp005_mask0": (150, 19.1),
    "vit_s": (150, 76.0), "vit_s_dp005_mask_0": (150, 76.0),
    "vit_b": (282, 113.8), "vit_b_dp005_mask_005": (282, 113.8),
    "vit_l_dp005_mask_005": (282, 255.7), "vit_h": (546, 756.4),
}
# InsightFace's factory arguments: embed_dim, depth, drop_path_rate, mask_ratio, activation checkpointing
INSIGHTFACE_ARGS = {
    "vit_t": (256, 12, 0.1, 0.1, False), "vit_t_dp005_mask0": (256, 12, 0.05, 0.0, False),
    "vit_s": (512, 12, 0.1, 0.1, False), "vit_s_dp005_mask_0": (512, 12, 0.05, 0.0, False),
    "vit_b": (512, 24, 0.1, 0.1, True), "vit_b_dp005_mask_005": (512, 24, 0.05, 0.05, True),
    "vit_l_dp005_mask_005": (768, 24, 0.05, 0.05, True), "vit_h": (1024, 48, 0.1, 0.0, True),
}
PATCHES = 144
KEPT = 129  # int(144 * (1 - 0.1)) tokens pass the blocks when masking
TINY = dict(depth=3)  # vit_t's width, drop_path 0.1 -> block rates 0, 0.05, 0.1; mask_ratio 0.1
FLOAT64_FORWARD_REL = 1e-10
FLOAT64_GRAD_REL = 1e-8
MEASURED: dict[str, float] = {}  # worst rel per check, printed with -s


def expected_layout(dim: int, depth: int, num_features: int = 512) -> list[tuple[str, list[int], str]]:
    """InsightFace's ordered (key, shape, dtype) list of a ViT with width ``dim``."""
    f32 = "float32"

    def bn(prefix: str, c: int) -> list[tuple[str, list[int], str]]:
        return [(f"{prefix}.weight", [c], f32), (f"{prefix}.bias", [c], f32),
                (f"{prefix}.running_mean", [c], f32), (f"{prefix}.running_var", [c], f32),
                (f"{prefix}.num_batches_tracked", [], "int64")]

    rows = [("pos_embed", [1, PATCHES, dim], f32), ("mask_token", [1, 1, dim], f32),
            ("patch_embed.proj.weight", [dim, 3, 9, 9], f32), ("patch_embed.proj.bias", [dim], f32)]
    for i in range(depth):
        p = f"blocks.{i}."
        rows += [(p + "norm1.weight", [dim], f32), (p + "norm1.bias", [dim], f32),
                 (p + "norm2.weight", [dim], f32), (p + "norm2.bias", [dim], f32),
                 (p + "attn.qkv.weight", [3 * dim, dim], f32),
                 (p + "attn.proj.weight", [dim, dim], f32), (p + "attn.proj.bias", [dim], f32),
                 (p + "mlp.fc1.weight", [4 * dim, dim], f32), (p + "mlp.fc1.bias", [4 * dim], f32),
                 (p + "mlp.fc2.weight", [dim, 4 * dim], f32), (p + "mlp.fc2.bias", [dim], f32)]
    rows += [("norm.weight", [dim], f32), ("norm.bias", [dim], f32),
             ("feature.0.weight", [dim, PATCHES * dim], f32)]
    rows += bn("feature.1", dim) + [("feature.2.weight", [num_features, dim], f32)] + bn("feature.3", num_features)
    return rows


def torch_layout(model: torch.nn.Module) -> list[tuple[str, list[int], str]]:
    return [(k, list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()]


def meta_vit(name: str, **overrides) -> tv.VisionTransformer:
    with torch.device("meta"):
        return tv.vit(name, **overrides)


def paddle_vit(name: str = "vit_t", dtype: str = "float32", **overrides) -> pv.VisionTransformer:
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype(dtype)
    try:
        return pv.vit(name, **overrides)
    finally:
        paddle.set_default_dtype(previous)


# ------------------------------------------------------------------------------- torch -> Paddle by name
def linear_weight_keys(model: torch.nn.Module) -> set[str]:
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def paddle_key(torch_key: str) -> str | None:
    """The Paddle state key of a PyTorch one; None for the BatchNorm step counters Paddle does not keep."""
    prefix, _, last = torch_key.rpartition(".")
    renamed = {"running_mean": "_mean", "running_var": "_variance", "num_batches_tracked": None}
    if last not in renamed:
        return torch_key
    return None if renamed[last] is None else f"{prefix}.{renamed[last]}"


def paddle_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The PyTorch model's state as Paddle names and layouts (Linear weights transposed)."""
    linear = linear_weight_keys(model)
    out = {}
    for key, value in model.state_dict().items():
        target = paddle_key(key)
        if target is not None:
            arr = value.detach().cpu().numpy()
            out[target] = np.ascontiguousarray(arr.T) if key in linear else arr
    return out


def load_by_name(paddle_model: paddle.nn.Layer, arrays: dict[str, np.ndarray]) -> None:
    """Set every Paddle state entry from ``arrays`` by name, after checking names and shapes match exactly."""
    state = paddle_model.state_dict()
    assert list(state) == list(arrays), "Paddle and converted PyTorch keys differ"
    for key, value in state.items():
        assert tuple(value.shape) == arrays[key].shape, key
    dtype = str(paddle_model.pos_embed.dtype).replace("paddle.", "")
    missing, unexpected = paddle_model.set_state_dict({k: v.astype(dtype) for k, v in arrays.items()})
    assert not missing and not unexpected
    for key, value in paddle_model.state_dict().items():  # really loaded, not left at its init
        np.testing.assert_array_equal(value.numpy(), arrays[key].astype(dtype), err_msg=key)


def seeded_torch_vit(name: str = "vit_t", seed: int = 0, **overrides) -> tv.VisionTransformer:
    """InsightFace's init, with non-trivial LayerNorm / bias / mask_token values and BatchNorm statistics
    calibrated on seeded inputs (so that no parameter is at a value that hides a mismatch)."""
    torch.manual_seed(seed)
    model = tv.vit(name, **overrides)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key.endswith("bias"):
                p.copy_(torch.from_numpy(rng.normal(0.0, 0.05, p.shape)))
            elif key.startswith("feature.1") or key.startswith("feature.3") or "norm" in key:
                p.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, p.shape)))
        model.eval()
        bns = [model.feature[1], model.feature[3]]
        for bn in bns:  # cumulative batch statistics of one seeded batch
            bn.momentum = None
            bn.train()
        model(torch.from_numpy(seeded_images(8, seed=seed + 100)))
        for bn in bns:
            bn.momentum = 0.1
    return model.eval()


def build_pair(name: str = "vit_t", dtype: str = "float32", seed: int = 0, **overrides):
    """(PyTorch reference, Paddle twin) in eval mode with the same weights.

    Paddle's layer_norm and batch_norm take epsilon as a float32 attribute, also in float64 (1e-5 becomes
    9.99999974737875e-06): a float64 reference uses the rounded values, or the embeddings differ by ~1e-10
    relative instead of ~1e-14 (measured)."""
    ref = seeded_torch_vit(name, seed, **overrides).to(getattr(torch, dtype))
    if dtype == "float64":
        for module in ref.modules():
            if isinstance(module, (torch.nn.LayerNorm, torch.nn.BatchNorm1d)):
                module.eps = float(np.float32(module.eps))
    out = paddle_vit(name, dtype, **overrides)
    load_by_name(out, paddle_arrays(ref))
    out.eval()
    return ref, out


def numpy_randomness(n: int, rates: list[float], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Masking noise ``[n, 144]`` and keep flags ``[depth, 2, n]`` from numpy, each stochastic block
    dropping at least one sample on each branch and keeping at least one."""
    rng = np.random.default_rng(seed)
    noise = rng.random((n, PATCHES))
    masks = np.ones((len(rates), 2, n))
    for i, rate in enumerate(rates):
        if rate > 0:
            masks[i] = rng.random((2, n)) >= rate
            masks[i, 0, i % n], masks[i, 1, (i + 1) % n] = 0.0, 0.0
            masks[i, 0, (i + 2) % n], masks[i, 1, (i + 3) % n] = 1.0, 1.0
    return noise, masks


def rel(out: np.ndarray, ref: np.ndarray) -> float:
    ref64, out64 = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    return float(np.max(np.abs(out64 - ref64)) / np.max(np.abs(ref64)))


def record(check: str, value: float) -> None:
    MEASURED[check] = max(value, MEASURED.get(check, 0.0))
    print(f"{check}: worst rel {MEASURED[check]:.3e}")


def assert_rows(rows, rel_gate: float, check: str) -> None:
    bad = [r for r in rows if not r.passed]
    assert not bad, "\n".join(f"{r.layer}: rel {r.rel:.3e} cos {r.cosine:.9f} {r.note}" for r in bad[:10])
    worst = max(r.rel for r in rows)
    assert worst <= rel_gate
    embedding = next(r for r in rows if r.layer == OUTPUT)
    assert embedding.cosine >= EMBEDDING_COSINE
    record(check, worst)


# ----------------------------------------------------------------------------------------- layout
def test_torch_vit_t_state_dict_is_insightface_layout():
    assert torch_layout(meta_vit("vit_t")) == expected_layout(256, 12)
    assert len(expected_layout(256, 12)) == 150


@pytest.mark.parametrize("name", list(INSIGHTFACE_SIZES))
def test_every_name_has_insightface_layout_and_size(name):
    dim, depth, rate, mask_ratio, ckpt = INSIGHTFACE_ARGS[name]
    model = meta_vit(name)  # no memory, even for vit_h
    assert torch_layout(model) == expected_layout(dim, depth)
    entries, millions = INSIGHTFACE_SIZES[name]
    state = model.state_dict()
    assert len(state) == entries
    assert round(sum(v.numel() for v in state.values()) / 1e6, 1) == millions
    # the elements in closed form: 12 D^2 + 10 D per block, 144 D^2 + 512 D in the head, the rest linear
    params = 144 * dim + dim + 244 * dim + depth * (12 * dim**2 + 10 * dim) + 2 * dim + 144 * dim**2 \
        + 2 * dim + 512 * dim + 2 * 512
    assert sum(p.numel() for p in model.parameters()) == params
    assert (model.embed_dim, len(model.blocks), model.mask_ratio, model.using_checkpoint) == (dim, depth, mask_ratio,
                                                                                             ckpt)
    assert model.drop_path_rates[-1] == pytest.approx(rate) and model.drop_path_rates[0] == 0.0
    assert isinstance(model.blocks[0].drop_path, torch.nn.Identity)
    assert all(b.drop_path.drop_prob == r for b, r in zip(model.blocks[1:], model.drop_path_rates[1:]))
    assert model.feature[1].eps == model.feature[3].eps == 2e-5 and model.norm.eps == 1e-5
    assert model.blocks[0].attn.num_heads == 8 and isinstance(model.blocks[0].mlp.act, torch.nn.ReLU6)


def test_registry_holds_insightface_vit_arguments_and_drop_path_rates_agree_across_frameworks():
    specs = {n: architectures.spec_of(n) for n in architectures.names() if architectures.family_of(n) == "vit"}
    assert {n: (s.embed_dim, s.depth, s.drop_path_rate, s.mask_ratio, s.use_checkpoint)
            for n, s in specs.items()} == INSIGHTFACE_ARGS
    assert all((s.num_heads, s.patch_size, s.norm, s.bn_eps, s.mlp_ratio) == (8, 9, "ln", 2e-5, 4.0)
               for s in specs.values())
    # PyTorch's float32 linspace, bit for bit (numpy's differs in the last bit at depth 12, 24 and 48)
    for rate in (0.1, 0.05):
        for depth in range(1, 65):
            assert pv.drop_path_rates(rate, depth) == tv.drop_path_rates(rate, depth), (rate, depth)


@pytest.mark.parametrize("name,overrides", [("vit_t", {}), ("vit_s", {"depth": 1}),
                                            ("vit_l_dp005_mask_005", {"depth": 1})])
def test_paddle_state_corresponds_key_for_key(name, overrides):
    ref = meta_vit(name, **overrides)
    out = paddle_vit(name, **overrides)
    linear = linear_weight_keys(ref)
    expected = []
    for key, shape, _ in torch_layout(ref):
        target = paddle_key(key)
        if target is not None:
            expected.append((target, tuple(shape[::-1]) if key in linear else tuple(shape)))
    assert [(k, tuple(v.shape)) for k, v in out.state_dict().items()] == expected
    assert [n for n, _ in ref.named_modules() if n] == [n for n, _ in out.named_sublayers()]
    assert out.drop_path_rates == ref.drop_path_rates
    for bn in (out.feature[1], out.feature[3]):
        assert bn._epsilon == pytest.approx(2e-5) and bn._momentum == pytest.approx(0.9)
    assert all(str(p.dtype) == "paddle.float32" for p in out.parameters())
    assert {k for k, p in out.named_parameters() if not p.stop_gradient} == \
        {k for k, p in ref.named_parameters() if p.requires_grad}


def init_state(framework: str) -> dict[str, np.ndarray]:
    if framework == "torch":
        torch.manual_seed(0)
        return {k: v.detach().numpy() for k, v in tv.vit("vit_t", depth=2).state_dict().items()}
    paddle.seed(0)
    state = {k: v.numpy() for k, v in paddle_vit("vit_t", depth=2).state_dict().items()}
    return {k: v.T if v.ndim == 2 else v for k, v in state.items()}  # Linear weights as PyTorch's


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_insightface_init(framework):
    """trunc_normal(0.02) Linear weights and pos_embed, N(0, 0.02) mask_token, zero Linear biases,
    LayerNorm (1, 0), PyTorch's default Conv2d (uniform +-1/sqrt(243)), BatchNorm defaults."""
    p = init_state(framework)
    for key in ("blocks.1.attn.qkv.weight", "blocks.0.mlp.fc2.weight", "feature.0.weight", "feature.2.weight",
                "pos_embed"):
        assert abs(p[key].std() - 0.02) < 0.0015 and abs(p[key].mean()) < 0.002, key
    assert abs(p["mask_token"].std() - 0.02) < 0.004
    for key in ("blocks.0.attn.proj.bias", "blocks.1.mlp.fc1.bias", "blocks.0.norm1.bias", "norm.bias",
                "feature.1.bias"):
        assert np.all(p[key] == 0), key
    assert all(np.all(p[k] == 1) for k in ("blocks.1.norm2.weight", "norm.weight", "feature.3.weight"))
    bound = 1 / np.sqrt(243)
    for key in ("patch_embed.proj.weight", "patch_embed.proj.bias"):
        assert 0.95 * bound < np.abs(p[key]).max() <= bound, key
    assert abs(p["patch_embed.proj.weight"].std() - bound / np.sqrt(3)) < 0.002
    mean = p["feature.1.running_mean" if framework == "torch" else "feature.1._mean"]
    var = p["feature.1.running_var" if framework == "torch" else "feature.1._variance"]
    assert np.all(mean == 0) and np.all(var == 1)


# ------------------------------------------------------------------------------------ eval forward
@pytest.fixture(scope="module")
def vit_t_pair():
    return build_pair("vit_t")


def test_eval_forward_every_layer_on_seeded_inputs(vit_t_pair):
    ref, out = vit_t_pair
    report = compare_forward(ref, out, seeded_images(4, seed=21))
    assert report.passed, report.verdict() + "\n" + report.table(only_failures=True)
    layers = {r.layer for r in report.rows}
    assert {f"blocks.{i}" for i in range(12)} <= layers and "blocks.11.attn" in layers
    assert report.rows[-1].layer == OUTPUT and report.rows[-1].shape == (4, 512)
    assert next(r for r in report.rows if r.layer == "blocks.0").shape == (4, PATCHES, 256)  # no masking
    assert_rows(report.rows, EVAL_LAYER_REL, "eval float32 seeded")


def test_eval_forward_every_layer_on_real_faces(vit_t_pair, small_lfw):
    ref, out = vit_t_pair
    faces = faces_from_bin(small_lfw, 8)
    report = compare_forward(ref, out, faces)
    assert report.passed, report.verdict() + "\n" + report.table(only_failures=True)
    assert_rows(report.rows, EVAL_LAYER_REL, "eval float32 faces")


def test_eval_mode_ignores_injected_randomness(vit_t_pair):
    ref, _ = vit_t_pair
    x = torch.from_numpy(seeded_images(1, seed=3))
    noise, masks = numpy_randomness(1, ref.drop_path_rates, seed=1)
    with torch.no_grad():
        assert torch.equal(ref(x), ref(x, noise=noise, drop_masks=np.zeros_like(masks)))


# ----------------------------------------------------------------------------------- train forward
def train_captures(ref, out, x: np.ndarray, noise, masks):
    ref.train()
    out.train()
    ref.inject_randomness(noise, masks)
    out.inject_randomness(noise, masks)
    try:
        return capture_torch(ref, x), capture_paddle(out, x)
    finally:
        for model in (ref, out):
            model.inject_randomness()
            model.eval()


def test_train_forward_with_injected_masks_float32(small_lfw):
    ref, out = build_pair("vit_t", seed=2, **TINY)
    assert ref.drop_path_rates == out.drop_path_rates == tv.drop_path_rates(0.1, 3)
    x = faces_from_bin(small_lfw, 8)
    noise, masks = numpy_randomness(8, ref.drop_path_rates, seed=4)
    got_ref, got_out = train_captures(ref, out, x, noise, masks)
    assert got_ref.outputs["blocks.0"].shape == (8, KEPT, 256)  # 15 of 144 tokens masked
    rows = compare_captures(got_ref, got_out, EVAL_LAYER_REL, EMBEDDING_COSINE)
    assert_rows(rows, EVAL_LAYER_REL, "train float32 faces")
    # stochastic depth really dropped something: a dropped sample's branch output is exactly zero
    dropped = got_ref.outputs["blocks.1.drop_path"][1 % 8]
    assert np.all(dropped == 0) and np.all(got_out.outputs["blocks.1.drop_path"][1 % 8] == 0)


def test_train_forward_with_injected_masks_float64():
    ref, out = build_pair("vit_t", dtype="float64", seed=3, **TINY)
    x = seeded_images(4, seed=5).astype(np.float64)
    noise, masks = numpy_randomness(4, ref.drop_path_rates, seed=6)
    rows = compare_captures(*train_captures(ref, out, x, noise, masks), FLOAT64_FORWARD_REL, EMBEDDING_COSINE)
    assert_rows(rows, FLOAT64_FORWARD_REL, "train float64 seeded")


def test_masked_positions_hold_mask_token_in_both_frameworks():
    ref, out = build_pair("vit_t", seed=4, **TINY)
    x = seeded_images(3, seed=7)
    noise, masks = numpy_randomness(3, ref.drop_path_rates, seed=8)
    seen = {}
    h1 = ref.feature.register_forward_pre_hook(lambda m, a: seen.__setitem__("torch", a[0].detach().numpy()))
    h2 = out.feature.register_forward_pre_hook(lambda m, a: seen.__setitem__("paddle", a[0].numpy()))
    try:
        train_captures(ref, out, x, noise, masks)
    finally:
        h1.remove()
        h2.remove()
    dropped = np.argsort(noise, axis=1, kind="stable")[:, KEPT:]
    token = ref.mask_token.detach().numpy().reshape(-1)
    for name in ("torch", "paddle"):
        tokens = seen[name].reshape(3, PATCHES, 256)
        for i in range(3):
            kept = np.setdiff1d(np.arange(PATCHES), dropped[i])
            assert np.all(tokens[i, dropped[i]] == token), name
            assert not np.any(np.all(tokens[i, kept] == token, axis=1)), name


# ----------------------------------------------------------------------------------- float64 gradients
def torch_grads(model, x, weights, noise, masks) -> dict[str, np.ndarray]:
    model.train()
    model.zero_grad()
    emb = model(torch.from_numpy(x), noise=noise, drop_masks=masks)
    (emb * torch.from_numpy(weights)).sum().backward()
    model.eval()
    return {k: p.grad.numpy().copy() for k, p in model.named_parameters() if p.grad is not None}


def paddle_grads(model, x, weights, noise, masks) -> dict[str, np.ndarray]:
    model.train()
    model.clear_gradients()
    emb = model(paddle.to_tensor(x), noise=noise, drop_masks=masks)
    (emb * paddle.to_tensor(weights)).sum().backward()
    model.eval()
    return {k: p.grad.numpy().copy() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_float64_gradients_of_every_parameter(checkpointing):
    ref, out = build_pair("vit_t", dtype="float64", seed=5, using_checkpoint=checkpointing, **TINY)
    x = seeded_images(4, seed=9).astype(np.float64)
    weights = np.random.default_rng(10).normal(size=(4, 512))
    noise, masks = numpy_randomness(4, ref.drop_path_rates, seed=11)
    t_grads = torch_grads(ref, x, weights, noise, masks)
    p_grads = paddle_grads(out, x, weights, noise, masks)
    linear = linear_weight_keys(ref)
    assert set(t_grads) == {k for k, _ in ref.named_parameters()} == set(p_grads)
    worst = 0.0
    for key, grad in t_grads.items():
        other = p_grads[key].T if key in linear else p_grads[key]
        if key == "feature.1.bias":
            # a shift before a train-mode BatchNorm (feature.3, through a linear map) has no effect: its
            # gradient is zero in theory, rounding noise in practice
            assert np.max(np.abs(grad)) < 1e-12 and np.max(np.abs(other)) < 1e-12
            continue
        assert np.max(np.abs(grad)) > 0, key
        value = rel(other, grad)
        assert value <= FLOAT64_GRAD_REL, f"gradient of {key}: rel {value:.3e}"
        worst = max(worst, value)
    assert np.max(np.abs(t_grads["mask_token"])) > 0  # masked positions feed the head
    record(f"float64 gradients (checkpointing {checkpointing})", worst)


def test_checkpointing_recomputes_with_the_same_drawn_masks(monkeypatch):
    """Without injection the masks come from each framework's generator; a checkpointed (recomputed) pass
    under the same seed gives the gradients of the plain pass, so recomputation reuses the drawn masks."""
    import paddle.distributed.fleet.utils as fleet_utils

    calls = {"torch": 0, "paddle": 0}

    def counting(framework, function):
        def wrapper(*args, **kwargs):
            calls[framework] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(tv, "checkpoint", counting("torch", tv.checkpoint))
    monkeypatch.setattr(fleet_utils, "recompute", counting("paddle", fleet_utils.recompute))
    x = seeded_images(4, seed=12)
    weights = np.random.default_rng(13).normal(size=(4, 512)).astype(np.float32)
    ref, out = build_pair("vit_t", seed=6, depth=2, drop_path_rate=0.5)  # block 1 drops half
    grads = {}
    for checkpointing in (False, True):
        ref.using_checkpoint = out.using_checkpoint = checkpointing
        torch.manual_seed(123)
        paddle.seed(123)
        grads[checkpointing] = (torch_grads(ref, x, weights, None, None), paddle_grads(out, x, weights, None, None))
    assert calls == {"torch": 2, "paddle": 2}  # one call per block, in the checkpointed pass only
    for framework in (0, 1):
        plain, recomputed = grads[False][framework], grads[True][framework]
        assert set(plain) == set(recomputed)
        for key in plain:
            np.testing.assert_allclose(recomputed[key], plain[key], rtol=1e-5, atol=1e-9, err_msg=key)
