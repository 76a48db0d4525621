"""Image input/output for ngp: reading, tile-by-tile writing, dtype scaling and heat-map colouring.

Arrays are always ``(H, W, C)`` with C = 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA), in the file's *stored* dtype
(``uint8``, ``uint16``, ``float16`` or ``float32``). Nothing is converted to float32 as a whole: a 1-gigapixel 8-bit RGB
image stays ~3 GB; callers convert small crops/tiles with :func:`to_float`.

Formats (chosen by the file's signature bytes; the suffix must still be one of :data:`SUPPORTED_SUFFIXES`):

* PNG (``.png``): 1/2/4/8-bit gray, gray+alpha, RGB, RGBA and palette images are decoded by Pillow (through imageio);
  palette images come back as RGB, or RGBA when they carry transparency (tRNS). 16-bit PNGs are decoded by a small
  numpy decoder in this module because Pillow silently truncates 16-bit colour PNGs to 8 bits (pypng would do, but
  decodes ~5x slower in pure Python); it inflates at most the byte count the header's size implies, so image data
  that inflates to more is refused. Gamma/colour-profile chunks are ignored (values are returned as stored).
* JPEG (``.jpg``, ``.jpeg``): Pillow through imageio; gray stays 1 channel, CMYK/YCbCr are converted to RGB.
  EXIF orientation is *not* applied (like instant-ngp's stb_image loader): pixels come back as stored.
* TIFF (``.tif``, ``.tiff``): tifffile, first series at full resolution, first page of a stack. Uncompressed contiguous
  data in native byte order is returned as a read-only ``np.memmap`` (no load). Compressed TIFFs other than deflate
  need the optional ``imagecodecs`` package. Palette TIFFs are expanded to RGB, min-is-white is inverted, 1/2/4-bit
  gray is scaled to 0..255, float64 is narrowed to float32.
* OpenEXR (``.exr``): OpenEXR 3.x bindings (``OpenEXR.File``), first part. Channels are ordered R,G,B[,A] or Y[,A]
  (a single channel of any name is read as gray); other channels (Z, AOVs) are ignored. Half channels come back as
  float16, float channels as float32 (mixed: float32). HDR values (> 1, negative) are kept as they are.

Size limit: :func:`read_image` refuses an image whose *declared* width x height exceeds ``max_pixels`` (default
:data:`DEFAULT_MAX_PIXELS`, 2^28; 0 = no limit) before decoding anything: PNG from IHDR, JPEG from Pillow's lazy open,
TIFF from its first series' shape, EXR from its header's data window. A 200-byte file claiming 60000x60000 pixels is
thus refused instead of allocating gigabytes. Pillow's own decompression-bomb guard is set to the same limit.

Errors: every failure caused by the input file raises :class:`~ngp_cli.errors.DataError` (exit 4) and every failure to
write raises :class:`~ngp_cli.errors.OutputError` (exit 6), each with a one-line message that starts with the path.
Invalid arguments from code (wrong tile shape, dtype mismatch) raise ``ValueError``/``TypeError``.

Heavy libraries (imageio, Pillow, tifffile, OpenEXR) are imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import errno
import io
import math
import os
import stat
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError, OutputError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_SUFFIXES",
    "ImageWriter",
    "TempFileOutput",
    "colormap",
    "from_float",
    "read_image",
    "to_float",
    "value_scale",
    "write_image",
]

SUPPORTED_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr")

DEFAULT_MAX_PIXELS = 1 << 28
"""Largest width x height :func:`read_image` accepts by default (268,435,456 pixels: 16384 x 16384, ~800 MB as 8-bit
RGB, ~2 GB as 16-bit RGBA); ``ngp fit-image --max-pixels N`` raises it (0 = no limit)."""

_U8, _U16, _F16, _F32 = np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float16), np.dtype(np.float32)
_STORED_DTYPES = (_U8, _U16, _F16, _F32)
# Output formats and the dtypes each can store.
_WRITE_DTYPES = {
    ".png": (_U8, _U16),
    ".tif": _STORED_DTYPES,
    ".tiff": _STORED_DTYPES,
    ".exr": (_F16, _F32),
}
# Row chunks of this many elements bound the temporaries of whole-image passes (finite check, colormap, PNG encode).
_CHUNK_ELEMS = 1 << 22
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------------------------------
# dtype helpers
# --------------------------------------------------------------------------------------------------------------------


def value_scale(dtype) -> float:
    """Full-scale value of ``dtype``: 255.0 for uint8, 65535.0 for uint16, 1.0 for float16/float32/float64.

    Raises ``ValueError`` for any other dtype.
    """
    dt = np.dtype(dtype)
    if dt == _U8:
        return 255.0
    if dt == _U16:
        return 65535.0
    if dt.kind == "f":
        return 1.0
    raise ValueError(f"no value scale for dtype {dt} (expected uint8, uint16 or a float dtype)")


def to_float(array) -> np.ndarray:
    """Return ``array / value_scale(array.dtype)`` as a new float32 array (same shape).

    uint8 maps to [0, 1] in steps of 1/255, uint16 in steps of 1/65535; float input is only cast (HDR values kept).
    Meant for crops and tiles: it allocates 4 bytes per element. Always a copy, so it is safe to modify even when
    ``array`` is a read-only memmap.
    """
    a = np.asarray(array)
    scale = value_scale(a.dtype)
    out = a.astype(np.float32)  # astype copies
    if scale != 1.0:
        out /= np.float32(scale)
    return out


def from_float(array_f32, dtype) -> np.ndarray:
    """Inverse of :func:`to_float`: convert float values (nominally [0, 1]) to ``dtype``.

    Integer dtypes: values are scaled by 255 or 65535, clipped to the valid range and rounded to nearest; NaN becomes
    0. float16: values are clipped to +-65504 so they stay finite (NaN stays NaN). float32: plain cast.
    Returns a new array of the same shape. Raises ``ValueError`` for dtypes other than uint8/uint16/float16/float32.
    """
    dt = np.dtype(dtype)
    if dt not in _STORED_DTYPES:
        raise ValueError(f"cannot convert to dtype {dt} (expected uint8, uint16, float16 or float32)")
    a = np.asarray(array_f32, dtype=np.float32)
    if dt.kind == "u":
        scale = np.float32(value_scale(dt))
        v = np.nan_to_num(a * scale, nan=0.0, posinf=scale, neginf=0.0)
        np.clip(v, 0.0, scale, out=v)
        np.rint(v, out=v)
        return v.astype(dt)
    if dt == _F16:
        # Why clip: values beyond half's range would turn into inf, which read_image rejects.
        hmax = np.float32(np.finfo(np.float16).max)
        return np.clip(a, -hmax, hmax).astype(dt)
    return a.astype(dt)  # copy, like the other branches


# --------------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------------


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file into an ``(H, W, C)`` array in its stored dtype.

    ``max_pixels``: the largest declared width x height accepted (0 = no limit), checked from the file's header before
    any pixel is decoded or allocated.

    Returns: uint8, uint16, float16 or float32 array with C in 1..4 (gray, gray+alpha, RGB, RGBA). 2-D gray data gets a
    trailing channel axis as a view. Uncompressed contiguous TIFFs come back as a read-only ``np.memmap``; PNG and
    JPEG arrays are read-only too (no extra copy is made), so treat the result as read-only and copy what you modify.
    Float images may hold HDR values (> 1 or negative) but are checked to be finite (in row chunks, so a memmap is
    never loaded whole).

    Raises :class:`DataError` (one line, starting with the path) when the file does not exist, is a directory or not a
    regular file, is empty, has an unsupported suffix (see :data:`SUPPORTED_SUFFIXES`), cannot be decoded (truncated,
    corrupt, unsupported variant, compressed data inflating past the declared size), has zero width or height, declares
    more than ``max_pixels`` pixels, has an unsupported channel count or sample type, or contains NaN/inf.
    ``ValueError`` for a negative or non-integer ``max_pixels``. See the module docstring for per-format notes.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 0:
        raise ValueError(f"max_pixels must be an integer >= 0 (0 = no limit), got {max_pixels!r}")
    max_pixels = int(max_pixels)
    name = os.fsdecode(os.fspath(path))
    try:
        st = os.stat(name)
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"{name}: file does not exist") from None
    except OSError as e:
        raise DataError(f"{name}: cannot access file: {e.strerror or e}") from e
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{name}: is a directory, expected an image file")
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{name}: is not a regular file, expected an image file")
    if st.st_size == 0:
        raise DataError(f"{name}: file is empty (0 bytes)")
    suffix = Path(name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        shown = suffix or "(no suffix)"
        raise DataError(f"{name}: unsupported image format '{shown}' (supported: {', '.join(SUPPORTED_SUFFIXES)})")
    try:
        with open(name, "rb") as fh:
            head = fh.read(64)
    except OSError as e:
        raise DataError(f"{name}: cannot read file: {e.strerror or e}") from e

    kind = _sniff(head)
    if kind is None:
        raise DataError(
            f"{name}: cannot decode image (truncated or corrupt): unrecognised file signature "
            "(not a PNG, JPEG, TIFF or EXR file)"
        )
    try:
        if kind == "png":
            arr = _read_png(name, head, max_pixels)
        elif kind == "jpeg":
            _check_size(name, *_jpeg_size(name), max_pixels)
            arr = _read_pillow(name, max_pixels)
        elif kind == "tiff":
            arr = _read_tiff(name, st.st_size, max_pixels)
        else:
            arr = _read_exr(name, max_pixels)
    except DataError:
        raise
    except MemoryError as e:
        raise DataError(f"{name}: not enough memory to decode image") from e
    except Exception as e:  # any decoder failure is a property of the file: report it as a data error
        raise DataError(f"{name}: cannot decode image (truncated or corrupt): {_short_reason(e)}") from e
    return _validate(name, arr)


def _sniff(head: bytes) -> str | None:
    """Format from the first bytes of a file (so a JPEG saved as .png still reads), or None when unknown."""
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"\x76\x2f\x31\x01"):
        return "exr"
    return None


def _short_reason(exc: BaseException) -> str:
    """One short line describing ``exc`` (library messages can span lines or be empty)."""
    text = str(exc).strip().strip("'\"")
    line = " ".join(text.split()) if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _check_size(name: str, width: int, height: int, max_pixels: int) -> None:
    """Refuse a declared ``width`` x ``height`` that is empty or over ``max_pixels`` (0 = no limit): DataError."""
    if width <= 0 or height <= 0:
        raise DataError(f"{name}: image has zero size ({width}x{height})")
    if max_pixels and width * height > max_pixels:
        raise DataError(
            f"{name}: image is {width}x{height} ({width * height:,} pixels), more than the limit of {max_pixels:,} "
            "pixels (--max-pixels N raises it, 0 = no limit)"
        )


def _validate(name: str, arr: np.ndarray) -> np.ndarray:
    """Shape/dtype/finiteness checks shared by all formats; adds the channel axis to 2-D data (a view)."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise DataError(f"{name}: unsupported image layout with shape {tuple(arr.shape)}")
    h, w, c = arr.shape
    if h == 0 or w == 0:
        raise DataError(f"{name}: image has zero size ({w}x{h})")
    if not 1 <= c <= 4:
        raise DataError(f"{name}: unsupported number of channels {c} (expected 1 to 4)")
    if arr.dtype not in _STORED_DTYPES:
        raise DataError(f"{name}: unsupported sample type {arr.dtype} (supported: uint8, uint16, float16, float32)")
    if arr.dtype.kind == "f":
        rows = max(1, _CHUNK_ELEMS // (w * c))
        for r0 in range(0, h, rows):
            if not np.isfinite(arr[r0 : r0 + rows]).all():
                raise DataError(f"{name}: image contains NaN or infinite values")
    return arr


# ---- PNG / JPEG ----------------------------------------------------------------------------------------------------


def _read_png(name: str, head: bytes, max_pixels: int) -> np.ndarray:
    if len(head) < 33 or head[12:16] != b"IHDR":
        raise ValueError("missing or malformed IHDR header chunk")
    width, height, depth = struct.unpack(">IIB", head[16:25])
    _check_size(name, width, height, max_pixels)
    if depth == 16:
        with open(name, "rb") as fh:
            return _decode_png16(fh.read())
    return _read_pillow(name, max_pixels)


def _jpeg_size(name: str) -> tuple[int, int]:
    """(width, height) from a JPEG's frame header: Pillow's lazy open parses the markers and decodes nothing.

    The plugin class is used directly because ``Image.open`` would first apply Pillow's own bomb check, whose message
    names neither the size nor the option that raises the limit."""
    from PIL import JpegImagePlugin

    with JpegImagePlugin.JpegImageFile(name) as im:
        return im.size


# Pillow mode -> mode to convert to (None: keep). Modes not listed are rejected.
_PIL_MODES = {
    "L": None,
    "LA": None,
    "RGB": None,
    "RGBA": None,
    "1": "L",
    "P": "RGB",
    "PA": "RGBA",
    "La": "LA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
}
# With a tRNS transparency key, these modes gain an alpha channel.
_PIL_TRANSPARENT = {"L": "LA", "1": "LA", "P": "RGBA", "RGB": "RGBA"}


def _read_pillow(name: str, max_pixels: int) -> np.ndarray:
    """8-bit PNG and JPEG through imageio's Pillow plugin (the declared size is already checked)."""
    import imageio.v3 as iio
    from PIL import Image

    # Pillow's decompression-bomb guard at our limit, as a second line behind _check_size: Pillow warns above it and
    # refuses above twice it, so a size that passed _check_size triggers neither. Gigapixel inputs raise the limit.
    Image.MAX_IMAGE_PIXELS = max_pixels or None
    with iio.imopen(name, "r", plugin="pillow") as f:
        meta = f.metadata(index=0, exclude_applied=False)
        mode = meta.get("mode")
        if mode not in _PIL_MODES:
            raise DataError(f"{name}: unsupported pixel mode '{mode}' (expected gray, RGB or palette, 8-bit)")
        target = _PIL_MODES[mode]
        if "transparency" in meta and mode in _PIL_TRANSPARENT:
            target = _PIL_TRANSPARENT[mode]
        # writeable_output=False avoids a third full-size copy (Pillow buffer + bytes are already two).
        return f.read(index=0, mode=target, writeable_output=False)


def _png_chunks(data: bytes):
    """Yield (type, body) of each PNG chunk after the signature, checking lengths and CRCs; stops after IEND."""
    pos = len(_PNG_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise ValueError("file is truncated (incomplete chunk header)")
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            raise ValueError(f"file is truncated ({ctype.decode('latin-1')} chunk cut short)")
        body = data[pos + 8 : end]
        if zlib.crc32(ctype + body) != int.from_bytes(data[end : end + 4], "big"):
            raise ValueError(f"CRC error in {ctype.decode('latin-1')} chunk")
        yield ctype, body
        if ctype == b"IEND":
            return
        pos = end + 4


# Adam7 passes: (x0, y0, dx, dy).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _decode_png16(data: bytes) -> np.ndarray:
    """Decode a 16-bit PNG (gray, gray+alpha, RGB, RGBA; plain or Adam7-interlaced) to ``(H, W, C)`` uint16.

    Why not Pillow: it converts 16-bit colour PNGs to 8 bits. A tRNS colour key on gray/RGB becomes an alpha channel
    (0 where the pixel equals the key, 65535 elsewhere), like Pillow does for 8-bit images.
    """
    width, height, depth, ctype, comp, filt, interlace = struct.unpack(">IIBBBBB", data[16:29])
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(ctype)
    if channels is None or depth != 16:
        raise ValueError(f"invalid PNG header (bit depth {depth} with colour type {ctype})")
    if comp != 0 or filt != 0 or interlace not in (0, 1):
        raise ValueError("invalid PNG header (unknown compression, filter or interlace method)")
    bpp = 2 * channels
    idat, trns = [], None
    for kind, body in _png_chunks(data):
        if kind == b"IDAT":
            idat.append(body)
        elif kind == b"tRNS":
            trns = body
    if not idat:
        raise ValueError("no image data (IDAT chunk)")

    if interlace == 0:
        passes = [(0, 0, 1, 1, width, height)]
    else:
        passes = []
        for x0, y0, dx, dy in _ADAM7:
            pw, ph = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
            if pw > 0 and ph > 0:  # empty passes have no bytes at all, not even filter bytes
                passes.append((x0, y0, dx, dy, pw, ph))
    expected = sum(ph * (1 + pw * bpp) for *_, pw, ph in passes)
    raw = _inflate_bounded(idat, expected)
    if len(raw) < expected:
        raise ValueError(f"image data is too short ({len(raw)} of {expected} bytes)")
    buf = np.frombuffer(raw, dtype=np.uint8)

    if interlace == 0:
        planes = _png_unfilter(buf[:expected], height, width, bpp)
    else:
        planes = np.empty((height, width, bpp), np.uint8)
        pos = 0
        for x0, y0, dx, dy, pw, ph in passes:
            n = ph * (1 + pw * bpp)
            planes[y0::dy, x0::dx] = _png_unfilter(buf[pos : pos + n], ph, pw, bpp)
            pos += n
    img = planes.view(">u2").astype(np.uint16)  # big-endian samples -> native uint16, (H, W, C)

    if trns is not None and ctype in (0, 2) and len(trns) >= 2 * channels:
        key = np.frombuffer(trns[: 2 * channels], dtype=">u2").astype(np.uint16)
        opaque = np.any(img != key, axis=-1)
        alpha = np.where(opaque, np.uint16(65535), np.uint16(0)).astype(np.uint16)
        img = np.concatenate([img, alpha[..., None]], axis=-1)
    return img


def _inflate_bounded(blocks: list[bytes], limit: int) -> bytearray:
    """Inflate the zlib stream split over ``blocks`` (the IDAT bodies), producing at most ``limit`` bytes: a stream
    that inflates to more (a decompression bomb behind a small declared size) raises ValueError after at most
    ``limit + 1`` bytes of output, and so does a stream that ends early (no end-of-stream marker)."""
    dec = zlib.decompressobj()
    out = bytearray()
    for body in blocks:
        # max_length >= 1 here (0 would mean "unbounded"): out never exceeds limit past the check below.
        out += dec.decompress(body, limit + 1 - len(out))
        if len(out) > limit:
            raise ValueError(f"image data inflates to more than the {limit} bytes its declared size needs")
        if dec.eof:
            break
    if not dec.eof:
        raise ValueError("compressed image data is truncated")
    return out  # no bytes() copy: np.frombuffer reads a bytearray as it is


def _png_unfilter(buf: np.ndarray, h: int, w: int, bpp: int) -> np.ndarray:
    """Undo PNG row filters: ``buf`` holds ``h`` rows of (filter byte + w*bpp bytes); returns (h, w, bpp) uint8.

    Sub/Average/Paeth depend on the already-decoded left neighbour, so a row cannot be decoded in one numpy step.
    Instead pixels are decoded one anti-diagonal (r + x = d) at a time: every pixel on a diagonal depends only on
    earlier diagonals (left, up, up-left), so each step is vectorised and there are only h + w - 1 steps. The image is
    zero-padded by one row on top and one column on the left (the "outside" neighbours PNG defines as 0); in the
    flattened padded array a diagonal is then a plain strided slice with step w, decoded in place.
    """
    rows = buf.reshape(h, 1 + w * bpp)
    ftype = rows[:, 0]
    if int(ftype.max()) > 4:
        raise ValueError(f"invalid PNG row filter type {int(ftype.max())}")
    data = rows[:, 1:].reshape(h, w, bpp)
    if not ftype.any():  # no filtering at all
        return data
    padded = np.zeros((h + 1, w + 1, bpp), np.uint8)
    padded[1:, 1:] = data
    flat = padded.reshape(-1, bpp)
    ftype = ftype.astype(np.intp)
    # Pixel (r, x) lives at flat index (r + 1) * (w + 1) + x + 1 = r * w + (d + w + 2) with d = r + x.
    for d in range(h + w - 1):
        r0, r1 = max(0, d - w + 1), min(h - 1, d)
        start, stop = r0 * w + d + w + 2, r1 * w + d + w + 3
        cur = flat[start:stop:w]
        a = flat[start - 1 : stop - 1 : w].astype(np.int16)  # left
        b = flat[start - w - 1 : stop - w - 1 : w].astype(np.int16)  # up
        c = flat[start - w - 2 : stop - w - 2 : w].astype(np.int16)  # up-left
        pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        pred = np.choose(ftype[r0 : r1 + 1, None], (0, a, b, (a + b) >> 1, paeth))
        cur += pred.astype(np.uint8)  # modulo-256 addition, written into `padded`
    return padded[1:, 1:]


def _png_filter(raw: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """Filter rows for PNG encoding: (n, L) uint8 rows + the row above the first -> (n, 1 + L) with filter bytes.

    Per row the filter with the smallest sum of absolute signed residuals is chosen (libpng's default heuristic).
    """
    up = np.concatenate([prev[None], raw[:-1]], axis=0)
    left = np.zeros_like(raw)
    left[:, bpp:] = raw[:, :-bpp]
    upleft = np.zeros_like(raw)
    upleft[:, bpp:] = up[:, :-bpp]
    a, b, c = left.astype(np.int16), up.astype(np.int16), upleft.astype(np.int16)
    pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
    paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c)).astype(np.uint8)
    del pa, pb, pc, c
    avg = ((a + b) >> 1).astype(np.uint8)
    del a, b
    cands = (raw, raw - left, raw - up, raw - avg, raw - paeth)  # uint8 arithmetic wraps modulo 256
    scores = np.stack([np.abs(x.view(np.int8).astype(np.int32)).sum(axis=1) for x in cands])
    best = np.argmin(scores, axis=0)
    out = np.empty((raw.shape[0], raw.shape[1] + 1), np.uint8)
    out[:, 0] = best
    out[:, 1:] = np.choose(best[:, None], cands)
    return out


def _png_chunk(fh, kind: bytes, body: bytes) -> None:
    fh.write(struct.pack(">I", len(body)) + kind)
    fh.write(body)
    fh.write(struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))


