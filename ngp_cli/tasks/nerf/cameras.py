"""Camera geometry for NeRF: pose conversion, OpenCV lens undistortion and ray generation (pure torch, no I/O).

Conventions
-----------
* Camera axes are OpenGL/Blender ones throughout: x to the right, y up, the camera looks down its -z axis. A
  camera-to-world matrix ``c2w`` (3, 4) maps camera coordinates to world coordinates: ``p_w = R @ p_c + t`` with
  ``R = c2w[:, :3]`` and ``t = c2w[:, 3]`` (the camera centre).
* The "ngp frame" is the dataset's world frame scaled by ``scale`` and shifted by ``offset`` (instant-ngp defaults 0.33
  and (0.5, 0.5, 0.5)), so that a scene of ``aabb_scale`` 1 fits the unit cube [0, 1]^3. Unlike instant-ngp's
  ``nerf_matrix_to_ngp`` (include/neural-graphics-primitives/nerf_loader.h) the axes are *not* cycled and the camera
  axes are *not* flipped to OpenCV ones: only the translation changes.
* Pixels: ``(x, y)`` in pixel units of the image, x to the right and y *downwards*; pixel (column i, row j) covers
  [i, i+1) x [j, j+1) and has its centre at (i + 0.5, j + 0.5), as in instant-ngp (``uv = (pixel + 0.5) / resolution``).
* Intrinsics ``(fx, fy, cx, cy)`` are in pixels; normalised image coordinates are ``((x - cx) / fx, (y - cy) / fy)``
  (y still downwards, as OpenCV), and the camera-space ray is ``(x_n, -y_n, -1)`` in OpenGL axes.
* Lens distortion is OpenCV's radial-tangential ("OPENCV") model with coefficients ``(k1, k2, p1, p2)`` acting on
  normalised coordinates, as in instant-ngp's ``radial_and_tangential_undistort`` (src/common_device.cu).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["distort", "generate_rays", "nerf_matrix_to_ngp", "pixel_grid", "undistort"]

# Newton's method converges quadratically from the distorted point for any realistic lens (|distortion| << 1); a
# fixed count keeps the function free of host-device synchronisation.
_UNDISTORT_ITERATIONS = 12


def nerf_matrix_to_ngp(m: Tensor, scale: float, offset) -> Tensor:
    """Convert NeRF/Blender camera-to-world matrices into the ngp frame (scaled and offset, axes kept).

    Args:
        m: (N, 4, 4) or (N, 3, 4) float64/float32 camera-to-world matrices with OpenGL camera axes (x right, y up,
            looking down -z), as stored in a ``transforms.json`` ``transform_matrix``. The last row of a 4x4 matrix is
            ignored.
        scale: world units -> ngp units factor applied to the translation (instant-ngp default 0.33).
        offset: (3,) sequence or tensor added to the scaled translation (instant-ngp default (0.5, 0.5, 0.5)).
    Returns:
        (N, 3, 4) float32 tensor on ``m``'s device: rotation columns unchanged (not rescaled, not flipped, not cycled),
        translation ``t * scale + offset``. Computed in float64 before the cast.
    Raises:
        ValueError: when ``m`` is not (N, 3, 4) or (N, 4, 4).
    Source: instant-ngp ``nerf_matrix_to_ngp`` (nerf_loader.h), minus its axis flip and axis cycling.
    """
    if m.dim() != 3 or m.shape[1] not in (3, 4) or m.shape[2] != 4:
        raise ValueError(f"expected (N, 3, 4) or (N, 4, 4) matrices, got shape {tuple(m.shape)}")
    out = m[:, :3, :].to(torch.float64).clone()
    off = torch.as_tensor(offset, dtype=torch.float64, device=m.device).reshape(3)
    out[:, :, 3] = out[:, :, 3] * float(scale) + off
    return out.to(torch.float32)


def distort(x: Tensor, dist: Tensor) -> Tensor:
    """Apply OpenCV's radial-tangential distortion to normalised image coordinates.

    Args:
        x: (R, 2) undistorted normalised coordinates (u, v) (v downwards, as OpenCV).
        dist: (R, 4) coefficients k1, k2, p1, p2 (or broadcastable, e.g. (4,)).
    Returns:
        (R, 2) distorted coordinates ``x + delta(x)`` with r2 = u^2 + v^2, radial = k1 r2 + k2 r2^2,
        du = u radial + 2 p1 u v + p2 (r2 + 2 u^2), dv = v radial + 2 p2 u v + p1 (r2 + 2 v^2).
    Source: OpenCV camera model; instant-ngp ``radial_and_tangential_distort``.
    """
    dist = dist.to(x.dtype).expand(x.shape[0], 4)
    k1, k2, p1, p2 = dist.unbind(-1)
    u, v = x.unbind(-1)
    uu, vv, uv = u * u, v * v, u * v
    r2 = uu + vv
    radial = k1 * r2 + k2 * r2 * r2
    du = u * radial + 2 * p1 * uv + p2 * (r2 + 2 * uu)
    dv = v * radial + 2 * p2 * uv + p1 * (r2 + 2 * vv)
    return torch.stack((u + du, v + dv), dim=-1)


def undistort(x: Tensor, dist: Tensor) -> Tensor:
    """Invert :func:`distort`: find the undistorted normalised coordinates that distort to ``x``.

    Solves ``distort(y) = x`` by Newton's method with the analytic 2x2 Jacobian, starting at ``y = x``, for a fixed
    number of iterations (no host synchronisation, so it runs on any device); a step whose Jacobian is singular is
    skipped. With all four coefficients zero the result is exactly ``x`` (the residual is exactly zero).

    Args:
        x: (R, 2) distorted normalised coordinates ((px - cx) / fx, (py - cy) / fy), float32 or float64.
        dist: (R, 4) k1, k2, p1, p2 (or broadcastable, e.g. (4,)).
    Returns:
        (R, 2) undistorted coordinates, same dtype and device as ``x``. Accuracy ~1e-7 (float32) for realistic lenses.
    Source: instant-ngp ``iterative_camera_undistortion`` (Newton with numerical differences, after COLMAP); here the
        Jacobian is analytic.
    """
    dist = dist.to(x.dtype).expand(x.shape[0], 4)
    k1, k2, p1, p2 = dist.unbind(-1)
    xu, xv = x.unbind(-1)
    u, v = xu.clone(), xv.clone()
    for _ in range(_UNDISTORT_ITERATIONS):
        uu, vv, uv = u * u, v * v, u * v
        r2 = uu + vv
        radial = k1 * r2 + k2 * r2 * r2
        fu = u + u * radial + 2 * p1 * uv + p2 * (r2 + 2 * uu) - xu
        fv = v + v * radial + 2 * p2 * uv + p1 * (r2 + 2 * vv) - xv
        dr = 2 * (k1 + 2 * k2 * r2)  # d radial / d r2 times 2, so d radial/du = dr * u
        j00 = 1 + radial + dr * uu + 2 * p1 * v + 6 * p2 * u
        j01 = dr * uv + 2 * p1 * u + 2 * p2 * v
        j10 = dr * uv + 2 * p2 * v + 2 * p1 * u
        j11 = 1 + radial + dr * vv + 2 * p2 * u + 6 * p1 * v
        det = j00 * j11 - j01 * j10
        ok = det.abs() > 1e-12
        inv = torch.where(ok, 1.0 / torch.where(ok, det, torch.ones_like(det)), torch.zeros_like(det))
        u = u - (j11 * fu - j01 * fv) * inv
        v = v - (j00 * fv - j10 * fu) * inv
    return torch.stack((u, v), dim=-1)


def generate_rays(
    c2w: Tensor, intrinsics: Tensor, pixels: Tensor, distortion: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Rays through pixel positions of pinhole (optionally distorted) cameras, one ray per row.

    Args:
        c2w: (R, 3, 4) camera-to-world matrices, OpenGL camera axes (x right, y up, looking down -z), in the ngp frame.
        intrinsics: (R, 4) fx, fy, cx, cy in pixels.
        pixels: (R, 2) float (x, y) positions in pixel units, y downwards; pixel (i, j) has its centre at
            (i + 0.5, j + 0.5) (see :func:`pixel_grid`).
        distortion: (R, 4) k1, k2, p1, p2 of OpenCV's radial-tangential model, or None for an ideal pinhole.
    Returns:
        origins (R, 3) float32 = ``c2w[:, :, 3]``; directions (R, 3) float32 of unit length: the camera-space vector
        ``(x_n, -y_n, -1)`` with ``(x_n, y_n)`` = undistort(((px - cx) / fx, (py - cy) / fy)), rotated by
        ``c2w[:, :, :3]`` and normalised. All on ``pixels``' device (the other inputs are moved there).
    Source: instant-ngp ``pixel_to_ray`` (src/common_device.cu), in OpenGL instead of OpenCV camera axes.
    """
    dev = pixels.device
    c2w = c2w.to(device=dev, dtype=torch.float32)
    k = intrinsics.to(device=dev, dtype=torch.float32)
    p = pixels.to(torch.float32)
    xn = torch.stack(((p[:, 0] - k[:, 2]) / k[:, 0], (p[:, 1] - k[:, 3]) / k[:, 1]), dim=-1)
    if distortion is not None:
        xn = undistort(xn, distortion.to(device=dev, dtype=torch.float32))
    rot = c2w[:, :, :3]
    d = xn[:, 0:1] * rot[:, :, 0] - xn[:, 1:2] * rot[:, :, 1] - rot[:, :, 2]
    d = d / torch.linalg.vector_norm(d, dim=-1, keepdim=True)
    return c2w[:, :, 3].contiguous(), d


def pixel_grid(width: int, height: int, device: torch.device | str | None = None) -> Tensor:
    """Centres of every pixel of a width x height image as (H*W, 2) float32 (x + 0.5, y + 0.5), row-major
    (row y = index // width, column x = index % width)."""
    xs = torch.arange(width, dtype=torch.float32, device=device) + 0.5
    ys = torch.arange(height, dtype=torch.float32, device=device) + 0.5
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)
    return grid.reshape(-1, 2)
