"""Image quality metrics: PSNR, computed exactly over images too large to hold as float; SSIM (:func:`ssim`, null for
images smaller than its window); and the process's peak memory
(:func:`peak_rss_mib`, for the memory figures of the benchmarks).

PSNR = 10 * log10(peak^2 / MSE), with the MSE taken over every element (pixels x channels), as instant-ngp reports it
for normalised [0, 1] values (peak 1). Squared errors are summed in float64 so that a billion-pixel image accumulated
tile by tile gives the same result as a single pass.

Only numpy is imported here; torch tensors are recognised by their ``detach`` method and reduced on their own device
(no copy to the host), without importing torch at module import.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["LUMINANCE", "SSIM_MIN_SIDE", "PSNRAccumulator", "luminance", "mse_to_psnr", "peak_rss_mib", "psnr", "ssim"]

LUMINANCE = (0.2126, 0.7152, 0.0722)  # Rec. 709 / sRGB weights of linear R, G, B

# Flattened numpy inputs are reduced in chunks of this many elements to bound the float64 temporaries.
_CHUNK = 1 << 22


def mse_to_psnr(mse: float, peak: float = 1.0) -> float:
    """PSNR in dB for a mean squared error: ``10 * log10(peak**2 / mse)``.

    ``mse == 0`` gives ``inf``; a NaN mse gives NaN. Raises ``ValueError`` for a negative mse or non-positive peak.
    """
    mse = float(mse)
    if math.isnan(mse):
        return float("nan")
    if mse < 0.0:
        raise ValueError(f"mse must be >= 0, got {mse}")
    if not peak > 0.0:
        raise ValueError(f"peak must be > 0, got {peak}")
    if mse == 0.0:
        return float("inf")
    return 10.0 * math.log10(float(peak) ** 2 / mse)


def _is_tensor(x) -> bool:
    return hasattr(x, "detach") and hasattr(x, "device")


class PSNRAccumulator:
    """Full-image PSNR accumulated tile by tile.

    ``update(pred, target)`` adds the squared error of one tile (numpy arrays or torch tensors, any but equal shapes,
    values normalised so that full scale is ``peak``, 1.0 by default). The sum of squared errors is kept in float64
    together with the element count, so the result equals a single pass over the whole image (up to float64 rounding).
    """

    def __init__(self, peak: float = 1.0) -> None:
        if not peak > 0.0:
            raise ValueError(f"peak must be > 0, got {peak}")
        self.peak = float(peak)
        self.sse = 0.0
        self.count = 0

    def update(self, pred, target) -> None:
        """Accumulate ``sum((pred - target)**2)`` and the element count. Raises ``ValueError`` on shape mismatch."""
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(f"shape mismatch: pred {tuple(pred.shape)} vs target {tuple(target.shape)}")
        if _is_tensor(pred) or _is_tensor(target):
            self.sse += _sse_torch(pred, target)
        else:
            self.sse += _sse_numpy(np.asarray(pred), np.asarray(target))
        self.count += math.prod(tuple(pred.shape))

    @property
    def mse(self) -> float:
        """Mean squared error so far (NaN before any element was accumulated)."""
        return self.sse / self.count if self.count else float("nan")

    @property
    def psnr(self) -> float:
        """PSNR in dB so far: ``inf`` for an exact match, NaN before any update."""
        return mse_to_psnr(self.mse, self.peak)


def _sse_numpy(pred: np.ndarray, target: np.ndarray) -> float:
    p, t = pred.reshape(-1), target.reshape(-1)
    total = 0.0
    for i in range(0, p.size, _CHUNK):
        d = p[i : i + _CHUNK].astype(np.float64) - t[i : i + _CHUNK].astype(np.float64)
        total += float(np.dot(d, d))
    return total


def _sse_torch(pred, target) -> float:
    import torch  # only reached when a tensor was passed, so torch is already imported by the caller

    ref = pred if _is_tensor(pred) else target
    p = torch.as_tensor(pred, device=ref.device).detach()
    t = torch.as_tensor(target, device=ref.device).detach()
    # float32 differences are exact enough for [0, 1] data; the reduction itself runs in float64.
    d = p.to(torch.float32) - t.to(torch.float32)
    return float((d * d).sum(dtype=torch.float64).item())


def psnr(pred, target, peak: float = 1.0) -> float:
    """PSNR in dB between two equally shaped arrays/tensors (``inf`` when identical). See :class:`PSNRAccumulator`."""
    acc = PSNRAccumulator(peak)
    acc.update(pred, target)
    return acc.psnr


# SSIM's Gaussian window (σ = 1.5, truncated at 3.5σ as scikit-image does) is 11 pixels wide: smaller images have no
# full window, and a narrower one would be another metric, not comparable with the NeRF papers' figures.
SSIM_SIGMA = 1.5
SSIM_MIN_SIDE = 11


def ssim(pred: np.ndarray, target: np.ndarray) -> float | None:
    """Mean SSIM of two (H, W, 3) float images in [0, 1], as the NeRF evaluation code computes it: an 11×11 Gaussian
    window of σ = 1.5, population covariances, per channel then averaged (scikit-image's ``structural_similarity``).

    Returns None when a side is under :data:`SSIM_MIN_SIDE` pixels (no full window fits; the caller reports SSIM as
    null). Raises ``ValueError`` when the shapes differ or are not (H, W, 3).
    """
    if pred.shape != target.shape or pred.ndim != 3 or pred.shape[2] != 3:
        raise ValueError(f"ssim needs two (H, W, 3) images of one shape, got {pred.shape} and {target.shape}")
    if min(pred.shape[:2]) < SSIM_MIN_SIDE:
        return None
    from skimage.metrics import structural_similarity

    return float(structural_similarity(pred, target, channel_axis=2, data_range=1.0, gaussian_weights=True,
                                       sigma=SSIM_SIGMA, use_sample_covariance=False))


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB (``getrusage``: Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def luminance(rgb):
    """Rec. 709 luminance of linear RGB: (..., 3+) numpy array or torch tensor → (...), same type, dtype and device
    (channels beyond the third are ignored)."""
    return LUMINANCE[0] * rgb[..., 0] + LUMINANCE[1] * rgb[..., 1] + LUMINANCE[2] * rgb[..., 2]
