"""Tests for ngp_cli.images: reading every supported format, error reporting, tiled writing, dtype scaling, colormap."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import OpenEXR
import pytest
import tifffile
from PIL import Image

from ngp_cli.errors import DataError, OutputError
from ngp_cli.images import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_SUFFIXES,
    ImageWriter,
    colormap,
    from_float,
    read_image,
    to_float,
    value_scale,
    write_image,
)

SHARED_DATA = Path(os.environ.get("NGP_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _rand(rng, shape, dtype):
    dt = np.dtype(dtype)
    if dt.kind == "u":
        return rng.integers(0, np.iinfo(dt).max, size=shape, endpoint=True, dtype=dt)
    return (rng.standard_normal(shape) * 3).astype(dt)  # HDR-ish floats, negatives included


def _smooth(h, w, c, rng):
    """Smooth uint8 content with mild noise: JPEG reproduces it closely."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    chans = [127 + 100 * np.sin(xx / (9 + 3 * k) + yy / (13 + k)) for k in range(c)]
    img = np.stack(chans, axis=-1) + rng.normal(0, 2, (h, w, c))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _exr_write(path, channels: dict) -> None:
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    OpenEXR.File(header, {k: np.ascontiguousarray(v) for k, v in channels.items()}).write(str(path))


# ---- reference PNG encoder (pure Python, independent of the module under test) ------------------------------------


def _ref_filter(row: bytes, prev: bytes, bpp: int, ftype: int) -> bytes:
    out = bytearray(len(row))
    for i, x in enumerate(row):
        a = row[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        if ftype == 0:
            p = 0
        elif ftype == 1:
            p = a
        elif ftype == 2:
            p = b
        elif ftype == 3:
            p = (a + b) // 2
        else:
            pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
            p = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
        out[i] = (x - p) % 256
    return bytes(out)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _ref_png16(img: np.ndarray, rng, interlace=False, filters=None, trns: bytes | None = None) -> bytes:
    """16-bit PNG bytes with random per-row filters (all five types), optionally Adam7-interlaced."""
    h, w, c = img.shape
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    bpp = 2 * c
    passes = [(0, 0, 1, 1)]
    if interlace:
        passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = bytearray()
    for x0, y0, dx, dy in passes:
        sub = img[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        prev = bytes(sub.shape[1] * bpp)
        for r in range(sub.shape[0]):
            row = sub[r].astype(">u2").tobytes()
            ftype = int(rng.integers(0, 5)) if filters is None else filters
            raw += bytes([ftype]) + _ref_filter(row, prev, bpp, ftype % 5)
            prev = row
    comp = zlib.compress(bytes(raw))
    half = len(comp) // 2  # two IDAT chunks, to exercise concatenation
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, int(interlace)))
    if trns is not None:
        out += _chunk(b"tRNS", trns)
    return out + _chunk(b"IDAT", comp[:half]) + _chunk(b"IDAT", comp[half:]) + _chunk(b"IEND", b"")


# ---- PNG -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_8bit_written_by_pillow(tmp_path, rng, channels):
    img = _rand(rng, (23, 31, channels), np.uint8)
    path = tmp_path / "a.png"
    iio.imwrite(path, img[..., 0] if channels == 1 else img)
    out = read_image(path)
    assert out.shape == (23, 31, channels) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, img)


def test_png_16bit_gray_written_by_pillow(tmp_path, rng):
    img = _rand(rng, (19, 27), np.uint16)
    iio.imwrite(tmp_path / "g16.png", img)
    out = read_image(tmp_path / "g16.png")
    assert out.shape == (19, 27, 1) and out.dtype == np.uint16
    np.testing.assert_array_equal(out[..., 0], img)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("interlace", [False, True], ids=["plain", "adam7"])
def test_png_16bit_reference_encoder(tmp_path, rng, channels, interlace):
    img = _rand(rng, (13, 17, channels), np.uint16)
    img[3:6, 2:9] = img[2, 2]  # flat patches make the Avg/Paeth predictors take every branch
    path = tmp_path / "ref16.png"
    path.write_bytes(_ref_png16(img, rng, interlace=interlace))
    out = read_image(path)
    assert out.dtype == np.uint16 and out.shape == img.shape
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("ftype", [0, 1, 2, 3, 4])
def test_png_16bit_each_filter_type(tmp_path, rng, ftype):
    img = _rand(rng, (9, 1 if ftype == 1 else 11, 3), np.uint16)  # width 1: degenerate left neighbours
    path = tmp_path / "f.png"
    path.write_bytes(_ref_png16(img, rng, filters=ftype))
    np.testing.assert_array_equal(read_image(path), img)


