"""Bad photos given to ``ngp fit-image`` (issue 13, items 3 and 7): decompression bombs in every format, corrupt and
truncated files, files that are not images, and bad ``--max-pixels`` values.

Each case is refused with exit 4 (data) or 2 (usage) in one stderr line, leaves the input's folder unchanged, and
creates no run directory: the photo is read and checked before the run exists.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from tests.bad_input.conftest import assert_refused, unchanged

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png(width: int, height: int, depth: int, colour: int, idat: bytes, extra: bytes = b"") -> bytes:
    """PNG bytes with this IHDR and one IDAT body (valid CRCs): the header may claim anything."""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    return PNG_SIGNATURE + ihdr + extra + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _small_png16() -> bytes:
    """A valid 3x2 16-bit RGB PNG."""
    rows = b"".join(b"\0" + bytes(range(3 * 6)) for _ in range(2))
    return _png(3, 2, 16, 2, zlib.compress(rows))


def _tiff_claiming(width: int, height: int) -> bytes:
    """A little-endian baseline TIFF whose tags claim a ``width`` x ``height`` 8-bit gray image, with 16 data bytes."""
    entries = [  # (tag, type, value): type 3 = SHORT, 4 = LONG
        (256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
        (273, 4, 0), (277, 3, 1), (278, 4, height), (279, 4, width * height),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = 8 + ifd_size
    out = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, typ, value in entries:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<H", value) + b"\0\0" if typ == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, typ, 1) + packed
    out += struct.pack("<I", 0) + bytes(16)
    return bytes(out)


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG with its frame header (SOF0) patched to claim ``width`` x ``height``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)  # length(2) precision(1) then height, width
    return bytes(data)


def _exr_claiming(width: int, height: int) -> bytes:
    """A real small EXR whose dataWindow attribute is patched to claim ``width`` x ``height``."""
    import tempfile

    import OpenEXR

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "small.exr"
        header = {"compression": OpenEXR.NO_COMPRESSION, "type": OpenEXR.scanlineimage}
        OpenEXR.File(header, {"Y": np.zeros((4, 4), np.float32)}).write(str(path))
        data = bytearray(path.read_bytes())
    at = data.index(b"dataWindow\0box2i\0") + len(b"dataWindow\0box2i\0") + 4  # then xMin, yMin, xMax, yMax
    data[at : at + 16] = struct.pack("<iiii", 0, 0, width - 1, height - 1)
    return bytes(data)


# Each entry: file name, contents (bytes, or a callable of tmp_path returning a Path), expected needle.
# The bombs claim 60000 x 60000 = 3.6 gigapixels in a few hundred bytes.
BAD_FILES = {
    "png8-bomb-header": ("bomb.png", lambda: _png(60000, 60000, 8, 2, zlib.compress(b"\0" * 64)), "60000x60000"),
    "png16-bomb-header": ("bomb16.png", lambda: _png(60000, 60000, 16, 6, zlib.compress(b"\0" * 64)), "60000x60000"),
    "png16-idat-inflates-past-declared-size": (
        "inflate16.png", lambda: _png(4, 4, 16, 0, zlib.compress(b"\0" * (8 << 20))), "inflates to more"),
    "png-truncated": ("trunc.png", lambda: _small_png16()[:40], "truncated"),
    "png-bad-crc": ("crc.png", lambda: _small_png16()[:-16] + b"\0\0\0\0" + _small_png16()[-12:], "CRC"),
    "png16-zlib-stream-cut-short": (
        "cut16.png", lambda: _png(3, 2, 16, 2, zlib.compress(b"\0" * 38)[:-6]), "truncated"),
    "png16-no-idat": (
        "noidat.png",
        lambda: PNG_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", 3, 2, 16, 2, 0, 0, 0)) + _chunk(b"IEND", b""),
        "no image data"),
    "png-zero-width": ("zero.png", lambda: _png(0, 5, 8, 2, zlib.compress(b"")), "zero size"),
    "jpeg-bomb-header": ("bomb.jpg", lambda: _jpeg_claiming(60000, 60000), "60000x60000"),
    "tiff-claims-huge-size": ("huge.tif", lambda: _tiff_claiming(60000, 60000), "60000x60000"),
    "exr-claims-huge-data-window": ("huge.exr", lambda: _exr_claiming(60000, 60000), "60000x60000"),
    "exr-garbage-after-magic": (
        "garbage.exr", lambda: b"\x76\x2f\x31\x01" + bytes(np.random.default_rng(0).integers(0, 256, 300, np.uint8)),
        "cannot decode"),
    "empty-file": ("empty.png", lambda: b"", "empty"),
    "text-named-png": ("notes.png", lambda: b"these are my holiday notes, not a photo\n" * 4, "signature"),
    "png-named-gif": ("photo.gif", _small_png16, "unsupported image format '.gif'"),
}


@pytest.mark.parametrize("case", list(BAD_FILES), ids=list(BAD_FILES))
def test_bad_photo_is_refused_before_a_run_exists(ngp, tmp_path, image_fast_args, case):
    name, make, needle = BAD_FILES[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    photo = inputs / name
    photo.write_bytes(make())
    runs = tmp_path / "runs"
    with unchanged(inputs):
        res = ngp("fit-image", photo, "--runs-dir", runs, "--steps", "1", *image_fast_args)
    line = assert_refused(res, 4, needle)
    assert line.startswith(f"ngp: data error: {photo}") or str(photo) in line, line
    assert not runs.exists(), f"a run directory was created for a refused photo: {list(runs.rglob('*'))}"


def test_a_bomb_is_refused_quickly_and_without_allocating(ngp, tmp_path, image_fast_args):
    """The 16-bit bomb with a large limit still cannot allocate: its IDAT inflates to far less than declared."""
    photo = tmp_path / "bomb16.png"
    photo.write_bytes(BAD_FILES["png16-bomb-header"][1]())
    res = ngp("fit-image", photo, "--runs-dir", tmp_path / "runs", "--max-pixels", "0", *image_fast_args)
    assert_refused(res, 4, "too short")


def test_a_photo_over_an_explicit_max_pixels_is_refused(ngp, photo, tmp_path, image_fast_args):
    runs = tmp_path / "runs"
    with unchanged(photo.parent):
        res = ngp("fit-image", photo, "--max-pixels", "1000", "--runs-dir", runs, *image_fast_args)
    assert_refused(res, 4, "64x48 (3,072 pixels), more than the limit of 1,000")
    assert not runs.exists()


@pytest.mark.parametrize("value", ["-1", "many"], ids=["negative", "not-a-number"])
def test_bad_max_pixels_is_a_usage_error(ngp, photo, tmp_path, image_fast_args, value):
    runs = tmp_path / "runs"
    with unchanged(photo.parent):
        res = ngp("fit-image", photo, "--max-pixels", value, "--runs-dir", runs, *image_fast_args)
    assert_refused(res, 2, "--max-pixels")
    assert not runs.exists()


def test_a_directory_as_the_photo(ngp, tmp_path, image_fast_args):
    folder = tmp_path / "photos.png"
    folder.mkdir()
    (folder / "a.png").write_bytes(_small_png16())
    runs = tmp_path / "runs"
    with unchanged(folder):
        res = ngp("fit-image", folder, "--runs-dir", runs, *image_fast_args)
    assert_refused(res, 4, "is a directory")
    assert not runs.exists()


def test_a_missing_photo(ngp, tmp_path, image_fast_args):
    runs = tmp_path / "runs"
    res = ngp("fit-image", tmp_path / "nowhere" / "photo.png", "--runs-dir", runs, *image_fast_args)
    assert_refused(res, 4, "does not exist")
    assert not runs.exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads a mode-000 file anyway")
def test_an_unreadable_photo(ngp, tmp_path, image_fast_args):
    photo = tmp_path / "secret.png"
    photo.write_bytes(_small_png16())
    photo.chmod(0)
    runs = tmp_path / "runs"
    try:
        res = ngp("fit-image", photo, "--runs-dir", runs, *image_fast_args)
    finally:
        photo.chmod(0o600)
    assert_refused(res, 4, "permission denied")
    assert not runs.exists()


def test_resume_refuses_a_photo_over_a_lowered_limit_and_keeps_the_run(ngp, image_run, image_fast_args):
    """The limit is a recorded config key (image.max_pixels): lowered on --resume it applies before anything is
    written to the run."""
    with unchanged(image_run):
        res = ngp("fit-image", "--resume", image_run, "--max-pixels", "100", "--steps", "20")
    assert_refused(res, 4, "more than the limit of 100 pixels")
