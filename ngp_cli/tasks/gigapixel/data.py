"""The photo as a training target: continuous positions, bilinear lookups, pixel-centre grids.

Coordinates: u (horizontal, to the right) and v (vertical, downwards) in [0, 1]; pixel (row i, column j) of an H×W image
covers [j/W, (j+1)/W) × [i/H, (i+1)/H) and its centre is ((j + 0.5)/W, (i + 0.5)/H), as in tiny-cuda-nn's image sample
(samples/mlp_learning_an_image.cu). The image stays in its stored dtype (possibly a read-only memmap): only the looked-up
texels are converted to float32, so a 1-gigapixel 8-bit photo costs its file size in memory and no more.
"""

from __future__ import annotations

import numpy as np

from ngp_cli.images import value_scale


class ImageTarget:
    """A (H, W, C) image of dtype uint8/uint16/float16/float32 with values normalised to [0, 1] on lookup
    (integer images divided by their full-scale value; float images as stored, HDR values above 1 kept)."""

    def __init__(self, image: np.ndarray) -> None:
        if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"expected a non-empty (H, W, C) image, got shape {image.shape}")
        self.image = image
        self.height, self.width, self.channels = (int(s) for s in image.shape)
        self._flat = image.reshape(self.height * self.width, self.channels)  # a view, also for memmaps
        self._inv_scale = np.float32(1.0 / value_scale(image.dtype))

    def natural_max_resolution(self, factor: float = 0.5) -> int:
        """N_max = factor · max(W, H), at least 1; the paper / instant-ngp use factor 0.5 for images
        (src/testbed.cu: ``desired_resolution = max(m_image.resolution) / 2``)."""
        return max(1, int(factor * max(self.width, self.height)))

    def sample(self, uv: np.ndarray) -> np.ndarray:
        """Bilinear lookup at continuous positions.

        Args:
            uv: (N, 2) float32, columns u (x, right) and v (y, down) in [0, 1]; the border texels extend outwards.
        Returns:
            (N, C) float32 normalised values.
        """
        px = uv[:, 0] * np.float32(self.width) - np.float32(0.5)
        py = uv[:, 1] * np.float32(self.height) - np.float32(0.5)
        fx0 = np.floor(px)
        fy0 = np.floor(py)
        wx = (px - fx0)[:, None]
        wy = (py - fy0)[:, None]
        ix, iy = fx0.astype(np.int64), fy0.astype(np.int64)
        # Clamp both neighbours separately so that outside the texel centres the border texel extends outwards.
        x0, x1 = np.clip(ix, 0, self.width - 1), np.clip(ix + 1, 0, self.width - 1)
        y0, y1 = np.clip(iy, 0, self.height - 1), np.clip(iy + 1, 0, self.height - 1)
        row0, row1 = y0 * self.width, y1 * self.width
        f = self._flat
        top = f[row0 + x0].astype(np.float32) * (1 - wx) + f[row0 + x1].astype(np.float32) * wx
        bottom = f[row1 + x0].astype(np.float32) * (1 - wx) + f[row1 + x1].astype(np.float32) * wx
        return (top * (1 - wy) + bottom * wy) * self._inv_scale

    def rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` as ((y1-y0), W, C) float32 normalised values (exact texels, no interpolation)."""
        return self.image[y0:y1].astype(np.float32) * self._inv_scale


def pixel_centers(height: int, width: int, y0: int, y1: int) -> np.ndarray:
    """Centres of rows ``y0:y1`` of an H×W pixel grid as ((y1-y0)·W, 2) float32 (u, v) in (0, 1), row-major."""
    u = (np.arange(width, dtype=np.float64) + 0.5) / width
    v = (np.arange(y0, y1, dtype=np.float64) + 0.5) / height
    grid = np.empty((y1 - y0, width, 2), dtype=np.float32)
    grid[..., 0] = u[None, :]
    grid[..., 1] = v[:, None]
    return grid.reshape(-1, 2)