def test_png_16bit_transparency_key_becomes_alpha(tmp_path, rng):
    img = _rand(rng, (8, 9, 3), np.uint16)
    img[0, 0] = img[4, 5] = (1, 2, 3)
    path = tmp_path / "t.png"
    path.write_bytes(_ref_png16(img, rng, trns=struct.pack(">HHH", 1, 2, 3)))
    out = read_image(path)
    assert out.shape == (8, 9, 4)
    np.testing.assert_array_equal(out[..., :3], img)
    expected_alpha = np.where((img == (1, 2, 3)).all(-1), 0, 65535)
    np.testing.assert_array_equal(out[..., 3], expected_alpha)


def test_png_palette_comes_back_as_rgb_and_rgba(tmp_path, rng):
    rgb = _rand(rng, (20, 24, 3), np.uint8)
    pal = Image.fromarray(rgb).quantize(colors=12)
    pal.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert out.shape == (20, 24, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(pal.convert("RGB")))

    pal.save(tmp_path / "pt.png", transparency=3)
    out = read_image(tmp_path / "pt.png")
    assert out.shape == (20, 24, 4)
    np.testing.assert_array_equal(out[..., 3], np.where(np.asarray(pal) == 3, 0, 255))
    np.testing.assert_array_equal(out[..., :3], np.asarray(pal.convert("RGB")))


def test_png_low_bit_depth_gray_is_scaled(tmp_path):
    im = Image.new("L", (4, 1))
    im.putdata([0, 85, 170, 255])
    im.save(tmp_path / "g2.png", bits=2)
    np.testing.assert_array_equal(read_image(tmp_path / "g2.png")[0, :, 0], [0, 85, 170, 255])


def test_suffix_is_only_a_gate_content_decides(tmp_path, rng):
    img = _rand(rng, (6, 7, 3), np.uint8)
    iio.imwrite(tmp_path / "x.png", img)
    os.replace(tmp_path / "x.png", tmp_path / "x.tif")  # a PNG that claims to be a TIFF still reads
    np.testing.assert_array_equal(read_image(tmp_path / "x.tif"), img)


# ---- JPEG ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("suffix", [".jpg", ".jpeg"])
def test_jpeg(tmp_path, rng, channels, suffix):
    img = _smooth(40, 56, channels, rng)
    path = tmp_path / f"a{suffix}"
    iio.imwrite(path, img[..., 0] if channels == 1 else img, quality=95)
    out = read_image(path)
    assert out.shape == (40, 56, channels) and out.dtype == np.uint8
    err = np.abs(out.astype(np.int16) - img)
    assert err.mean() < 3.0 and err.max() < 40  # lossy


# ---- TIFF ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float16, np.float32])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_tiff_uncompressed_is_memmapped_and_exact(tmp_path, rng, dtype, channels):
    img = _rand(rng, (21, 18, channels), dtype)
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, img[..., 0] if channels == 1 else img, photometric="minisblack" if channels == 1 else "rgb")
    out = read_image(path)
    assert isinstance(out, np.memmap)
    assert not out.flags.writeable
    assert out.shape == img.shape and out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, img)


def test_tiff_compressed_reads_normally(tmp_path, rng):
    img = _rand(rng, (16, 20, 3), np.uint16)
    tifffile.imwrite(tmp_path / "z.tiff", img, photometric="rgb", compression="zlib")
    out = read_image(tmp_path / "z.tiff")
    assert not isinstance(out, np.memmap)
    np.testing.assert_array_equal(out, img)


