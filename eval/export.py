"""Exported models for the ``paddle-inference`` and ``onnx`` backends, made once per weights file and cached.

The exports are ``converters/export.py``'s, the deployment command's own code:

- Paddle Inference: ``save_paddle_inference`` (``paddle.jit.save`` in eval mode with a dynamic batch, so the
  ViT's training-only branches are left out of the graph, the written files checked for completeness).
- ONNX: ``export_onnx``, the PyTorch reference exported as arcface_torch's ``torch2onnx.py`` does (opset 11,
  input ``data``, dynamic batch, normalisation outside the graph), usable by every registered architecture.

Exports live under a folder named by the weights' sha256, the architecture, the embedding size and the
framework version: a private folder under the system temp dir, or ``--cache-dir``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from converters.errors import UserError
from converters.export import export_onnx, save_paddle_inference

from .sources import ModelSource

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


def _paddle_folder(source: ModelSource, cache_dir: str | Path | None, suffix: str) -> Path:
    """The cache folder of a Paddle Inference model of ``source``: named by the weights' sha256, the
    architecture, the embedding size and the Paddle version, then ``suffix`` (what was made of it)."""
    import paddle

    return cache_root(cache_dir) / (f"{source.sha256[:32]}-{source.arch}-{source.num_features}"
                                    f"-paddle{paddle.__version__}{suffix}")


def export_paddle_inference(source: ModelSource, cache_dir: str | Path | None = None,
                            precision: str = "fp32") -> Path:
    """``save_paddle_inference`` of the Paddle model, once per weights file and precision (``bf16``: the graph
    for oneDNN bfloat16, its PReLUs written as multiply, add and relu); returns the prefix (``<dir>/model``)."""
    from converters.models import paddle_model

    folder = _paddle_folder(source, cache_dir, "" if precision == "fp32" else f"-{precision}")

    def build(tmp: Path) -> None:
        log.info("exporting %s for Paddle Inference (%s) to %s", source.path, precision, folder)
        model = paddle_model(source.arch, source.paddle_state(), source.num_features)
        save_paddle_inference(model, tmp / "model", name=folder, precision=precision)

    return _cached(folder, ("model.json", "model.pdiparams"), build) / "model"


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


def cached_int8(source: ModelSource, backend: str, calibration: str | Path,
                cache_dir: str | Path | None = None) -> Path:
    """The int8 model of ``source`` for ``backend``, calibrated on the faces of ``calibration``, made once per
    weights file, calibration data and quantization settings: ``onnx``, onnxruntime's static quantization of
    the ONNX export (returns the ``.onnx`` path); ``paddle-inference``, ``paddle.quantization.PTQ`` of the
    Paddle model for oneDNN int8 (returns the prefix of ``model.pdmodel`` + ``model.pdiparams``)."""
    import hashlib

    from converters.quantize import (
        ONNX_DEFAULTS,
        PADDLE_DEFAULTS,
        PADDLE_MODEL_SUFFIX,
        PADDLE_PARAMS_SUFFIX,
        calibration_images,
        calibration_key,
        quantize_onnx_int8,
        quantize_paddle_int8,
    )

    def settings_key(settings: dict) -> str:
        return hashlib.sha256(repr(sorted(settings.items())).encode()).hexdigest()[:8]

    key = calibration_key(calibration)
    if backend == "onnx":
        src = cached_onnx(source, cache_dir)
        folder = src.parent.with_name(f"{src.parent.name}-int8-{key}-{settings_key(ONNX_DEFAULTS)}")

        def build(tmp: Path) -> None:
            log.info("quantizing %s to int8 (onnxruntime, calibrated on %s) in %s", source.path, calibration, folder)
            quantize_onnx_int8(src, tmp / "model.onnx", calibration_images(calibration))

        return _cached(folder, ("model.onnx",), build) / "model.onnx"
    if backend == "paddle-inference":
        from converters.models import paddle_model

        folder = _paddle_folder(source, cache_dir, f"-int8-{key}-{settings_key(PADDLE_DEFAULTS)}")

        def build_paddle(tmp: Path) -> None:
            log.info("quantizing %s to int8 (paddle.quantization.PTQ, calibrated on %s) in %s", source.path,
                     calibration, folder)
            model = paddle_model(source.arch, source.paddle_state(), source.num_features)
            quantize_paddle_int8(model, tmp / "model", calibration_images(calibration))

        files = ("model" + PADDLE_MODEL_SUFFIX, "model" + PADDLE_PARAMS_SUFFIX)
        return _cached(folder, files, build_paddle) / "model"
    raise UserError(None, f"int8 for {backend}: only onnx and paddle-inference are available")


__all__ = ["cache_root", "cached_int8", "cached_onnx", "export_onnx", "export_paddle_inference"]