def _write_png(fh, img: np.ndarray) -> None:
    """Encode ``img`` (H, W, C) uint8/uint16 as a non-interlaced PNG, streaming row chunks through zlib."""
    h, w, c = img.shape
    depth = 8 * img.dtype.itemsize
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    bpp = c * img.dtype.itemsize
    fh.write(_PNG_SIGNATURE)
    _png_chunk(fh, b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0))
    comp = zlib.compressobj(6)
    prev = np.zeros(w * bpp, np.uint8)
    rows = max(1, _CHUNK_ELEMS // (w * bpp))
    for r0 in range(0, h, rows):
        chunk = np.ascontiguousarray(img[r0 : r0 + rows], dtype=">u2" if depth == 16 else np.uint8)
        raw = chunk.view(np.uint8).reshape(chunk.shape[0], w * bpp)
        filtered = _png_filter(raw, prev, bpp)
        prev = raw[-1].copy()
        body = comp.compress(filtered)
        if body:
            _png_chunk(fh, b"IDAT", body)
    _png_chunk(fh, b"IDAT", comp.flush())
    _png_chunk(fh, b"IEND", b"")


# ---- TIFF ----------------------------------------------------------------------------------------------------------


def _read_tiff(name: str, file_size: int, max_pixels: int) -> np.ndarray:
    import tifffile

    ph = tifffile.PHOTOMETRIC
    with tifffile.TiffFile(name) as tf:
        if not tf.series:
            raise ValueError("no image data in TIFF")
        series = tf.series[0]  # level 0 = full resolution for pyramids
        dims = dict(zip(series.axes, series.shape, strict=False))
        if "Y" in dims and "X" in dims:  # other layouts are refused below, after the header
            _check_size(name, int(dims["X"]), int(dims["Y"]), max_pixels)
        page = series.keyframe
        photometric = int(page.photometric)
        compression = page.compression
        bits = int(page.bitspersample)
        colormap = page.colormap if photometric == ph.PALETTE else None
        jpeg_ycbcr = photometric == ph.YCBCR and compression == tifffile.COMPRESSION.JPEG  # decoded to RGB
        if photometric not in (ph.MINISBLACK, ph.MINISWHITE, ph.RGB, ph.PALETTE) and not jpeg_ycbcr:
            raise DataError(
                f"{name}: unsupported TIFF photometric interpretation {ph(photometric).name} "
                "(supported: gray, RGB, palette)"
            )
        axes = series.axes
        # tifffile reports dtypes in native order; the file's byte order decides whether a memmap is valid.
        file_dtype = np.dtype(tf.byteorder + series.dtype.char)
        offset = series.dataoffset
        if (
            offset is not None
            and page.is_memmappable
            and file_dtype.isnative
            and file_dtype in _STORED_DTYPES
            and photometric in (ph.MINISBLACK, ph.RGB)
        ):
            need = offset + math.prod(series.shape) * file_dtype.itemsize
            if need > file_size:
                raise ValueError(f"file is truncated (image data needs {need} bytes, file has {file_size})")
            arr = np.memmap(name, dtype=file_dtype, mode="r", offset=offset, shape=series.shape)
        else:
            try:
                arr = series.asarray()
            except KeyError as e:
                if "imagecodecs" in str(e):
                    raise DataError(
                        f"{name}: TIFF compression {compression.name} needs the optional 'imagecodecs' package "
                        "(install it, or re-save the image uncompressed or with deflate)"
                    ) from e
                raise

    # Keep Y, X and samples; take the first entry of any other axis (pages of a stack, ImageJ channels, ...).
    arr = arr[tuple(slice(None) if ax in "YXS" else 0 for ax in axes)]
    axes = "".join(ax for ax in axes if ax in "YXS")
    if axes == "SYX":  # planar configuration: samples first
        arr = np.moveaxis(arr, 0, -1)
    elif axes not in ("YX", "YXS"):
        raise DataError(f"{name}: unsupported TIFF layout (axes {series.axes})")

    if colormap is not None:
        if arr.dtype.kind != "u" or (arr.size and int(arr.max()) >= colormap.shape[1]):
            raise ValueError("palette indices out of range of the colour map")
        rgb = np.ascontiguousarray(colormap.T)[arr.reshape(arr.shape[:2])]  # (H, W, 3) uint16
        # TIFF colour maps are 16-bit; most are 8-bit values times 257: keep those as uint8.
        return (rgb // 257).astype(np.uint8) if not np.any(colormap % 257) else rgb.astype(np.uint16)
    if arr.dtype == np.bool_:  # 1-bit bilevel
        arr = arr.astype(np.uint8) * np.uint8(255)
    elif arr.dtype == _U8 and bits in (2, 4):  # tifffile unpacks to 0..2**bits-1
        arr = arr * np.uint8(255 // (2**bits - 1))
    if photometric == ph.MINISWHITE:
        if arr.dtype.kind != "u":
            raise DataError(f"{name}: unsupported TIFF: min-is-white with {arr.dtype} samples")
        arr = np.iinfo(arr.dtype).max - arr
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)  # not a stored dtype we support; values beyond float32 become inf -> rejected
    return arr


# ---- OpenEXR -------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _capture_native_output(sink: list[str]):
    """Collect what OpenEXR prints (a Python-level warning on stdout, C-level errors on fd 2) into ``sink``.

    Why: a corrupt EXR otherwise prints two extra lines around our one-line error; the C-level text is also the most
    precise reason available. Redirecting fd 2 is process-wide, so keep the guarded region short.
    """
    saved = tmp = None
    with contextlib.suppress(OSError):
        tmp = tempfile.TemporaryFile()
        saved = os.dup(2)
    py_out = io.StringIO()
    try:
        if saved is not None:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(tmp.fileno(), 2)
        with contextlib.redirect_stdout(py_out):
            yield
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            sink.append(tmp.read().decode("utf-8", "replace"))
        if tmp is not None:
            tmp.close()
        sink.append(py_out.getvalue())


def _native_reason(sink: list[str], name: str) -> str | None:
    """Most specific line of captured OpenEXR output, without the leading file name."""
    lines = [ln.strip() for text in sink for ln in text.splitlines() if ln.strip()]
    if not lines:
        return None
    lines.sort(key=lambda ln: "EXR_ERR" not in ln)  # the C library's coded error first
    line = lines[0]
    line = line[len(name) + 1 :].strip() if line.startswith(name + ":") else line
    return line.replace(f"'{name}'", "the file")  # the error line starts with the path already


def _exr_channel_order(names: list[str]) -> list[str] | None:
    """Channel names in R,G,B[,A] or Y[,A] order (default layer, else the only layer), a lone channel, or None."""
    layers: dict[str, dict[str, str]] = {}
    for n in names:
        layer, _, base = n.rpartition(".")
        layers.setdefault(layer, {})[base.upper()] = n
    candidates = [layers.get("", {})]
    if len(layers) == 1 and "" not in layers:
        candidates = list(layers.values())
    for m in candidates:
        alpha = [m["A"]] if "A" in m else []
        if {"R", "G", "B"} <= m.keys():
            return [m["R"], m["G"], m["B"], *alpha]
        if "Y" in m:
            return [m["Y"], *alpha]
    if len(names) == 1:
        return list(names)
    return None


def _read_exr(name: str, max_pixels: int) -> np.ndarray:
    import OpenEXR

    sink: list[str] = []
    try:
        with _capture_native_output(sink):
            window = OpenEXR.File(name, header_only=True).header()["dataWindow"]
    except Exception as e:
        raise ValueError(_native_reason(sink, name) or _short_reason(e)) from e
    (x0, y0), (x1, y1) = (tuple(int(v) for v in corner) for corner in window)
    _check_size(name, x1 - x0 + 1, y1 - y0 + 1, max_pixels)
    sink = []
    try:
        with _capture_native_output(sink):
            exr = OpenEXR.File(name, separate_channels=True)
            chans = exr.channels()
    except Exception as e:
        raise ValueError(_native_reason(sink, name) or _short_reason(e)) from e
    stray = "".join(sink).strip()
    if stray:  # warnings on success: pass them on unchanged
        sys.stderr.write(stray + "\n")
    if not chans:
        raise ValueError("no channels (or deep data, which is unsupported)")
    order = _exr_channel_order(list(chans))
    if order is None:
        raise DataError(
            f"{name}: unsupported EXR channel layout {sorted(chans)} (expected R,G,B[,A], Y[,A] or a single channel)"
        )
    planes = []
    for n in order:
        p = chans[n].pixels
        if p is None or p.ndim != 2:
            raise ValueError(f"channel '{n}' has no scanline pixel data")
        if p.dtype not in (_F16, _F32):
            raise DataError(f"{name}: unsupported EXR pixel type {p.dtype} in channel '{n}' (expected half or float)")
        planes.append(p)
    if len({p.shape for p in planes}) != 1:
        raise DataError(f"{name}: unsupported EXR with subsampled channels {order}")
    dtype = _F16 if all(p.dtype == _F16 for p in planes) else _F32
    if len(planes) == 1:
        return planes[0].astype(dtype, copy=False)[..., None]
    return np.stack([p.astype(dtype, copy=False) for p in planes], axis=-1)


# --------------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------------


class TempFileOutput:
    """The lifecycle of an output written to a temporary file beside its destination and renamed onto it by
    ``close()``, so an earlier file is never destroyed by a failed write: used as a context manager it closes on
    success and ``abort()``s (removing the temporary file) on an exception, and a writer dropped unfinished aborts.

    Subclasses implement ``close()`` and ``abort()`` and keep ``_tmp`` (the temporary path or None) and
    ``_finished`` (True once closed or aborted).
    """

    _tmp: Path | None = None
    _finished: bool = True

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def _remove_temp(self) -> None:
        if self._tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)
            self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        # Last resort for writers dropped without close/abort: never leave a stray temporary file behind.
        if not getattr(self, "_finished", True):
            with contextlib.suppress(Exception):
                self.abort()


class ImageWriter(TempFileOutput):
    """Write an ``(H, W, C)`` image tile by tile, then publish it atomically.

    ``with ImageWriter(path, h, w, c, dtype) as out: out[r0:r1] = tile`` — tiles are ``(r1 - r0, W, C)`` arrays in
    exactly ``dtype`` (``(r1 - r0, W)`` is accepted when C == 1), written in any order; rows never written stay 0.

    Formats by suffix: ``.png`` (uint8, uint16; C 1..4; adaptive-filter zlib level 6), ``.tif``/``.tiff`` (uint8,
    uint16, float16, float32; uncompressed contiguous, BigTIFF above 4 GiB), ``.exr`` (float16 -> half, float32 ->
    float; ZIP compression; channels Y, Y+A, R+G+B or R+G+B+A). TIFF pixels go straight into a ``tifffile.memmap`` of
    the output (disk space reserved up front), so no in-memory copy is needed; PNG and EXR encoders need the whole
    image, which is assembled in memory (H*W*C*itemsize bytes).

    Data goes to a hidden temporary file in the destination directory; on successful exit it replaces ``path`` with
    ``os.replace`` (readers never see a partial file). If the block raises, the temporary file is removed and an
    existing file at ``path`` is left untouched. Outside a ``with`` block call :meth:`close` (publish) or
    :meth:`abort` (discard).

    Raises :class:`OutputError` for an unsupported suffix or suffix/dtype combination, a missing or unwritable
    destination directory, a destination that is a directory, and write failures (disk full, ...). Bad tile shapes,
    dtypes or row ranges are programming errors: ``ValueError``/``TypeError``.
    """

    def __init__(self, path: str | os.PathLike, height: int, width: int, channels: int, dtype) -> None:
        self.path = Path(os.fsdecode(os.fspath(path)))
        self.height, self.width, self.channels = int(height), int(width), int(channels)
        self.dtype = np.dtype(dtype)
        self._tmp: Path | None = None
        self._buf: np.ndarray | None = None
        self._memmap = None
        self._finished = False
        suffix = self.path.suffix.lower()
        self._suffix = suffix
        if self.path.is_dir():
            raise OutputError(f"{self.path}: is a directory, expected an output file path")
        if suffix not in _WRITE_DTYPES:
            raise OutputError(
                f"{self.path}: unsupported output format '{suffix or '(no suffix)'}' "
                f"(supported: {', '.join(_WRITE_DTYPES)})"
            )
        if self.dtype not in _WRITE_DTYPES[suffix]:
            allowed = ", ".join(str(d) for d in _WRITE_DTYPES[suffix])
            raise OutputError(f"{self.path}: cannot write {self.dtype} images as {suffix} (supported: {allowed})")
        if self.height <= 0 or self.width <= 0 or not 1 <= self.channels <= 4:
            raise ValueError(f"invalid image size {self.width}x{self.height}x{self.channels} (need H, W > 0, C 1..4)")
        parent = self.path.parent
        if not parent.is_dir():
            raise OutputError(f"{self.path}: output directory {parent} does not exist")
        self._tmp = self._create_temp(parent)
        try:
            self._open_buffer()
        except BaseException:
            self._remove_temp()
            raise

    def _create_temp(self, parent: Path) -> Path:
        from ngp_cli.runs import create_temp_beside

        try:
            return create_temp_beside(self.path, self._suffix)  # the real suffix last: some encoders look at it
        except OSError as e:
            raise OutputError(f"{self.path}: cannot write to directory {parent}: {e.strerror or e}") from e

    def _open_buffer(self) -> None:
        shape = (self.height, self.width, self.channels)
        if self._suffix in (".tif", ".tiff"):
            import tifffile

            nbytes = math.prod(shape) * self.dtype.itemsize
            kwargs: dict = {
                "photometric": "rgb" if self.channels >= 3 else "minisblack",
                "planarconfig": "contig",
                "bigtiff": nbytes > (1 << 32) - (1 << 24),  # classic TIFF offsets are 32-bit
            }
            if self.channels in (2, 4):
                kwargs["extrasamples"] = [2]  # unassociated alpha
            mshape = shape if self.channels > 1 else shape[:2]
            try:
                self._memmap = tifffile.memmap(str(self._tmp), shape=mshape, dtype=self.dtype, **kwargs)
                _reserve_disk_space(self._tmp)
            except OSError as e:
                raise OutputError(f"{self.path}: cannot create output file: {e.strerror or e}") from e
            self._buf = self._memmap.reshape(shape)
        else:
            try:
                self._buf = np.zeros(shape, self.dtype)
            except MemoryError as e:
                raise OutputError(f"{self.path}: not enough memory to assemble a {shape} {self.dtype} image") from e

    def __setitem__(self, rows: slice | int, tile: np.ndarray) -> None:
        """Store rows ``rows`` (a step-1 slice, or an int for one row) from ``tile`` of shape (n, W, C) in ``dtype``."""
        if self._finished or self._buf is None:
            raise ValueError(f"{self.path}: writer is already closed")
        if isinstance(rows, (int, np.integer)):
            rows = slice(int(rows), int(rows) + 1)
        if not isinstance(rows, slice):
            raise TypeError(f"rows must be a slice, got {type(rows).__name__}")
        start, stop, step = rows.indices(self.height)
        if step != 1 or stop <= start:
            raise ValueError(f"rows must be a non-empty step-1 slice within 0..{self.height}, got {rows}")
        tile = np.asarray(tile)
        if tile.ndim == 2 and self.channels == 1:
            tile = tile[..., None]
        want = (stop - start, self.width, self.channels)
        if tile.shape != want:
            raise ValueError(f"tile for rows {start}:{stop} must have shape {want}, got {tile.shape}")
        if tile.dtype != self.dtype:
            raise TypeError(f"tile dtype {tile.dtype} does not match the writer's dtype {self.dtype}")
        self._buf[start:stop] = tile

    def close(self) -> None:
        """Encode (PNG/EXR), flush (TIFF) and atomically move the file into place. Idempotent."""
        if self._finished:
            return
        try:
            self._finalise()
            os.replace(self._tmp, self.path)
        except OutputError:
            self.abort()
            raise
        except OSError as e:
            self.abort()
            raise OutputError(f"{self.path}: cannot write image: {e.strerror or e}") from e
        except BaseException:
            self.abort()
            raise
        self._finished = True
        self._buf = self._memmap = None

    def _finalise(self) -> None:
        if self._memmap is not None:
            self._memmap.flush()
            self._buf = self._memmap = None  # unmap before the rename
        elif self._suffix == ".png":
            with open(self._tmp, "wb") as fh:
                _write_png(fh, self._buf)
        else:
            self._write_exr()

    def _write_exr(self) -> None:
        import OpenEXR

        buf, h, w = self._buf, self.height, self.width
        # OpenEXR's bindings silently write garbage for strided arrays: pass contiguous planes only.
        if self.channels == 1:
            chans = {"Y": buf.reshape(h, w)}
        elif self.channels == 2:
            chans = {"Y": np.ascontiguousarray(buf[..., 0]), "A": np.ascontiguousarray(buf[..., 1])}
        else:
            chans = {"RGB" if self.channels == 3 else "RGBA": buf}
        header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
        sink: list[str] = []
        try:
            with _capture_native_output(sink):
                OpenEXR.File(header, chans).write(str(self._tmp))
        except Exception as e:
            reason = _native_reason(sink, str(self._tmp)) or _short_reason(e)
            raise OutputError(f"{self.path}: cannot write EXR: {reason}") from e

    def abort(self) -> None:
        """Discard the output: remove the temporary file, keep whatever was at ``path``. Idempotent."""
        self._finished = True
        self._buf = self._memmap = None
        self._remove_temp()



def _reserve_disk_space(path: Path) -> None:
    """Allocate the memmapped file's blocks now: a full disk then fails here as OSError, not later as SIGBUS."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        # EOPNOTSUPP/EINVAL: the filesystem cannot preallocate; carry on with a sparse file.
    finally:
        os.close(fd)


def write_image(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a whole ``(H, W, C)`` (or ``(H, W)`` gray) array through :class:`ImageWriter` (same formats and errors)."""
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"expected an (H, W, C) or (H, W) array, got shape {a.shape}")
    with ImageWriter(path, a.shape[0], a.shape[1], a.shape[2], a.dtype) as out:
        if a.shape[0] > 0:
            out[0 : a.shape[0]] = a


