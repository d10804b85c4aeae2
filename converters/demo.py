"""A seeded PyTorch reference model that behaves like a trained one, for demos and tests.

Random InsightFace-initialised weights with untouched BatchNorm statistics (mean 0, variance 1) blow the
r50 embedding up to ~1e23 and overflow deeper nets, which makes float32 parity meaningless. Here the
BatchNorm/PReLU affine parameters are randomised (so that a mapping that swaps or drops them is caught)
and the running statistics are calibrated by train-mode passes over seeded inputs, after which
embeddings have norms near sqrt(512) ~ 23, as trained models do. It is not a face model.

Calibration costs a forward pass per image: models above 200 M weights get one batch of 8 images instead
of three (r2060's checkpoint then takes about 2 minutes on 2 cores; its embeddings have norms 28-33).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from architectures import parameter_count

from .inputs import seeded_images

LARGE_MODEL_PARAMETERS = 200_000_000


def demo_state_dict(arch: str, seed: int = 0, num_features: int = 512, batches: int | None = None,
                    batch_size: int = 8) -> OrderedDict[str, np.ndarray]:
    """InsightFace-layout state_dict of a calibrated random ``arch`` as numpy arrays.

    ``batches`` of calibration: by default 3, or 1 above ``LARGE_MODEL_PARAMETERS`` weights."""
    import torch
    from torch import nn

    from torch_reference import get_model

    if batches is None:
        batches = 1 if parameter_count(arch, num_features) > LARGE_MODEL_PARAMETERS else 3
    torch.manual_seed(seed)
    model = get_model(arch, num_features=num_features)
    rng = np.random.default_rng(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in norms:
            if m.weight.requires_grad:  # iresnet's features.weight stays frozen at 1.0
                m.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, m.weight.shape).astype(np.float32)))
            m.bias.copy_(torch.from_numpy(rng.normal(0.0, 0.1, m.bias.shape).astype(np.float32)))
        for m in model.modules():
            if isinstance(m, nn.PReLU):
                m.weight.copy_(torch.from_numpy(rng.uniform(0.05, 0.4, m.weight.shape).astype(np.float32)))
        for m in norms:
            m.momentum = None  # cumulative average over the calibration batches
        model.train()
        for b in range(batches):
            model(torch.from_numpy(seeded_images(batch_size, seed=seed * 1000 + b + 1)))
        for m in norms:
            m.momentum = 0.1
    model.eval()
    # the arrays share the (detached) tensors' memory, which outlives the model: no second copy
    return OrderedDict((k, v.detach().numpy()) for k, v in model.state_dict().items())
