"""Fuzz converters.images: the header parser and the guarded decoder.

Property: ``image_size_from_header`` returns ``(width, height, format)`` or raises ``ImageRefused``;
``decode_image`` returns an image or raises ``UserError``; and whenever OpenCV decodes an image the
header check let through, it has exactly the pixel count the header declared (the check can only be
trusted if it agrees with the decoder).
"""

from __future__ import annotations

import struct

import cv2
import numpy as np
from hypothesis import example, given

from converters.errors import UserError
from converters.images import FORMATS, ImageRefused, decode_bgr, image_size_from_header
from tests.fuzz._harness import profile, seeded_or_random, target

FUZZ_MAX_PIXELS = 1 << 20  # keeps each decode fast; the limit logic is the same at any value


def _seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for w, h in ((16, 12), (3, 40)):
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        for ext, params in ((".jpg", []), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]), (".png", []),
                            (".bmp", []), (".webp", []), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
                            (".gif", [])):
            ok, buf = cv2.imencode(ext, image, params)
            assert ok, ext
            out.append(buf.tobytes())
    return out


SEEDS = _seeds()


@target
@profile()
@given(seeded_or_random(SEEDS))
@example(b"\xff\xd8\xff" + b"\xff" * 100)  # fill bytes to the end
@example(b"GIF89a\x01\x00\x01\x00\x80" + b"\x00" * 6 + b"\x2c" + struct.pack("<HHHH", 0, 0, 60000, 60000))
@example(b"RIFF\xff\xff\xff\xffWEBPVP8X" + struct.pack("<I", 10) + b"\0" * 4 + b"\xff" * 6)
def test_fuzz_image_header(data):
    try:
        width, height, fmt = image_size_from_header(data)
    except ImageRefused as err:
        assert "\n" not in err.problem
        return
    assert fmt in FORMATS and width > 0 and height > 0


@target
@profile()
@given(seeded_or_random(SEEDS))
def test_fuzz_decode_agrees_with_header(data):
    try:
        bgr = decode_bgr(data, max_pixels=FUZZ_MAX_PIXELS)
    except ImageRefused as err:
        assert "\n" not in err.problem
        return
    width, height, _ = image_size_from_header(data)
    assert bgr.dtype == np.uint8 and bgr.ndim == 3 and bgr.shape[2] == 3
    # EXIF orientation may swap the sides; the pixel count is what the limit bounds
    assert bgr.shape[0] * bgr.shape[1] == width * height, (bgr.shape, width, height)


@target
@profile()
@given(seeded_or_random(SEEDS))
def test_fuzz_decode_image_user_error(data):
    from converters.images import decode_image

    try:
        rgb = decode_image(data, "pack.bin", "image 3", max_pixels=FUZZ_MAX_PIXELS, rgb=True)
    except UserError as err:
        assert str(err).startswith("pack.bin: image 3: ") and "\n" not in str(err)
        return
    assert rgb.shape[0] * rgb.shape[1] <= FUZZ_MAX_PIXELS
