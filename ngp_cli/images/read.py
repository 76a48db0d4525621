"""Reading images: :func:`read_image` sniffs the format, checks the declared size, decodes and validates.

8-bit PNG and JPEG are decoded by Pillow here; 16-bit PNG, TIFF and EXR by the modules of their formats.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import numpy as np

from ngp_cli.errors import DataError

from .checks import DEFAULT_MAX_PIXELS, _check_size, _short_reason
from .dtypes import _CHUNK_ELEMS, _STORED_DTYPES
from .exr import _read_exr
from .png import _PNG_SIGNATURE, _decode_png16
from .tiff import _read_tiff

SUPPORTED_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr")


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
