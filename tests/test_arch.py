"""Architecture detection from keys and shapes, in both frameworks' layouts."""

from __future__ import annotations

import pytest

import architectures
from converters.arch import detect_arch, expected_shapes, resolve_arch
from converters.errors import UserError


def shapes(arch: str, framework: str, num_features: int = 512) -> dict:
    return expected_shapes(arch, num_features, framework)


@pytest.mark.parametrize("framework", ["torch", "paddle"])
@pytest.mark.parametrize("arch", architectures.names())
def test_every_registry_architecture_is_recognised(arch, framework):
    info = detect_arch(shapes(arch, framework), "ckpt", framework)
    # names with interchangeable weights are reported as the first of them, with the others as alternatives
    assert (info.name, info.num_features) == (architectures.same_weights(arch)[0], 512)
    assert info.same_weights == architectures.same_weights(arch)
    assert resolve_arch(arch, info, "ckpt").name == arch


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_embedding_size_is_read_from_the_head(framework):
    assert detect_arch(shapes("mbf", framework, 128), "ckpt", framework).num_features == 128
    assert detect_arch(shapes("r34", framework, 256), "ckpt", framework).num_features == 256


def test_vit_names_that_differ_only_in_training_share_their_weights():
    info = detect_arch(shapes("vit_b_dp005_mask_005", "torch"), "ckpt")
    assert (info.name, info.alternatives) == ("vit_b", ("vit_b_dp005_mask_005",))
    assert info.description == "ViT dim 512 depth 24 heads 8 patch 9, 512-d embedding"
    assert detect_arch(shapes("vit_l_dp005_mask_005", "paddle", 256), "c", "paddle").same_weights == (
        "vit_l_dp005_mask_005",)


def test_iresnet2060_is_recognised_from_its_key_pattern():
    info = detect_arch(shapes("r2060", "torch", 128), "ckpt")
    assert (info.name, info.num_features, info.description) == (
        "r2060", 128, "iresnet blocks 3-128-896-3, 128-d embedding")


def test_an_unregistered_depth_names_the_nearest_architecture_and_its_first_difference():
    keys = dict(shapes("r18", "torch"))
    keys["layer3.2.bn1.weight"] = (256,)
    with pytest.raises(UserError, match=r"nearest is r18 \(iresnet blocks 2-2-2-2\): unexpected key "
                                        "layer3.2.bn1.weight"):
        detect_arch(keys, "ckpt")
    vit = dict(shapes("vit_t", "paddle"))
    vit["blocks.3.attn.qkv.weight"] = (256, 512)
    with pytest.raises(UserError, match=r"nearest is vit_t .*blocks.3.attn.qkv.weight: shape \[256, 512\] but "
                                        r"vit_t expects \[256, 768\]"):
        detect_arch(vit, "ckpt", "paddle")


def test_keys_of_no_known_family_are_listed():
    with pytest.raises(UserError, match="not an InsightFace state_dict of a registered architecture .*keys: a.weight, b"):
        detect_arch({"a.weight": (3,), "b": (1,)}, "ckpt")


def test_wrong_arch_message_names_both():
    info = detect_arch(shapes("mbf_large", "torch"), "x.pth")
    with pytest.raises(UserError) as err:
        resolve_arch("mbf", info, "x.pth")
    assert str(err.value) == ("x.pth: --arch mbf expects MobileFaceNet blocks 1-4-6-2 scale 2, but the "
                              "checkpoint is mbf_large (MobileFaceNet blocks 2-8-12-4 scale 4, 512-d embedding)")
    assert resolve_arch(None, info, "x.pth") is info


def test_a_size_registered_at_run_time_is_detected_and_resolved():
    with architectures.registered("r_tiny", architectures.IResNetSpec((2, 3, 4, 2))):
        info = detect_arch(shapes("r_tiny", "paddle", 64), "ckpt", "paddle")
        assert (info.name, info.num_features) == ("r_tiny", 64)
        with pytest.raises(UserError, match="--arch r18 expects iresnet blocks 2-2-2-2, but the checkpoint is "
                                            "r_tiny"):
            resolve_arch("r18", info, "ckpt")
    assert "r_tiny" not in architectures.names()
    with pytest.raises(UserError, match="nearest is"):
        detect_arch(shapes("r18", "torch") | {"layer2.2.bn1.weight": (128,)}, "ckpt")
