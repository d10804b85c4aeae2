"""Architecture detection from keys and shapes, in both frameworks' layouts."""

from __future__ import annotations

import pytest

from converters.arch import detect_arch, resolve_arch
from converters.errors import UserError
from converters.mapping import layout
from torch_reference import MODEL_NAMES


def shapes(arch: str, framework: str, num_features: int = 512) -> dict:
    entries = layout(arch, num_features)
    if framework == "torch":
        return {e.torch_key: e.torch_shape for e in entries}
    return {e.paddle_key: e.paddle_shape for e in entries if e.paddle_key}


@pytest.mark.parametrize("framework", ["torch", "paddle"])
@pytest.mark.parametrize("arch", MODEL_NAMES)
def test_every_registry_architecture_is_recognised(arch, framework):
    info = detect_arch(shapes(arch, framework), "ckpt", framework)
    assert (info.name, info.num_features) == (arch, 512)


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_embedding_size_is_read_from_the_head(framework):
    assert detect_arch(shapes("mbf", framework, 128), "ckpt", framework).num_features == 128
    assert detect_arch(shapes("r34", framework, 256), "ckpt", framework).num_features == 256


def test_iresnet2060_is_named_and_refused():
    keys = {"conv1.weight": (64, 3, 3, 3), "fc.weight": (512, 25088)}
    for stage, n in zip(range(1, 5), (3, 128, 896, 3)):
        keys.update({f"layer{stage}.{b}.bn1.weight": (64,) for b in range(n)})
    with pytest.raises(UserError, match="r2060 is not supported"):
        detect_arch(keys, "ckpt")


def test_unknown_depth_lists_the_blocks_found():
    keys = dict(shapes("r18", "torch"))
    keys["layer3.2.bn1.weight"] = (256,)
    with pytest.raises(UserError, match="blocks 2-2-3-2 matches no known depth"):
        detect_arch(keys, "ckpt")


def test_wrong_arch_message_names_both():
    info = detect_arch(shapes("mbf_large", "torch"), "x.pth")
    with pytest.raises(UserError) as err:
        resolve_arch("mbf", info, "x.pth")
    assert str(err.value) == ("x.pth: --arch mbf expects MobileFaceNet blocks 1-4-6-2 scale 2, but the "
                              "checkpoint is mbf_large (MobileFaceNet blocks 2-8-12-4 scale 4, 512-d embedding)")
    assert resolve_arch(None, info, "x.pth") is info


def test_paddle_and_torch_registries_agree():
    """paddle_models keeps its own copy of the block table (it depends on paddle only); it must not drift."""
    import paddle_models
    from paddle_models.iresnet import IRESNET_LAYERS
    from paddle_models.mobilefacenet import MBF_VARIANTS
    from torch_reference import specs

    assert paddle_models.MODEL_NAMES == specs.MODEL_NAMES
    assert IRESNET_LAYERS == specs.IRESNET_LAYERS
    assert MBF_VARIANTS == specs.MBF_VARIANTS