def test_tiff_big_endian_planar_and_palette(tmp_path, rng):
    img = _rand(rng, (9, 10, 3), np.uint16)
    tifffile.imwrite(tmp_path / "be.tif", img, photometric="rgb", byteorder=">")
    out = read_image(tmp_path / "be.tif")
    assert out.dtype == np.uint16 and out.dtype.isnative
    np.testing.assert_array_equal(out, img)

    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(img, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif"), img)

    idx = rng.integers(0, 4, (5, 6), dtype=np.uint8)
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, :4] = np.array([[0, 255, 10, 20], [0, 0, 255, 30], [0, 0, 0, 255]]) * 257
    tifffile.imwrite(tmp_path / "pal.tif", idx, photometric="palette", colormap=cmap)
    out = read_image(tmp_path / "pal.tif")
    assert out.shape == (5, 6, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, (cmap[:, idx] // 257).transpose(1, 2, 0))


# ---- EXR -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("names", ["RGB", "RGBA", "Y", "YA"])
def test_exr_written_by_openexr(tmp_path, rng, dtype, names):
    img = _rand(rng, (14, 22, len(names)), dtype)
    img.flat[0] = 7.5  # HDR value survives
    path = tmp_path / "a.exr"
    _exr_write(path, {n: img[..., i] for i, n in enumerate(names)})
    out = read_image(path)
    assert out.dtype == np.dtype(dtype) and out.shape == img.shape
    np.testing.assert_array_equal(out, img)


def test_exr_channel_layouts(tmp_path, rng):
    plane = _rand(rng, (5, 6), np.float32)
    _exr_write(tmp_path / "z.exr", {"Z": plane})  # lone channel of any name -> gray
    np.testing.assert_array_equal(read_image(tmp_path / "z.exr")[..., 0], plane)
    _exr_write(tmp_path / "layer.exr", {"diffuse.R": plane, "diffuse.G": plane * 2, "diffuse.B": plane * 3})
    np.testing.assert_array_equal(read_image(tmp_path / "layer.exr"), np.stack([plane, plane * 2, plane * 3], -1))
    _exr_write(tmp_path / "mixed.exr", {"R": plane, "G": plane, "B": plane.astype(np.float16)})
    assert read_image(tmp_path / "mixed.exr").dtype == np.float32
    _exr_write(tmp_path / "uv.exr", {"U": plane, "V": plane})
    with pytest.raises(DataError, match="channel layout"):
        read_image(tmp_path / "uv.exr")


# ---- bad inputs ----------------------------------------------------------------------------------------------------


def _png_bytes(rng, shape=(40, 50, 3)):
    bio = io.BytesIO()
    iio.imwrite(bio, _rand(rng, shape, np.uint8), extension=".png")
    return bio.getvalue()


def _bad_missing(tmp, rng):
    return tmp / "nope.png", "does not exist"


def _bad_directory(tmp, rng):
    (tmp / "dir.png").mkdir()
    return tmp / "dir.png", "is a directory"


def _bad_empty(tmp, rng):
    (tmp / "empty.png").write_bytes(b"")
    return tmp / "empty.png", "empty"


def _bad_truncated_png(tmp, rng):
    data = _png_bytes(rng)
    (tmp / "trunc.png").write_bytes(data[: len(data) // 2])
    return tmp / "trunc.png", "cannot decode"


def _bad_truncated_png16(tmp, rng):
    data = _ref_png16(_rand(rng, (10, 12, 3), np.uint16), rng)
    (tmp / "trunc16.png").write_bytes(data[: len(data) // 2])
    return tmp / "trunc16.png", "truncated"


def _bad_png_filter_type(tmp, rng):
    (tmp / "filt.png").write_bytes(_ref_png16(_rand(rng, (3, 4, 1), np.uint16), rng, filters=7))
    return tmp / "filt.png", "filter type"


def _bad_garbage_png(tmp, rng):
    (tmp / "garbage.png").write_bytes(bytes(rng.integers(0, 256, 500, dtype=np.uint8)))
    return tmp / "garbage.png", "cannot decode"


def _bad_zero_size_png(tmp, rng):
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 5, 8, 2, 0, 0, 0))
    (tmp / "zero.png").write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr + _chunk(b"IEND", b""))
    return tmp / "zero.png", "zero size"


def _bad_bmp(tmp, rng):
    Image.fromarray(_rand(rng, (4, 4, 3), np.uint8)).save(tmp / "a.bmp")
    return tmp / "a.bmp", "unsupported image format '.bmp'"


def _bad_truncated_jpeg(tmp, rng):
    iio.imwrite(tmp / "t.jpg", _smooth(64, 64, 3, rng))
    data = (tmp / "t.jpg").read_bytes()
    (tmp / "t.jpg").write_bytes(data[: len(data) // 2])
    return tmp / "t.jpg", "cannot decode"


def _bad_truncated_tiff(tmp, rng):
    tifffile.imwrite(tmp / "t.tif", _rand(rng, (32, 32, 3), np.uint8), photometric="rgb")
    data = (tmp / "t.tif").read_bytes()
    (tmp / "t.tif").write_bytes(data[: len(data) // 2])
    return tmp / "t.tif", "truncated"


def _bad_nan_tiff(tmp, rng):
    img = _rand(rng, (8, 8, 3), np.float32)
    img[7, 7, 2] = np.inf
    tifffile.imwrite(tmp / "inf.tif", img, photometric="rgb")
    return tmp / "inf.tif", "NaN or infinite"


def _bad_nan_exr(tmp, rng):
    img = _rand(rng, (6, 7, 3), np.float32)
    img[2, 3, 1] = np.nan
    _exr_write(tmp / "nan.exr", {"R": img[..., 0], "G": img[..., 1], "B": img[..., 2]})
    return tmp / "nan.exr", "NaN or infinite"


def _bad_truncated_exr(tmp, rng):
    img = _rand(rng, (64, 64, 4), np.float32)
    _exr_write(tmp / "t.exr", {"RGBA": img})
    data = (tmp / "t.exr").read_bytes()
    (tmp / "t.exr").write_bytes(data[: len(data) // 2])
    return tmp / "t.exr", "cannot decode"


BAD_INPUTS = [
    _bad_missing,
    _bad_directory,
    _bad_empty,
    _bad_truncated_png,
    _bad_truncated_png16,
    _bad_png_filter_type,
    _bad_garbage_png,
    _bad_zero_size_png,
    _bad_bmp,
    _bad_truncated_jpeg,
    _bad_truncated_tiff,
    _bad_nan_tiff,
    _bad_nan_exr,
    _bad_truncated_exr,
]


@pytest.mark.parametrize("make", BAD_INPUTS, ids=[f.__name__[5:] for f in BAD_INPUTS])
def test_bad_inputs_raise_one_line_data_error(tmp_path, rng, capfd, make):
    path, fragment = make(tmp_path, rng)
    capfd.readouterr()
    with pytest.raises(DataError) as info:
        read_image(path)
    msg = str(info.value)
    assert msg.startswith(str(path) + ": ")
    assert fragment in msg
    assert len(msg.splitlines()) == 1
    assert info.value.exit_code == 4
    out, err = capfd.readouterr()
    assert out == "" and err == "", "decoders must not print around the one-line error"


def test_supported_suffixes_constant():
    assert SUPPORTED_SUFFIXES == (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr")


# ---- size limits ---------------------------------------------------------------------------------------------------


def _size_case(tmp, rng, fmt) -> Path:
    """A 6x5 image (30 pixels) in format ``fmt``."""
    if fmt == "png8":
        Image.fromarray(_rand(rng, (5, 6, 3), np.uint8)).save(tmp / "a.png")
        return tmp / "a.png"
    if fmt == "png16":
        (tmp / "b.png").write_bytes(_ref_png16(_rand(rng, (5, 6, 3), np.uint16), rng))
        return tmp / "b.png"
    if fmt == "jpeg":
        iio.imwrite(tmp / "c.jpg", _smooth(5, 6, 3, rng))
        return tmp / "c.jpg"
    if fmt == "tiff":
        tifffile.imwrite(tmp / "d.tif", _rand(rng, (5, 6), np.uint16))
        return tmp / "d.tif"
    _exr_write(tmp / "e.exr", {"Y": _rand(rng, (5, 6), np.float32)})
    return tmp / "e.exr"


@pytest.mark.parametrize("fmt", ["png8", "png16", "jpeg", "tiff", "exr"])
def test_max_pixels_refuses_a_larger_declared_size_in_every_format(tmp_path, rng, fmt):
    path = _size_case(tmp_path, rng, fmt)
    with pytest.raises(DataError) as info:
        read_image(path, max_pixels=29)
    assert str(info.value) == (
        f"{path}: image is 6x5 (30 pixels), more than the limit of 29 pixels (--max-pixels N raises it, 0 = no limit)"
    )
    assert read_image(path, max_pixels=30).shape[:2] == (5, 6)  # the limit itself is accepted
    assert read_image(path, max_pixels=0).shape[:2] == (5, 6)  # 0 = no limit


@pytest.mark.parametrize("fmt", ["png8", "png16", "jpeg", "tiff", "exr"])
def test_the_size_is_checked_before_any_decoding(tmp_path, rng, fmt, monkeypatch):
    """The decoders are never reached for an image over the limit (so a bomb allocates nothing)."""
    from ngp_cli.images import read

    path = _size_case(tmp_path, rng, fmt)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoder called for an image over the limit")

    monkeypatch.setattr(read, "_read_pillow", no_decoding)
    monkeypatch.setattr(read, "_decode_png16", no_decoding)
    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", no_decoding)
    monkeypatch.setattr(np, "memmap", no_decoding)
    real_exr = OpenEXR.File

    def exr_header_only(name, *args, header_only=False, **kwargs):
        if not header_only:
            raise AssertionError("EXR pixels read for an image over the limit")
        return real_exr(name, *args, header_only=True, **kwargs)

    monkeypatch.setattr(OpenEXR, "File", exr_header_only)
    with pytest.raises(DataError, match="more than the limit of 10 pixels"):
        read_image(path, max_pixels=10)


def test_pillow_guard_follows_the_limit(tmp_path, rng):
    path = _size_case(tmp_path, rng, "png8")
    read_image(path)
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS
    read_image(path, max_pixels=1000)
    assert Image.MAX_IMAGE_PIXELS == 1000
    read_image(path, max_pixels=0)
    assert Image.MAX_IMAGE_PIXELS is None
    read_image(path)  # back to the default for whoever reads next


@pytest.mark.parametrize("bad", [-1, 2.5, True, "100"])
def test_max_pixels_must_be_a_non_negative_integer(tmp_path, rng, bad):
    with pytest.raises(ValueError, match="max_pixels must be an integer >= 0"):
        read_image(_size_case(tmp_path, rng, "png8"), max_pixels=bad)


def test_default_limit_is_the_fit_image_default():
    from ngp_cli.tasks.gigapixel import ImageSection

    assert DEFAULT_MAX_PIXELS == 1 << 28 == ImageSection().max_pixels


def test_png16_inflation_stops_at_the_declared_size(tmp_path, monkeypatch):
    """A 4x4 gray 16-bit PNG needs 4 * (1 + 8) = 36 bytes; its IDAT inflates to 8 MiB: the decoder stops after at most
    37 bytes of output and refuses the file."""
    from ngp_cli.images import png

    produced = []
    real = zlib.decompressobj

    class Counting:
        def __init__(self):
            self._d = real()

        def decompress(self, data, max_length=0):
            out = self._d.decompress(data, max_length)
            produced.append(len(out))
            return out

        def __getattr__(self, name):
            return getattr(self._d, name)

    monkeypatch.setattr(png.zlib, "decompressobj", Counting)
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 16, 0, 0, 0, 0))
    bomb = zlib.compress(b"\0" * (8 << 20), 9)
    path = tmp_path / "inflate.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr + _chunk(b"IDAT", bomb) + _chunk(b"IEND", b""))
    with pytest.raises(DataError, match="inflates to more than the 36 bytes its declared size needs"):
        read_image(path)
    assert 0 < sum(produced) <= 37


# ---- writing -------------------------------------------------------------------------------------------------------

WRITE_CASES = [
    (".png", np.uint8, 1),
    (".png", np.uint8, 2),
    (".png", np.uint16, 3),
    (".png", np.uint16, 4),
    (".tif", np.uint8, 3),
    (".tiff", np.uint16, 2),
    (".tif", np.float16, 4),
    (".tif", np.float32, 1),
    (".exr", np.float16, 3),
    (".exr", np.float32, 4),
    (".exr", np.float32, 1),
    (".exr", np.float16, 2),
]


@pytest.mark.parametrize(("suffix", "dtype", "channels"), WRITE_CASES)
def test_writer_tiles_equal_whole_write_and_round_trip(tmp_path, rng, suffix, dtype, channels):
    img = _rand(rng, (37, 29, channels), dtype)
    write_image(tmp_path / f"whole{suffix}", img)
    with ImageWriter(tmp_path / f"tiles{suffix}", 37, 29, channels, dtype) as out:
        for r0 in (30, 0, 10, 20):  # any order
            out[r0 : min(r0 + 10, 37)] = img[r0 : r0 + 10]
    whole, tiles = read_image(tmp_path / f"whole{suffix}"), read_image(tmp_path / f"tiles{suffix}")
    assert whole.dtype == np.dtype(dtype) and whole.shape == img.shape
    np.testing.assert_array_equal(whole, img)
    np.testing.assert_array_equal(tiles, img)
    if suffix == ".png":
        assert (tmp_path / f"whole{suffix}").read_bytes() == (tmp_path / f"tiles{suffix}").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"whole{suffix}", f"tiles{suffix}"])


@pytest.mark.parametrize(
    ("dtype", "channels"), [(np.uint8, 1), (np.uint8, 2), (np.uint8, 3), (np.uint8, 4), (np.uint16, 1)]
)
def test_written_png_decodes_with_pillow(tmp_path, rng, dtype, channels):
    # Independent check of the PNG encoder (filters, chunks, CRCs): Pillow must read it back exactly.
    yy, xx = np.mgrid[0:33, 0:41]
    img = _rand(rng, (33, 41, channels), dtype)
    img[:16] = ((xx[:16, :, None] * 5 + yy[:16, :, None] * 3) % 256).astype(dtype)  # smooth part: varied filters
    write_image(tmp_path / "p.png", img)
    back = iio.imread(tmp_path / "p.png")
    np.testing.assert_array_equal(back.reshape(img.shape), img)


def test_written_png_uses_effective_filters(tmp_path, rng):
    # Adaptive row filters must beat zlib on the unfiltered rows for smooth photographic content.
    yy, xx = np.mgrid[0:128, 0:128]
    gray = np.sin(xx / 7.0) * 40 + np.cos(yy / 11.0) * 40 + 128 + rng.normal(0, 1, xx.shape)
    img = np.repeat(np.clip(np.rint(gray), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    write_image(tmp_path / "s.png", img)
    unfiltered = zlib.compress(np.concatenate([np.zeros((128, 1), np.uint8), img.reshape(128, -1)], 1).tobytes(), 6)
    assert (tmp_path / "s.png").stat().st_size < 0.85 * len(unfiltered)


def test_unwritten_rows_are_zero(tmp_path, rng):
    with ImageWriter(tmp_path / "z.png", 6, 5, 3, np.uint8) as out:
        out[2:4] = np.full((2, 5, 3), 9, np.uint8)
    back = read_image(tmp_path / "z.png")
    assert back[2:4].min() == 9 and back[:2].max() == 0 and back[4:].max() == 0


@pytest.mark.parametrize("suffix", [".png", ".tif", ".exr"])
def test_writer_exception_leaves_no_file_and_keeps_existing(tmp_path, rng, suffix):
    dtype = np.float32 if suffix == ".exr" else np.uint8
    fresh = tmp_path / f"fresh{suffix}"
    with pytest.raises(RuntimeError, match="boom"):
        with ImageWriter(fresh, 8, 8, 3, dtype) as out:
            out[0:4] = _rand(rng, (4, 8, 3), dtype)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []

    existing = tmp_path / f"existing{suffix}"
    existing.write_bytes(b"previous content")
    with pytest.raises(KeyboardInterrupt):
        with ImageWriter(existing, 8, 8, 3, dtype) as out:
            raise KeyboardInterrupt
    assert existing.read_bytes() == b"previous content"
    assert list(tmp_path.iterdir()) == [existing]


def test_writer_output_errors(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    cases = [
        (tmp_path / "missing" / "a.png", np.uint8, "does not exist"),
        (tmp_path / "file" / "a.png", np.uint8, "does not exist"),
        (tmp_path, np.uint8, "is a directory"),
        (tmp_path / "a.bmp", np.uint8, "unsupported output format '.bmp'"),
        (tmp_path / "a.jpg", np.uint8, "unsupported output format '.jpg'"),
        (tmp_path / "a.png", np.float32, "cannot write float32"),
        (tmp_path / "a.exr", np.uint8, "cannot write uint8"),
    ]
    for path, dtype, fragment in cases:
        with pytest.raises(OutputError) as info:
            ImageWriter(path, 4, 4, 3, dtype)
        msg = str(info.value)
        assert msg.startswith(str(path)) and fragment in msg and len(msg.splitlines()) == 1, msg
        assert info.value.exit_code == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_writer_unwritable_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="cannot write"):
            ImageWriter(locked / "a.png", 4, 4, 3, np.uint8)
    finally:
        locked.chmod(0o700)


def test_writer_rejects_bad_tiles(tmp_path):
    with ImageWriter(tmp_path / "a.tif", 4, 5, 3, np.uint8) as out:
        with pytest.raises(ValueError, match="shape"):
            out[0:2] = np.zeros((2, 5, 4), np.uint8)
        with pytest.raises(TypeError, match="dtype"):
            out[0:2] = np.zeros((2, 5, 3), np.float32)
        with pytest.raises(ValueError, match="step-1"):
            out[0:4:2] = np.zeros((2, 5, 3), np.uint8)
        out[3] = np.ones((1, 5, 3), np.uint8)  # an int selects one row
    assert read_image(tmp_path / "a.tif")[3].min() == 1


# ---- dtype scaling -------------------------------------------------------------------------------------------------


def test_value_scale():
    assert value_scale(np.uint8) == 255.0 and value_scale("uint16") == 65535.0
    assert value_scale(np.float16) == 1.0 and value_scale(np.float32) == 1.0
    with pytest.raises(ValueError):
        value_scale(np.int16)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_to_from_float_round_trip(dtype):
    full = np.arange(np.iinfo(dtype).max + 1, dtype=dtype)
    f = to_float(full)
    assert f.dtype == np.float32 and f.min() == 0.0 and f.max() == 1.0
    np.testing.assert_array_equal(from_float(f, dtype), full)


def test_from_float_clips_and_rounds():
    x = np.array([-0.5, 0.0, 0.6 / 255, 0.4 / 255, 1.0, 2.0, np.nan], np.float32)
    np.testing.assert_array_equal(from_float(x, np.uint8), [0, 0, 1, 0, 255, 255, 0])
    assert from_float(np.array([1e6], np.float32), np.float16)[0] == np.finfo(np.float16).max
    h = np.array([0.25, 3.0], np.float16)
    np.testing.assert_array_equal(from_float(to_float(h), np.float16), h)


def test_to_float_copies_read_only_input(tmp_path, rng):
    img = _rand(rng, (4, 4, 3), np.float32)
    tifffile.imwrite(tmp_path / "f.tif", img, photometric="rgb")
    mm = read_image(tmp_path / "f.tif")
    f = to_float(mm)
    f += 1  # must not touch the (read-only) memmap
    np.testing.assert_array_equal(mm, img)


# ---- colormap ------------------------------------------------------------------------------------------------------


def test_colormap_shape_dtype_and_monotonic_brightness():
    ramp = np.tile(np.linspace(0, 1, 256, dtype=np.float32), (3, 1))
    rgb = colormap(ramp, vmax=1.0)
    assert rgb.shape == (3, 256, 3) and rgb.dtype == np.uint8
    luma = rgb[0].astype(np.float64) @ [0.2126, 0.7152, 0.0722]
    assert np.all(np.diff(luma) >= -0.5), "brightness must not decrease"
    assert luma[0] < 10 and luma[-1] > 200
    np.testing.assert_array_equal(rgb[0], rgb[2])


def test_colormap_edge_cases():
    zeros = colormap(np.zeros((5, 6)))
    assert zeros.shape == (5, 6, 3) and zeros.max() < 10 and np.all(zeros == zeros[0, 0])
    vals = np.array([[0.0, 1.0, 100.0, np.nan, -3.0, np.inf]] * 200)
    rgb = colormap(vals)  # default vmax: robust 99th percentile
    assert rgb.shape == (200, 6, 3)
    assert np.array_equal(rgb[0, 3], rgb[0, 0]) and np.array_equal(rgb[0, 4], rgb[0, 0])  # NaN / negative -> dark
    assert np.array_equal(rgb[0, 5], rgb[0, 2])  # +inf -> brightest
    assert colormap(vals[..., None], vmax=1.0)[0, 1].sum() == colormap(vals, vmax=1.0)[0, 2].sum()
    with pytest.raises(ValueError):
        colormap(np.zeros((2, 2, 3)))
    with pytest.raises(ValueError):
        colormap(np.zeros((2, 2)), vmax=0.0)


# ---- real data (skipped when absent) -------------------------------------------------------------------------------


def test_real_albert_jpg():
    path = SHARED_DATA / "image" / "albert" / "albert.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    img = read_image(path)
    assert img.shape == (4333, 3250, 1) and img.dtype == np.uint8
    assert 20 < img.mean() < 235 and img.std() > 10


def test_real_albert_exr():
    path = SHARED_DATA / "image" / "albert" / "albert.exr"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    img = read_image(path)
    assert img.shape == (1024, 1024, 4) and img.dtype == np.float32
    assert 0.0 <= float(img[..., :3].min()) and float(img[..., :3].max()) <= 1.5
