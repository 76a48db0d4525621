"""The photo as a training target: continuous positions, bilinear lookups, pixel-centre grids.

Coordinates: u (horizontal, to the right) and v (vertical, downwards) in [0, 1]; pixel (row i, column j) of an H×W image
covers [j/W, (j+1)/W) × [i/H, (i+1)/H) and its centre is ((j + 0.5)/W, (i + 0.5)/H), as in tiny-cuda-nn's image sample
(samples/mlp_learning_an_image.cu). The image stays in its stored dtype (possibly a read-only memmap): only the looked-up
texels are converted to float32, so a 1-gigapixel 8-bit photo costs its file size in memory and no more.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

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
        # A zero-copy torch view of the texels for sample(); torch has no uint16 gathers, so those go as int16 bits.
        flat = self._flat.view(np.int16) if self._flat.dtype == np.uint16 else self._flat
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only memmaps: sample() never writes through it
            self._texels = torch.from_numpy(flat)

    def natural_max_resolution(self, factor: float = 0.5) -> int:
        """N_max = factor · max(W, H), at least 1; the paper / instant-ngp use factor 0.5 for images
        (src/testbed.cu: ``desired_resolution = max(m_image.resolution) / 2``)."""
        return max(1, int(factor * max(self.width, self.height)))

    def sample(self, uv: torch.Tensor) -> torch.Tensor:
        """Bilinear lookup at continuous positions, in torch (the four texel gathers and the blend run on torch's
        threads: the training loop draws a batch every step, and the numpy version took ~11 ms of one core at 2^16).

        Args:
            uv: (N, 2) float32 CPU tensor, columns u (x, right) and v (y, down) in [0, 1]; the border texels extend
                outwards.
        Returns:
            (N, C) float32 normalised values.
        """
        w, h = self.width, self.height
        px = uv[:, 0] * float(w) - 0.5
        py = uv[:, 1] * float(h) - 0.5
        fx0, fy0 = px.floor(), py.floor()
        wx, wy = (px - fx0)[:, None], (py - fy0)[:, None]
        ix, iy = fx0.long(), fy0.long()
        # Clamp both neighbours separately so that outside the texel centres the border texel extends outwards.
        x0, x1 = ix.clamp(0, w - 1), (ix + 1).clamp(0, w - 1)
        row0, row1 = iy.clamp(0, h - 1) * w, (iy + 1).clamp(0, h - 1) * w
        corners = self._texels.index_select(0, torch.stack((row0 + x0, row0 + x1, row1 + x0, row1 + x1)).view(-1))
        if self._texels.dtype == torch.int16:  # uint16 texels, stored as their int16 bit pattern
            corners = corners.to(torch.int32) & 0xFFFF
        c = corners.to(torch.float32).view(4, -1, self.channels)
        top = c[0] * (1 - wx) + c[1] * wx
        bottom = c[2] * (1 - wx) + c[3] * wx
        return (top * (1 - wy) + bottom * wy) * float(self._inv_scale)

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
