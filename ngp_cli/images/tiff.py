"""Reading TIFF through tifffile (writing is :class:`~ngp_cli.images.ImageWriter`'s memmap)."""

from __future__ import annotations

import math

import numpy as np

from ngp_cli.errors import DataError

from .checks import _check_size
from .dtypes import _STORED_DTYPES, _U8


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
