"""Exported models for the ``paddle-inference`` and ``onnx`` backends, made once per weights file and cached.

- Paddle Inference: ``paddle.jit.save`` of the Paddle model (``model.json`` + ``model.pdiparams``), traced in
  eval mode, so the ViT's training-only branches (patch masking, stochastic depth, their injected randomness)
  are left out of the graph. ``paddle.jit.to_static`` is never combined with ``FLAGS_use_mkldnn`` (that
  segfaults); the predictor switches oneDNN on in its own config.
- ONNX: the PyTorch reference exported as InsightFace's ``torch2onnx.py`` does (opset 11, input ``data``,
  dynamic batch, normalisation outside the graph), usable by every registered architecture.

Exports live under a folder named by the weights' sha256, the architecture, the embedding size and the
framework version: a private folder under the system temp dir, or ``--cache-dir``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from converters.binfile import IMAGE_SIZE
from converters.errors import UserError
from converters.images import normalize

from .sources import INPUT_SHAPE, ModelSource

log = logging.getLogger(__name__)


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where exported models are cached: ``cache_dir``, or a private folder under the system temp dir."""
    from converters.outputs import output_error

    root = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / f"arcface-bridge-{os.getuid()}"
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(root, err) from None
    if cache_dir is None and (root.stat().st_uid != os.getuid() or root.stat().st_mode & 0o022):
        raise UserError(root, "cache folder is writable by other users; pass --cache-dir")
    return root


def _cached(folder: Path, files: tuple[str, ...], build) -> Path:
    """``folder`` holding ``files``, built once by ``build(tmp_folder)`` and renamed into place."""
    from converters.outputs import output_error

    if all((folder / f).is_file() for f in files):
        return folder
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
        build(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first
            if not all((folder / f).is_file() for f in files):
                raise
    except OSError as err:  # a read-only or full cache folder: one line naming it
        raise output_error(folder, err) from None
    finally:
        if tmp is not None and tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def export_paddle_inference(source: ModelSource, cache_dir: str | Path | None = None) -> Path:
    """``paddle.jit.save`` the Paddle model once per weights file; returns the prefix (``<dir>/model``)."""
    import paddle

    from converters.models import paddle_model

    folder = cache_root(cache_dir) / f"{source.sha256[:32]}-{source.arch}-{source.num_features}-paddle{paddle.__version__}"

    def build(tmp: Path) -> None:
        log.info("exporting %s for Paddle Inference to %s", source.path, folder)
        model = paddle_model(source.arch, source.paddle_state(), source.num_features)
        spec = [paddle.static.InputSpec([None, *INPUT_SHAPE], "float32", "x")]
        paddle.jit.save(model, str(tmp / "model"), input_spec=spec)
        _check_export(tmp, folder, sum(int(np.prod(v.shape)) * 4 for v in model.state_dict().values()))

    return _cached(folder, ("model.json", "model.pdiparams"), build) / "model"


def _check_export(tmp: Path, folder: Path, data_bytes: int) -> None:
    """Refuse an incomplete ``paddle.jit.save``: it ignores failed writes (a full disk leaves a truncated
    ``model.json`` and parameters behind and no error), and a cached broken export would fail every run."""
    import json

    try:
        json.loads((tmp / "model.json").read_text())
        complete = (tmp / "model.pdiparams").stat().st_size >= data_bytes
    except (OSError, ValueError):
        complete = False
    if not complete:
        raise UserError(folder, "cannot write: the exported model is incomplete (no space left on the device?)")


def export_onnx(arrays: Any, arch: str, num_features: int, path: str | Path) -> Path:
    """Export the PyTorch reference as InsightFace's ``torch2onnx.py``: opset 11, input ``data`` with batch
    dimension ``None``, normalisation outside the graph.

    The batch is declared dynamic while tracing (``dynamic_axes``), not only marked on the input afterwards as
    InsightFace does: that works for the ResNets, but a ViT's attention reshapes would keep the traced batch
    of one and fail on any other batch.
    """
    import torch

    from converters.models import torch_model

    model = torch_model(arch, arrays, num_features)
    dummy = torch.from_numpy(normalize(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)))
    with warnings.catch_warnings():
        # the ViT checks the image size in Python: fixed at 112 x 112 here, so a constant in the graph is right
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, dummy, str(path), opset_version=11, input_names=["data"],
                          keep_initializers_as_inputs=False, dynamo=False, dynamic_axes={"data": {0: "None"}})
    return Path(path)


def cached_onnx(source: ModelSource, cache_dir: str | Path | None = None) -> Path:
    """The ``.onnx`` export of a ``.pth``/``.pdparams`` source, made once per weights file."""
    import torch

    # "-dynamic": exports made before the batch was declared dynamic while tracing are not reused
    folder = cache_root(cache_dir) / (f"{source.sha256[:32]}-{source.arch}-{source.num_features}"
                                      f"-torch{torch.__version__}-dynamic")

    def build(tmp: Path) -> None:
        log.info("exporting %s to ONNX in %s", source.path, folder)
        export_onnx(source.torch_state(), source.arch, source.num_features, tmp / "model.onnx")

    return _cached(folder, ("model.onnx",), build) / "model.onnx"
