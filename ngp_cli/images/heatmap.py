"""Heat-map colouring of scalar fields: :func:`colormap`."""

from __future__ import annotations

import math

import numpy as np

from .dtypes import _CHUNK_ELEMS

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
