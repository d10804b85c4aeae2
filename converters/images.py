"""The one image decoder and normaliser for images read from users' files (``.bin`` packs, RecordIO packs,
image folders).

A decompression bomb is a small file declaring a huge image (a 1 MB PNG of 30000x30000 pixels asks the
decoder for 2.7 GB). So before OpenCV sees the bytes, ``image_size_from_header`` reads the width and height
the image declares from its header (JPEG: the first SOFn frame, found by walking the markers as libjpeg
does; PNG: IHDR; BMP: the DIB header; GIF: the screen and every frame's extent; WebP: VP8, VP8L, VP8X
canvas and every ANMF frame) and ``decode_image`` refuses, with one line naming the file and the image,
an image of more than ``max_pixels`` pixels or of a format it does not recognise. The header walk reads
only what the header needs and is bounded by the data's length.

``normalize`` turns decoded uint8 RGB images into the float32 network input, exactly as InsightFace does.

The limit is ``DEFAULT_MAX_PIXELS`` (4096x4096; a 112x112 face needs nothing near it), overridable per call
or for a whole run with the environment variable ``ARCFACE_MAX_IMAGE_PIXELS``. OpenCV's own check
(``OPENCV_IO_MAX_IMAGE_PIXELS``, default 2^30 pixels) is lowered to the same limit when OpenCV is first
loaded by this module; it is read once when ``cv2`` loads, so it is only a second line of defence.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from converters.errors import UserError

DEFAULT_MAX_PIXELS = 4096 * 4096
MAX_PIXELS_ENV = "ARCFACE_MAX_IMAGE_PIXELS"
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WebP")
_MAX_JPEG_SEGMENTS = 100_000  # markers walked before the frame header; real files have a few dozen


def max_image_pixels() -> int:
    """The pixel limit of this run: ``ARCFACE_MAX_IMAGE_PIXELS`` if set to a positive integer, else the default."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if text:
        if not (text.isascii() and text.isdigit()) or int(text) <= 0:
            raise UserError(None, f"environment variable {MAX_PIXELS_ENV}={text[:40]!r} is not a positive "
                            "integer (a number of pixels)")
        return int(text)
    return DEFAULT_MAX_PIXELS


# OpenCV reads its limit when the library loads: set it first if nobody has (and if cv2 is not loaded yet)
_text = os.environ.get(MAX_PIXELS_ENV, "").strip()
if _text.isascii() and _text.isdigit():
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(max(int(_text), 1)))
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(DEFAULT_MAX_PIXELS))

import cv2  # noqa: E402  (after the limit above)


class ImageRefused(ValueError):
    """An image refused before or during decoding; ``problem`` is the text after the image's name."""

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem


class HeaderError(ValueError):
    """A header that is truncated, malformed or of no recognised format."""


# ---------------------------------------------------------------------------------------------------
# header parsers: each returns (width, height) or raises HeaderError


def _need(data: bytes, end: int, what: str) -> None:
    if end > len(data):
        raise HeaderError(f"truncated {what}")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Walk the markers after SOI as libjpeg's ``next_marker`` does, to the first SOFn frame header."""
    n = len(data)
    pos = 2
    for _ in range(_MAX_JPEG_SEGMENTS):
        # libjpeg skips any bytes up to an 0xFF, then fill bytes (more 0xFF); 0xFF00 is no marker
        while True:
            pos = data.find(b"\xff", pos)
            if pos < 0:
                raise HeaderError("truncated JPEG: no frame header (SOF) before the end of the data")
            while pos < n and data[pos] == 0xFF:
                pos += 1
            if pos >= n:
                raise HeaderError("truncated JPEG: no frame header (SOF) before the end of the data")
            marker = data[pos]
            pos += 1
            if marker:
                break
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOF0..SOF15 (not DHT, JPG, DAC)
            _need(data, pos + 7, "JPEG frame header")
            length, _precision, height, width = struct.unpack_from(">HBHH", data, pos)
            if length < 8:
                raise HeaderError(f"JPEG frame header of length {length}")
            return width, height
        if marker == 0xD8:
            raise HeaderError("JPEG: a second start-of-image marker before the frame header")
        if marker in (0xD9, 0xDA):
            raise HeaderError(f"JPEG: {'end of image' if marker == 0xD9 else 'scan'} before the frame header")
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # RSTn and TEM stand alone
            continue
        _need(data, pos + 2, "JPEG segment length")
        length = struct.unpack_from(">H", data, pos)[0]
        if length < 2:
            raise HeaderError(f"JPEG segment 0xFF{marker:02X} of length {length}")
        pos += length
    raise HeaderError(f"JPEG: more than {_MAX_JPEG_SEGMENTS} segments before the frame header")


def _png_size(data: bytes) -> tuple[int, int]:
    _need(data, 24, "PNG header")
    length, kind, width, height = struct.unpack_from(">I4sII", data, 8)
    if kind != b"IHDR" or length < 13:
        raise HeaderError("PNG without an IHDR chunk first")
    return width, height