# --------------------------------------------------------------------------------------------------------------------
# Heat map
# --------------------------------------------------------------------------------------------------------------------

# Inferno colour map (matplotlib's, sampled at 9 points, sRGB 0..255): black -> purple -> orange -> pale yellow,
# perceived brightness increasing monotonically.
_INFERNO = np.array(
    [
        [0, 0, 4],
        [31, 12, 72],
        [85, 15, 109],
        [136, 34, 106],
        [186, 54, 85],
        [227, 89, 51],
        [249, 140, 10],
        [249, 201, 50],
        [252, 255, 164],
    ],
    dtype=np.float32,
)


def _robust_max(v: np.ndarray) -> float:
    """99th percentile of the finite values (on a strided subsample for big maps); positive, 1.0 as a last resort."""
    step = max(1, math.ceil(math.sqrt(v.size / (1 << 22)))) if v.size else 1
    sample = np.asarray(v[::step, ::step], dtype=np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 1.0
    vmax = float(np.percentile(sample, 99.0))
    if vmax <= 0.0:
        vmax = float(sample.max())  # sparse maps: the 99th percentile can be 0 while some values are not
    return vmax if vmax > 0.0 else 1.0


def colormap(values: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """Heat map of a 2-D scalar field: ``(H, W)`` (or ``(H, W, 1)``) numbers -> ``(H, W, 3)`` uint8 RGB.

    ``values / vmax`` clipped to [0, 1] is mapped through an inferno-like palette (0 -> near-black, 1 -> pale yellow,
    brightness monotonic). Negative values and NaN map to the darkest colour, +inf to the brightest. ``vmax`` defaults
    to the 99th percentile of the finite values (robust to a few outliers); an all-zero map is all dark. Raises
    ``ValueError`` for other shapes or a non-positive/non-finite explicit ``vmax``.
    """
    v = np.asarray(values)
    if v.ndim == 3 and v.shape[-1] == 1:
        v = v[..., 0]
    if v.ndim != 2:
        raise ValueError(f"colormap expects an (H, W) array, got shape {v.shape}")
    if vmax is None:
        vmax = _robust_max(v)
    vmax = float(vmax)
    if not (math.isfinite(vmax) and vmax > 0.0):
        raise ValueError(f"vmax must be a positive finite number, got {vmax}")
    h, w = v.shape
    out = np.empty((h, w, 3), np.uint8)
    n = len(_INFERNO) - 1
    rows = max(1, _CHUNK_ELEMS // max(1, w))
    for r0 in range(0, h, rows):
        t = v[r0 : r0 + rows].astype(np.float32) / np.float32(vmax)
        t = np.nan_to_num(t, nan=0.0, posinf=1.0, neginf=0.0)
        np.clip(t, 0.0, 1.0, out=t)
        pos = t * n
        i = np.minimum(pos.astype(np.intp), n - 1)
        f = (pos - i)[..., None]
        rgb = _INFERNO[i] * (1.0 - f) + _INFERNO[i + 1] * f
        out[r0 : r0 + rows] = np.rint(rgb).astype(np.uint8)
    return out
