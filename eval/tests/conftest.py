"""Fixtures shared by the eval tests: a seeded demo r18 in every weights format the CLI accepts."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def r18_files(tmp_path_factory):
    """A seeded demo r18 (random, calibrated; not a face model) as the original ``.pth``, its converted
    ``.pdparams``, an InsightFace-style ``.onnx`` export, and a cache folder for exported models."""
    from converters.checkpoint import write_paddle_weights, write_torch_state_dict
    from converters.demo import demo_state_dict
    from converters.mapping import torch_to_paddle
    from eval.export import export_onnx

    folder = tmp_path_factory.mktemp("r18")
    arrays = demo_state_dict("r18")
    write_torch_state_dict(folder / "r18.pth", arrays)
    write_paddle_weights(folder / "r18.pdparams", torch_to_paddle(arrays, "r18", 512, "demo"))
    export_onnx(arrays, "r18", 512, folder / "r18.onnx")
    return {"pth": folder / "r18.pth", "pdparams": folder / "r18.pdparams", "onnx": folder / "r18.onnx",
            "cache": folder / "cache"}
