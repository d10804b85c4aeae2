"""Float64 training-step parity of the full registered vit_t: the Paddle training step (train/engine.py, what
train.py runs) equals InsightFace's PyTorch loop (torch_reference/training.py) over 3 steps of real faces in
train mode, with patch masking (15 of 144 tokens) and stochastic depth (the registry's rates, 0 ... 0.1)
active and arcface_torch's ViT optimizer: AdamW, lr 1e-3, weight decay 0.1 on every parameter, Partial FC
with the ArcFace margin, a warmup + polynomial decay schedule and clipping of the backbone gradients to norm 5.

Each step both frameworks get the same injected masking noise and drop masks (new ones per step, from a
seeded numpy generator, every stochastic block dropping some samples on each branch). Per step: the loss,
the gradient of every backbone parameter and of the Partial FC weight (read before clipping and the update)
and every weight after the update agree within 1e-8 relative.

The float64 PyTorch twin uses Paddle's float32-rounded LayerNorm and BatchNorm epsilons (Paddle applies
them as float32 attributes also in float64), and the AdamW decay coefficient rounded to float32 (Paddle's
AdamW holds it as a float32 attribute).
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch

from converters.inputs import faces_from_bin
from converters.mapping import torch_to_paddle, trainable_pairs
from converters.models import paddle_model
from parity_tests.test_training_step import f32, grads_paddle, grads_torch
from parity_tests.test_vit import build_pair, numpy_randomness
from parity_tests.workers.numpy_reference import rel
from torch_reference.losses import CombinedMarginLoss as TorchMargin
from torch_reference.partial_fc import PartialFC as TorchPartialFC
from torch_reference.training import InsightFaceLoop
from train.config import TrainConfig
from train.engine import Trainer

GATE = 1e-8
STEPS = 3
BATCH = 4
CLASSES = 20
KEPT = 129  # int(144 * (1 - 0.1)) tokens pass the blocks when masking
LR, WEIGHT_DECAY = 1e-3, 0.1  # arcface_torch's ViT configs: optimizer "adamw", lr 0.001, weight_decay 0.1
ZERO_IN_THEORY = 1e-10  # gradient norms below this are flagged (a shift removed by a later train-mode BN)
MEASURED: dict[str, float] = {}  # worst rel per quantity, printed with -s


def measure(quantity: str, value: float) -> float:
    MEASURED[quantity] = max(value, MEASURED.get(quantity, 0.0))
    return value


@pytest.fixture(scope="module")
def faces(small_lfw):
    return faces_from_bin(small_lfw)[: STEPS * BATCH]


@pytest.mark.slow
def test_float64_vit_t_adamw_steps_with_masking_and_drop_path_equal_insightface_loop(faces):
    reference, _ = build_pair("vit_t", dtype="float64", seed=7)  # seeded, calibrated, rounded epsilons
    assert reference.mask_ratio == 0.1 and reference.drop_path_rates[-1] == pytest.approx(0.1)
    arrays = {k: v.numpy().astype(np.int64 if k.endswith("num_batches_tracked") else np.float32)
              for k, v in reference.state_dict().items()}
    config = TrainConfig(network="vit_t", num_classes=CLASSES, num_image=20, batch_size=BATCH, rec="synthetic",
                         optimizer="adamw", lr=LR, weight_decay=WEIGHT_DECAY)
    labels = np.random.default_rng(8).integers(0, CLASSES, size=(STEPS, BATCH))

    previous = paddle.get_default_dtype()
    paddle.set_default_dtype("float64")
    try:
        backbone = paddle_model("vit_t", torch_to_paddle(arrays, "vit_t", 512, "seeded vit_t"), dtype="float64")
        trainer = Trainer(config, backbone, total_steps=10, warmup_steps=2)
    finally:
        paddle.set_default_dtype(previous)
    assert backbone.drop_path_rates == reference.drop_path_rates and backbone.mask_ratio == 0.1
    reference_pfc = TorchPartialFC(TorchMargin(64.0, 1.0, 0.5, 0.0), 512, CLASSES).double()
    with torch.no_grad():
        reference_pfc.weight.copy_(torch.from_numpy(trainer.pfc.weight.numpy()))
    loop = InsightFaceLoop(reference, reference_pfc, lr=LR, weight_decay=f32(WEIGHT_DECAY), warmup_steps=2,
                           total_steps=10, optimizer="adamw", betas=(0.9, 0.999), eps=1e-8)

    # AdamW over every backbone parameter and the Partial FC weight, each with decoupled decay 0.1
    pairs = trainable_pairs("vit_t")
    paddle_params = {k: p for k, p in trainer.backbone.named_parameters() if not p.stop_gradient}
    assert len(pairs) == len(list(reference.parameters())) == len(paddle_params) == 144
    assert {p for _, p, _ in pairs} == set(paddle_params)
    optimized = {id(p) for p in trainer.optimizer._parameter_list}
    assert optimized == {id(p) for p in paddle_params.values()} | {id(trainer.pfc.weight)}
    assert trainer.optimizer._apply_decay_param_fun is None and trainer.optimizer._weight_decay == WEIGHT_DECAY
    assert all(g["weight_decay"] == f32(WEIGHT_DECAY) for g in loop.optimizer.param_groups)
    assert sum(len(g["params"]) for g in loop.optimizer.param_groups) == len(pairs) + 1

    # what the passes inside both training steps see: tokens entering the blocks, the last block's branches
    seen: dict[str, list[np.ndarray]] = {"torch": [], "paddle": [], "torch tokens": [], "paddle tokens": []}
    hooks = [
        reference.blocks[0].register_forward_pre_hook(
            lambda m, a: seen["torch tokens"].append(tuple(a[0].shape))),
        trainer.backbone.blocks[0].register_forward_pre_hook(
            lambda m, a: seen["paddle tokens"].append(tuple(a[0].shape))),
        reference.blocks[-1].drop_path.register_forward_hook(
            lambda m, a, o: seen["torch"].append(o.detach().numpy().copy())),
        trainer.backbone.blocks[-1].drop_path.register_forward_post_hook(
            lambda m, a, o: seen["paddle"].append(o.numpy().copy())),
    ]
    flagged: set[str] = set()
    noises, all_masks = [], []
    try:
        for step in range(STEPS):
            noise, masks = numpy_randomness(BATCH, reference.drop_path_rates, seed=100 + step)
            stochastic = [i for i, r in enumerate(reference.drop_path_rates) if r > 0]
            assert len(stochastic) == 11 and all((masks[i] == 0).any(axis=1).all() for i in stochastic)
            noises.append(noise)
            all_masks.append(masks)
            reference.inject_randomness(noise, masks)
            trainer.backbone.inject_randomness(noise, masks)

            x = faces[BATCH * step: BATCH * step + BATCH].astype(np.float64)
            captured = {}
            result = trainer.train_step(paddle.to_tensor(x), paddle.to_tensor(labels[step]),
                                        on_gradients=lambda c=captured: c.update(paddle=grads_paddle(trainer)))
            loss = loop.train_step(torch.from_numpy(x), torch.from_numpy(labels[step]),
                                   on_gradients=lambda c=captured: c.update(torch=grads_torch(loop)))
            assert np.isfinite(loss) and loss > 0
            # masking: 129 of 144 tokens pass the blocks; stochastic depth: the last block's attention and
            # MLP branch outputs are exactly zero for the samples the injected masks drop, and only for them
            assert seen["torch tokens"] == seen["paddle tokens"] == [(BATCH, KEPT, 256)]
            for framework in ("torch", "paddle"):
                assert len(seen[framework]) == 2
                for branch, out in enumerate(seen[framework]):
                    zero = np.all(out == 0, axis=(1, 2))
                    assert np.array_equal(zero, masks[-1, branch] == 0) and zero.any() and not zero.all()
                seen[framework].clear()
                seen[framework + " tokens"].clear()
            assert measure("loss", abs(result.loss - loss) / abs(loss)) <= GATE, \
                f"step {step + 1}: loss {result.loss} vs {loss}"

            # every gradient, before clipping and the update
            t_grads, p_grads = captured["torch"], captured["paddle"]
            assert set(t_grads) == {t for t, _, _ in pairs} | {"pfc.weight"}
            assert set(p_grads) == {p for _, p, _ in pairs} | {"pfc.weight"}
            assert measure("gradient", rel(p_grads["pfc.weight"], t_grads["pfc.weight"])) <= GATE
            for t_key, p_key, to_torch in pairs:
                ref, got = t_grads[t_key], to_torch(p_grads[p_key])
                if np.linalg.norm(ref) < ZERO_IN_THEORY:
                    flagged.add(t_key)
                    assert np.linalg.norm(got) < ZERO_IN_THEORY, f"step {step + 1}: gradient of {t_key}"
                    continue
                assert measure("gradient", rel(got, ref)) <= GATE, f"step {step + 1}: gradient of {t_key}"
            assert np.linalg.norm(t_grads["mask_token"]) > 0 and np.linalg.norm(t_grads["pos_embed"]) > 0

            # every weight after the update
            t_state, p_state = loop.backbone.state_dict(), trainer.backbone.state_dict()
            for t_key, p_key, to_torch in pairs:
                assert measure("weight", rel(to_torch(p_state[p_key].numpy()), t_state[t_key].numpy())) <= GATE, \
                    f"step {step + 1}: weight {t_key}"
            assert measure("weight", rel(trainer.pfc.weight.numpy(), loop.pfc.weight.detach().numpy())) <= GATE
    finally:
        for hook in hooks:
            hook.remove()
        reference.inject_randomness()
        trainer.backbone.inject_randomness()

    # new randomness every step: other masked tokens, other dropped branches
    assert not any(np.array_equal(np.argsort(a, 1), np.argsort(b, 1)) for a, b in zip(noises, noises[1:]))
    assert not any(np.array_equal(a, b) for a, b in zip(all_masks, all_masks[1:]))
    # a shift before a train-mode BatchNorm (feature.1's bias, through the linear feature.2 into the train-mode
    # feature.3) has no effect on the loss: its gradient is zero in theory, rounding noise in both frameworks
    assert flagged == {"feature.1.bias"}
    print({k: f"{v:.3e}" for k, v in MEASURED.items()})
