"""converters.images: header sizes of every format, and decompression bombs refused before decoding."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from converters.errors import UserError
from converters.images import (
    DEFAULT_MAX_PIXELS,
    ImageRefused,
    check_image,
    decode_image,
    image_size_from_header,
)

ROOT = Path(__file__).resolve().parents[1]
BOMB_SIDE = 30000


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int = BOMB_SIDE, truncated: bool = False) -> bytes:
    """A valid grayscale PNG of ``side``x``side`` black pixels (about 0.9 MB for 30000), or its header with
    a truncated IDAT. The zlib stream repeats one compressed 16 MiB block of zeros (full flushes reset the
    compressor, so every block compresses to the same bytes) and ends with the Adler-32 of all the zeros."""
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
    head = b"\x89PNG\r\n\x1a\n" + ihdr
    if truncated:
        return head + png_chunk(b"IDAT", zlib.compress(bytes(4096))[:-4])
    raw = side * (side + 1)  # a filter byte and ``side`` gray bytes per row, all zero
    block = 1 << 24
    full, rest = divmod(raw, block)
    comp = zlib.compressobj(9)
    zeros = bytes(block)
    first = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    again = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = comp.compress(zeros[:rest]) + comp.flush()
    adler = struct.pack(">I", ((raw % 65521) << 16) | 1)
    stream = first + again * (full - 1) + tail[:-4] + adler if full else zlib.compress(bytes(raw), 9)
    return head + png_chunk(b"IDAT", stream) + png_chunk(b"IEND", b"")


def encoded(ext: str, width: int = 60, height: int = 50) -> bytes:
    image = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def jpeg_with_size(width: int, height: int, truncate: int | None = None) -> bytes:
    """A real JPEG whose SOF0 is rewritten to declare ``width``x``height`` (optionally cut after the SOF)."""
    data = bytearray(encoded(".jpg"))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data[:sof + 19] if truncate else data)


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {"png": png_bomb(), "png-truncated": png_bomb(truncated=True),
            "jpeg": jpeg_with_size(BOMB_SIDE, BOMB_SIDE), "jpeg-truncated": jpeg_with_size(BOMB_SIDE, BOMB_SIDE, 1)}


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".webp", ".gif"])
@pytest.mark.parametrize("size", [(60, 50), (1, 1), (113, 7)])
def test_header_size_matches_what_opencv_decodes(ext, size):
    data = encoded(ext, *size)
    width, height, fmt = image_size_from_header(data)
    assert (width, height) == size
    assert decode_image(data, "x.bin", "image 0").shape == (size[1], size[0], 3)


def test_lossless_webp_and_top_down_bmp():
    data = bytearray(encoded(".bmp", 30, 20))
    struct.pack_into("<i", data, 22, -20)  # rows stored top-down
    assert image_size_from_header(bytes(data))[:2] == (30, 20)
    ok, webp = cv2.imencode(".webp", np.zeros((20, 30, 3), np.uint8), [cv2.IMWRITE_WEBP_QUALITY, 101])
    assert image_size_from_header(webp.tobytes()) == (30, 20, "WebP")


def test_jpeg_markers_are_walked_past_fill_bytes_and_app_segments():
    data = encoded(".jpg", 40, 30)
    app = b"\xff\xff\xff\xe1" + struct.pack(">H", 2 + 5000) + bytes(5000) + b"\xff\xfe\x00\x04ab"
    assert image_size_from_header(data[:2] + app + data[2:])[:2] == (40, 30)


@pytest.mark.parametrize("data", [b"", b"\xff\xd8\xff", b"\xff\xd8\xffnot a jpeg", b"GIF89a", b"BM",
                                  b"RIFF\0\0\0\0WEBP", b"\x89PNG\r\n\x1a\n", b"II*\0 a tiff", b"P6 2 2 255"])
def test_unrecognised_or_truncated_headers_are_refused(data):
    with pytest.raises(UserError, match=r"^x\.bin: image 3: cannot be decoded"):
        decode_image(data, "x.bin", "image 3")


def test_the_limit_is_overridable(monkeypatch):
    data = encoded(".png", 60, 50)
    with pytest.raises(ImageRefused, match="declares 60x50 = 3000 pixels in its PNG header, above the limit of"):
        check_image(data, max_pixels=2999)
    monkeypatch.setenv("ARCFACE_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(ImageRefused, match="above the limit of 100 "):
        check_image(data)
    monkeypatch.setenv("ARCFACE_MAX_IMAGE_PIXELS", "-3")
    with pytest.raises(UserError, match="ARCFACE_MAX_IMAGE_PIXELS"):
        check_image(data)
    monkeypatch.delenv("ARCFACE_MAX_IMAGE_PIXELS")
    assert check_image(png_bomb(64), max_pixels=64 * 64)[:2] == (64, 64)


def test_png_bomb_is_a_valid_png():
    small = png_bomb(300)  # the same construction, small enough to decode
    assert cv2.imdecode(np.frombuffer(small, np.uint8), cv2.IMREAD_GRAYSCALE).shape == (300, 300)


@pytest.mark.parametrize("kind", ["png", "png-truncated", "jpeg", "jpeg-truncated"])
def test_bombs_are_refused_in_a_bin_pack(bombs, kind, tmp_path):
    from converters.binfile import read_bin
    from eval.synthetic import make_pack, write_pack

    pack = make_pack(3, seed=1, fmt="bytes")
    pack.bins[4] = bombs[kind]
    path = write_pack(tmp_path / "bomb.bin", pack)
    start = time.perf_counter()
    read = read_bin(path)
    read.decode(3)
    with pytest.raises(UserError) as err:
        read.decode(4)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert f"image 4: declares {BOMB_SIDE}x{BOMB_SIDE} = {BOMB_SIDE ** 2} pixels" in message
    assert f"above the limit of {DEFAULT_MAX_PIXELS}" in message
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize("kind", ["png", "jpeg-truncated"])
def test_bombs_are_refused_in_a_recordio_pack(bombs, kind, tmp_path):
    from train.data.datasets import RecordDataset
    from train.data.layout import write_pack
    from train.data.pack_check import verify_pack

    good = encoded(".jpg", 112, 112)
    write_pack(tmp_path, [0, 1, 2], [good, bombs[kind], good], (112, 112))
    start = time.perf_counter()
    dataset = RecordDataset(tmp_path)
    dataset[0]
    with pytest.raises(UserError) as err:
        dataset[1]
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'train.rec'}: record key 2: declares {BOMB_SIDE}x{BOMB_SIDE}")
    problems = verify_pack(tmp_path, decode=True, progress=False).problems
    assert any("record key 2 at offset" in p and f"image declares {BOMB_SIDE}x{BOMB_SIDE}" in p for p in problems)
    assert time.perf_counter() - start < 2


def test_bomb_cli_is_fast_and_small(tmp_path):
    """In a fresh process: the PNG bomb is refused in one line, quickly, and the peak memory does not grow
    (decoding would need 900 MB as grayscale, 2.7 GB as BGR)."""
    script = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_images import png_bomb
        from converters.images import decode_image
        from converters.errors import UserError
        data = png_bomb()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            decode_image(data, "pack.bin", "image 7")
        except UserError as err:
            print(err)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    message, grown_mb = done.stdout.strip().splitlines()
    assert message.startswith("pack.bin: image 7: declares 30000x30000")
    assert int(grown_mb) < 50  # the peak resident memory did not grow while the bomb was refused
    assert time.perf_counter() - start < 20


def test_codec_messages_join_the_one_error_line(tmp_path):
    """libpng prints 'libpng error: ...' on stderr whatever OpenCV's log level; it becomes part of the one
    error line instead of a second line (checked in a fresh process, on its real stderr)."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_images import png_bomb
        from converters.images import decode_image
        from converters.errors import UserError
        data = png_bomb(20, truncated=True)
        try:
            decode_image(data, "pack.bin", "image 2")
        except UserError as err:
            print(err)
        print(decode_image(png_bomb(20), "pack.bin", "image 3").shape)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    error, shape = done.stdout.strip().splitlines()
    assert error.startswith("pack.bin: image 2: cannot be decoded (libpng error: ")
    assert shape == "(20, 20, 3)"
