"""Tests for ngp_cli.metrics: PSNR from MSE, tile-wise accumulation, numpy and torch inputs."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ngp_cli.metrics import PSNRAccumulator, mse_to_psnr, psnr


def test_mse_to_psnr_known_values():
    assert mse_to_psnr(0.01) == pytest.approx(20.0, abs=1e-12)
    assert mse_to_psnr(1e-4) == pytest.approx(40.0, abs=1e-12)
    assert mse_to_psnr(1.0, peak=255.0) == pytest.approx(20 * math.log10(255.0))
    assert mse_to_psnr(0.0) == math.inf
    assert math.isnan(mse_to_psnr(float("nan")))
    with pytest.raises(ValueError):
        mse_to_psnr(-1.0)
    with pytest.raises(ValueError):
        mse_to_psnr(0.1, peak=0.0)


def test_psnr_known_value_and_identical():
    target = np.full((8, 9, 3), 0.1, np.float32)
    assert psnr(np.zeros_like(target), target) == pytest.approx(20.0, abs=1e-5)  # mse 0.01
    assert psnr(target, target.copy()) == math.inf


def test_accumulator_over_tiles_equals_whole():
    rng = np.random.default_rng(7)
    target = rng.random((97, 64, 3), dtype=np.float32)
    pred = np.clip(target + rng.normal(0, 0.03, target.shape).astype(np.float32), 0, 1)
    acc = PSNRAccumulator()
    for r0 in range(0, 97, 10):
        acc.update(pred[r0 : r0 + 10], target[r0 : r0 + 10])
    whole = psnr(pred, target)
    assert acc.count == pred.size
    assert acc.psnr == pytest.approx(whole, rel=1e-12)
    expected_mse = float(np.mean((pred.astype(np.float64) - target) ** 2))
    assert acc.mse == pytest.approx(expected_mse, rel=1e-12)
    assert acc.psnr == pytest.approx(10 * math.log10(1 / expected_mse), rel=1e-12)
    assert 25 < whole < 35


def test_accumulator_empty_and_shape_mismatch():
    acc = PSNRAccumulator()
    assert math.isnan(acc.mse) and math.isnan(acc.psnr)
    with pytest.raises(ValueError, match="shape"):
        acc.update(np.zeros((2, 3)), np.zeros((3, 2)))


def test_peak_for_unnormalised_integers():
    a = np.zeros((4, 4), np.uint8)
    b = np.full((4, 4), 10, np.uint8)  # mse 100 at peak 255
    assert psnr(a, b, peak=255.0) == pytest.approx(10 * math.log10(255.0**2 / 100.0))


def test_torch_tensors_match_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    target = rng.random((16, 20, 3), dtype=np.float32)
    pred = rng.random((16, 20, 3), dtype=np.float32)
    want = psnr(pred, target)
    assert psnr(torch.from_numpy(pred), torch.from_numpy(target)) == pytest.approx(want, rel=1e-6)
    acc = PSNRAccumulator()
    acc.update(torch.from_numpy(pred[:8]).requires_grad_(), target[:8])  # tensor + ndarray, grad-tracking tensor
    acc.update(pred[8:], torch.from_numpy(target[8:]))
    assert acc.psnr == pytest.approx(want, rel=1e-6)


def test_metrics_import_does_not_import_torch():
    code = "import sys, ngp_cli.metrics; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip() == "False"


def test_ssim_of_identical_and_noisy_images():
    from ngp_cli.metrics import ssim

    rng = np.random.default_rng(0)
    a = rng.random((16, 20, 3)).astype(np.float32)
    assert ssim(a, a) == pytest.approx(1.0)
    noisy = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1).astype(np.float32)
    assert 0.0 < ssim(noisy, a) < 0.9


@pytest.mark.parametrize("shape", [(8, 8, 3), (10, 64, 3), (64, 10, 3)])
def test_ssim_of_images_smaller_than_its_window_is_none(shape):
    """Regression: an 8x8 NeRF dataset crashed in skimage's SSIM (window 11 > side) after training, leaving no
    summary."""
    from ngp_cli.metrics import SSIM_MIN_SIDE, ssim

    a = np.zeros(shape, np.float32)
    assert ssim(a, a) is None
    side = np.zeros((SSIM_MIN_SIDE, SSIM_MIN_SIDE, 3), np.float32)
    assert ssim(side, side) == pytest.approx(1.0)  # the smallest size that has a full window
    with pytest.raises(ValueError, match="one shape"):
        ssim(a, np.zeros((12, 12, 3), np.float32))
