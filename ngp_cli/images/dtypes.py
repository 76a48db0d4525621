"""Stored image dtypes and their scaling to float: :func:`value_scale`, :func:`to_float`, :func:`from_float`."""

from __future__ import annotations

import numpy as np

_U8, _U16, _F16, _F32 = np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float16), np.dtype(np.float32)
_STORED_DTYPES = (_U8, _U16, _F16, _F32)
# Row chunks of this many elements bound the temporaries of whole-image passes (finite check, colormap, PNG encode).
_CHUNK_ELEMS = 1 << 22


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