def _bmp_size(data: bytes) -> tuple[int, int]:
    _need(data, 18, "BMP header")
    size = struct.unpack_from("<I", data, 14)[0]
    if size == 12:
        _need(data, 22, "BMP header")
        return struct.unpack_from("<HH", data, 18)
    if size >= 36:
        _need(data, 26, "BMP header")
        width, height = struct.unpack_from("<ii", data, 18)
        return width, abs(height)  # a negative height means rows stored top-down
    raise HeaderError(f"BMP with a DIB header of {size} bytes")


def _gif_size(data: bytes) -> tuple[int, int]:
    """The logical screen, widened to every frame's extent (a frame may claim to lie outside it)."""
    _need(data, 13, "GIF header")
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    n = len(data)
    while pos < n:  # each step moves forward by at least one byte
        block = data[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x2C:  # image descriptor: left, top, width, height, flags
            _need(data, pos + 10, "GIF image descriptor")
            left, top, w, h, iflags = struct.unpack_from("<HHHHB", data, pos + 1)
            width, height = max(width, left + w), max(height, top + h)
            pos += 10 + (3 << ((iflags & 7) + 1) if iflags & 0x80 else 0) + 1  # + LZW minimum code size
        elif block == 0x21:  # extension: label, then sub-blocks
            pos += 2
        else:
            break  # garbage: the decoder stops or fails here
        while pos < n and data[pos]:  # data sub-blocks up to the zero-length terminator
            pos += data[pos] + 1
        pos += 1
    return width, height


def _webp_size(data: bytes) -> tuple[int, int]:
    """The largest of the VP8X canvas, the VP8/VP8L bitstream and every ANMF frame's extent."""
    width = height = 0
    found = False
    pos, end = 12, min(len(data), 8 + struct.unpack_from("<I", data, 4)[0])
    while pos + 8 <= end:
        kind, size = struct.unpack_from("<4sI", data, pos)
        body = pos + 8
        if kind == b"VP8X":
            _need(data, body + 10, "WebP VP8X chunk")
            w = int.from_bytes(data[body + 4:body + 7], "little") + 1
            h = int.from_bytes(data[body + 7:body + 10], "little") + 1
        elif kind == b"VP8 ":
            _need(data, body + 10, "WebP VP8 frame header")
            if data[body + 3:body + 6] != b"\x9d\x01\x2a":
                raise HeaderError("WebP VP8 chunk without the frame start code")
            w, h = (v & 0x3FFF for v in struct.unpack_from("<HH", data, body + 6))
        elif kind == b"VP8L":
            _need(data, body + 5, "WebP VP8L header")
            if data[body] != 0x2F:
                raise HeaderError("WebP VP8L chunk without its signature")
            bits = int.from_bytes(data[body + 1:body + 5], "little")
            w, h = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        elif kind == b"ANMF":
            _need(data, body + 12, "WebP ANMF frame header")
            x, y = (2 * int.from_bytes(data[body + i:body + i + 3], "little") for i in (0, 3))
            w = x + int.from_bytes(data[body + 6:body + 9], "little") + 1
            h = y + int.from_bytes(data[body + 9:body + 12], "little") + 1
            # the frame's own bitstream (inside ANMF) is no larger than the frame: walk into it too
            sub = _webp_chunks_in(data, body + 16, min(end, body + size))
            w, h = max(w, sub[0]), max(h, sub[1])
        else:
            w = h = 0
        if w or h:
            found = True
            width, height = max(width, w), max(height, h)
        pos = body + size + (size & 1)
    if not found:
        raise HeaderError("WebP without a VP8, VP8L or VP8X chunk")
    return width, height


def _webp_chunks_in(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """The largest VP8/VP8L bitstream among the chunks in ``data[pos:end]`` (inside an ANMF frame)."""
    width = height = 0
    while pos + 8 <= end:
        kind, size = struct.unpack_from("<4sI", data, pos)
        body = pos + 8
        if kind == b"VP8 " and body + 10 <= len(data):
            w, h = (v & 0x3FFF for v in struct.unpack_from("<HH", data, body + 6))
            width, height = max(width, w), max(height, h)
        elif kind == b"VP8L" and body + 5 <= len(data):
            bits = int.from_bytes(data[body + 1:body + 5], "little")
            width, height = max(width, (bits & 0x3FFF) + 1), max(height, ((bits >> 14) & 0x3FFF) + 1)
        pos = body + size + (size & 1)
    return width, height


def _format_of(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:2] == b"BM":
        return "BMP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


_PARSERS = {"JPEG": _jpeg_size, "PNG": _png_size, "BMP": _bmp_size, "GIF": _gif_size, "WebP": _webp_size}


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).tobytes()
    return bytes(data)


def image_size_from_header(data: bytes) -> tuple[int, int, str]:
    """``(width, height, format)`` an encoded image declares in its header, without decoding it.

    ``format`` is one of ``FORMATS``. Raises ``ImageRefused`` (a ValueError) for data of no recognised
    format or with a truncated or malformed header.
    """
    data = _as_bytes(data)
    fmt = _format_of(data)
    if fmt is None:
        raise ImageRefused(f"cannot be decoded (not a {', '.join(FORMATS[:-1])} or {FORMATS[-1]} image, "
                           f"{len(data)} bytes)")
    try:
        width, height = _PARSERS[fmt](data)
    except (HeaderError, struct.error) as err:
        raise ImageRefused(f"cannot be decoded (corrupt or not an image: {err}, {len(data)} bytes)") from None
    if width <= 0 or height <= 0:
        raise ImageRefused(f"cannot be decoded (corrupt or not an image: the {fmt} header declares "
                           f"{width}x{height} pixels, {len(data)} bytes)")
    return int(width), int(height), fmt


def check_image(data: Any, max_pixels: int | None = None) -> tuple[int, int, str]:
    """``image_size_from_header``, refusing (``ImageRefused``) an image above the pixel limit."""
    limit = max_image_pixels() if max_pixels is None else max_pixels
    width, height, fmt = image_size_from_header(data)
    if width * height > limit:
        raise ImageRefused(f"declares {width}x{height} = {width * height} pixels in its {fmt} header, above "
                           f"the limit of {limit} (a decompression bomb? set {MAX_PIXELS_ENV} to allow more)")
    return width, height, fmt


def decode_bgr(data: Any, max_pixels: int | None = None) -> np.ndarray:
    """Check the header (``check_image``), then decode with OpenCV to ``[H, W, 3]`` uint8 BGR.

    Raises ``ImageRefused`` with the problem (refused, or OpenCV cannot decode it).
    """
    data = _as_bytes(data)
    check_image(data, max_pixels)
    with _stderr_captured() as captured:
        try:
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        except cv2.error as err:
            bgr, failure = None, str(err).strip().splitlines()[-1][:200] if str(err).strip() else "OpenCV error"
        else:
            failure = None
    said = " ".join(captured.text.split())[:200]  # what the codec library printed (libpng: "Not enough image data")
    if bgr is None:
        detail = failure and f"OpenCV: {failure}" or said or "corrupt or not an image"
        raise ImageRefused(f"cannot be decoded ({detail}, {len(data)} bytes)")
    if captured.text:  # a warning on an image that decoded: pass it on
        os.write(2, captured.text.encode("utf-8", "replace"))
    return bgr


class _Captured:
    text = ""


_CAPTURE_LOCK = threading.Lock()
_capture_file: tuple[int, Any] | None = None  # (pid, temporary file) of this process


@contextlib.contextmanager
def _stderr_captured():
    """Collect what C libraries write to file descriptor 2 during the block (libpng prints its errors
    there whatever OpenCV's log level), so a corrupt image gives one error line that includes it."""
    global _capture_file
    captured = _Captured()
    if threading.current_thread() is not threading.main_thread():
        # fd 2 is shared by every thread: redirecting it here could swallow another thread's output, e.g.
        # the main thread's one error line while a loader thread decodes. Only the main thread captures.
        yield captured
        return
    with _CAPTURE_LOCK:
        try:
            if _capture_file is None or _capture_file[0] != os.getpid():
                _capture_file = (os.getpid(), tempfile.TemporaryFile())  # noqa: SIM115 (kept open)
            fh = _capture_file[1]
            fh.seek(0)
            fh.truncate()
            saved = os.dup(2)
        except OSError:  # no usable stderr or temporary folder: decode without capturing
            yield captured
            return
        try:
            os.dup2(fh.fileno(), 2)
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            fh.seek(0)
            captured.text = fh.read(4096).decode("utf-8", "replace")


def decode_image(data: Any, source_path: str | Path | None, what: str, max_pixels: int | None = None,
                 rgb: bool = False) -> np.ndarray:
    """Decode an image from a user's file to ``[H, W, 3]`` uint8 BGR (RGB with ``rgb``).

    An image of an unrecognised format, a corrupt one, or one whose header declares more than
    ``max_pixels`` pixels (default ``max_image_pixels()``) is refused, before decoding, with a one-line
    ``UserError`` ``<source_path>: <what>: <problem>``; ``what`` names the image (``image 13``,
    ``record key 4``).
    """
    try:
        bgr = decode_bgr(data, max_pixels)
    except ImageRefused as err:
        raise UserError(source_path, f"{what}: {err.problem}" if what else err.problem) from None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if rgb else bgr


def normalize(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[..., H, W, 3]`` -> float32 ``[..., 3, H, W]`` in [-1, 1]: ``(v/255 - 0.5)/0.5``.

    The same float32 operations in the same order as InsightFace, so the inputs are bit-identical.
    """
    x = rgb.astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(0.5)) / np.float32(0.5)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))
