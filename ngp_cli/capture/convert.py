"""COLMAP poses and points in instant-ngp's ``transforms.json`` conventions (scripts/colmap2nerf.py), pure numpy/scipy.

Frames, step by step (each as colmap2nerf does it):

1. COLMAP gives ``cam_from_world`` (R, t): world -> OpenCV camera (x right, y down, z forward). Its inverse is the
   camera-to-world matrix; the camera's y and z axes are negated to get OpenGL camera axes (x right, y up, looking
   down -z), as NeRF and ``ngp train-nerf`` expect.
2. The world is turned by colmap2nerf's fixed rotation (swap x and y, negate z: ``P`` in :func:`colmap_to_opengl`).
3. "Up" is the mean of the cameras' up (+y) axes; the world is rotated so that it points along +z (the smallest
   rotation, :meth:`scipy.spatial.transform.Rotation.align_vectors`).
4. The point the cameras look at: for every pair of cameras, the midpoint of the shortest segment between their optical
   axes (only in front of the cameras: a point behind a camera is moved back to its centre), weighted by the squared
   sine of the angle between the axes (pairs with weight <= 1e-5 are skipped); the weighted mean is moved to the
   origin. When every pair is parallel, the mean camera centre is used instead (colmap2nerf would keep COLMAP's
   origin).
5. Scale: the mean camera distance from the origin becomes 4 ("NeRF sized", as the Blender scenes' camera radius).

The same similarity (rotation, translation, scale) is applied to COLMAP's 3-D points, so ``sparse_points.ply`` lies in
the frame of the poses. Camera rotations are never scaled.

``aabb_scale``: ``ngp train-nerf`` maps a world point x to ``x * 0.33 + 0.5`` (the loader's default ``scale`` and
``offset``, which the file leaves out) and trains inside ``[0.5 - aabb_scale/2, 0.5 + aabb_scale/2]^3``.
:func:`choose_aabb_scale` picks the smallest power of two (1 to 128) whose box holds :data:`AABB_POINT_SHARE` (95 %) of
the sparse points: an object seen all around gets 1 or 2, a room or an outdoor scene with a background more. (A share
rather than all points: a few far-away or wrong points should not grow the box for the rest.)

Intrinsics (:func:`intrinsics`): ``fl_x, fl_y, cx, cy, w, h`` in pixels, ``camera_angle_x/y`` in radians and OpenCV's
``k1, k2, p1, p2`` (0 where the model lacks them), from COLMAP's SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL or
OPENCV parameters, as colmap2nerf reads cameras.txt.

Source: instant-ngp scripts/colmap2nerf.py (``qvec2rotmat``, the axis flips, ``rotmat``, ``closest_point_2_lines``,
the 4.0 / avglen scale); instant-ngp docs/nerf_dataset_tips.md for ``aabb_scale``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "AABB_POINT_SHARE",
    "CAMERA_DISTANCE",
    "MAX_AABB_SCALE",
    "NERF_SCALE",
    "NormalizedScene",
    "center_of_attention",
    "choose_aabb_scale",
    "colmap_to_opengl",
    "intrinsics",
    "normalize_scene",
    "up_rotation",
]

CAMERA_DISTANCE = 4.0  # colmap2nerf: translations * 4.0 / avglen
NERF_SCALE = 0.33  # the loader's default world -> ngp scale (instant-ngp nerf_loader.h)
MAX_AABB_SCALE = 128  # the largest aabb_scale instant-ngp and ngp train-nerf accept
AABB_POINT_SHARE = 0.95
_PARALLEL_WEIGHT = 1e-5  # colmap2nerf: pairs of nearly parallel axes are skipped
# colmap2nerf's world turn after the camera-axis flip: c2w = c2w[[1, 0, 2, 3], :]; c2w[2, :] *= -1.
_P = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])

# COLMAP camera models and the order of their parameters (colmap/src/colmap/sensor/models.h).
_MODELS: dict[str, tuple[str, ...]] = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k1"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
}


def intrinsics(model: str, width: int, height: int, params) -> dict[str, float]:
    """transforms.json intrinsics of one COLMAP camera.

    Args:
        model: COLMAP model name, one of SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV.
        width, height: image size in pixels.
        params: the model's parameter vector (COLMAP's order; pixels for focal lengths and principal point).
    Returns:
        ``{"camera_angle_x", "camera_angle_y", "fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "p1", "p2"}``
        (floats; angles in radians, the others in pixels or unitless; distortion 0 where the model has none).
    Raises:
        ValueError: another model (fisheye and thin-prism models have no k1 k2 p1 p2 equivalent) or a parameter
            vector of the wrong length.
    Source: instant-ngp scripts/colmap2nerf.py (cameras.txt parsing).
    """
    names = _MODELS.get(str(model))
    if names is None:
        raise ValueError(f"camera model {model} is not supported (supported: {', '.join(_MODELS)})")
    values = [float(v) for v in params]
    if len(values) != len(names):
        raise ValueError(f"camera model {model} has {len(names)} parameters, got {len(values)}")
    p = dict(zip(names, values, strict=True))
    fx = p.get("fx", p.get("f"))
    fy = p.get("fy", p.get("f"))
    assert fx is not None and fy is not None
    w, h = float(width), float(height)
    return {
        "camera_angle_x": 2.0 * math.atan(w / (2.0 * fx)),
        "camera_angle_y": 2.0 * math.atan(h / (2.0 * fy)),
        "fl_x": fx,
        "fl_y": fy,
        "cx": p["cx"],
        "cy": p["cy"],
        "w": w,
        "h": h,
        "k1": p.get("k1", 0.0),
        "k2": p.get("k2", 0.0),
        "p1": p.get("p1", 0.0),
        "p2": p.get("p2", 0.0),
    }


def colmap_to_opengl(cam_from_world: np.ndarray) -> np.ndarray:
    """Camera-to-world matrices in OpenGL camera axes and colmap2nerf's turned world (steps 1 and 2 of the module).

    Args:
        cam_from_world: (N, 3, 4) float world -> OpenCV-camera matrices [R | t] (COLMAP's ``cam_from_world``).
    Returns:
        (N, 4, 4) float64 camera-to-world matrices: ``P @ inv([R | t])`` with the camera's y and z columns negated,
        P = [[0,1,0],[1,0,0],[0,0,-1]] (a proper rotation); last row (0, 0, 0, 1).
    """
    m = np.asarray(cam_from_world, dtype=np.float64)
    if m.ndim != 3 or m.shape[1:] != (3, 4):
        raise ValueError(f"expected (N, 3, 4) matrices, got shape {m.shape}")
    rot = m[:, :, :3]
    t = m[:, :, 3]
    c2w = np.zeros((m.shape[0], 4, 4))
    c2w[:, :3, :3] = np.transpose(rot, (0, 2, 1)) * np.array([1.0, -1.0, -1.0])  # R^T, camera y and z flipped
    c2w[:, :3, 3] = -np.einsum("nji,nj->ni", rot, t)  # camera centre -R^T t
    c2w[:, 3, 3] = 1.0
    c2w[:, :3, :] = np.einsum("ij,njk->nik", _P, c2w[:, :3, :])
    return c2w


def up_rotation(c2w: np.ndarray) -> np.ndarray:
    """(3, 3) rotation taking the mean up (+y) axis of the cameras ``c2w`` (N, 4, 4) or (N, 3, 4) to +z: the smallest
    such rotation (scipy's ``Rotation.align_vectors``; for an up exactly along -z, a half turn about x). Step 3 of the
    module; colmap2nerf's ``rotmat(up, [0, 0, 1])``."""
    from scipy.spatial.transform import Rotation

    up = np.asarray(c2w, dtype=np.float64)[:, :3, 1].sum(axis=0)
    norm = np.linalg.norm(up)
    if norm < 1e-12:  # cameras' up axes cancel out: keep the world as it is
        return np.eye(3)
    up = up / norm
    z = np.array([0.0, 0.0, 1.0])
    if up @ z < -1.0 + 1e-12:
        return np.diag([1.0, -1.0, -1.0])
    rot, _ = Rotation.align_vectors(z[None], up[None])
    return rot.as_matrix()


def center_of_attention(c2w: np.ndarray) -> np.ndarray:
    """The point the cameras look at (step 4 of the module), colmap2nerf's weighted ``closest_point_2_lines`` over all
    ordered pairs of cameras.

    Args:
        c2w: (N, 4, 4) or (N, 3, 4) OpenGL camera-to-world matrices (optical axis -z, centre in the last column).
    Returns:
        (3,) float64 world point: the weighted mean of the pairs' closest points (weights |d_a x d_b|^2), or the mean
        camera centre when no pair has a weight above 1e-5 (all axes parallel, or a single camera).
    """
    m = np.asarray(c2w, dtype=np.float64)[:, :3, :]
    o = m[:, :, 3]
    d = m[:, :, 2] / np.linalg.norm(m[:, :, 2], axis=1, keepdims=True)  # +z: behind the camera (t <= 0 is in front)
    oa, ob = o[:, None, :], o[None, :, :]
    da, db = d[:, None, :], d[None, :, :]
    c = np.cross(da, db)
    denom = (c * c).sum(-1)
    t = ob - oa
    # ta = det([t, db, c]) / denom, tb = det([t, da, c]) / denom (rows), as colmap2nerf.
    ta = np.einsum("abi,abi->ab", np.cross(t, db), c) / (denom + 1e-10)
    tb = np.einsum("abi,abi->ab", np.cross(t, da), c) / (denom + 1e-10)
    ta = np.minimum(ta, 0.0)
    tb = np.minimum(tb, 0.0)
    p = (oa + ta[..., None] * da + ob + tb[..., None] * db) * 0.5
    use = denom > _PARALLEL_WEIGHT
    total = denom[use].sum()
    if total <= 0.0:
        return o.mean(axis=0)
    return (p[use] * denom[use][:, None]).sum(axis=0) / total


@dataclass(frozen=True)
class NormalizedScene:
    """Poses and points in the transforms.json frame (see the module).

    Attributes:
        c2w: (N, 4, 4) float64 OpenGL camera-to-world matrices (up +z, centred, mean camera distance 4).
        points: (M, 3) float64 sparse points in the same frame.
        rotation: (3, 3) the world rotation applied to COLMAP's frame (colmap2nerf's turn, then up).
        center: (3,) the point moved to the origin, in the rotated frame (before scaling).
        scale: the factor applied after centring (4 / mean camera distance).
    A COLMAP world point x maps to ``scale * (rotation @ x - center)``.
    """

    c2w: np.ndarray
    points: np.ndarray
    rotation: np.ndarray
    center: np.ndarray
    scale: float

    def transform(self) -> np.ndarray:
        """(4, 4) similarity COLMAP world -> transforms.json world:
        ``[[scale * rotation, -scale * center], [0, 1]]``."""
        out = np.eye(4)
        out[:3, :3] = self.scale * self.rotation
        out[:3, 3] = -self.scale * self.center
        return out


def normalize_scene(cam_from_world: np.ndarray, points: np.ndarray) -> NormalizedScene:
    """Apply colmap2nerf's re-orientation, centring and scaling (the module's steps 1 to 5).

    Args:
        cam_from_world: (N, 3, 4) COLMAP world -> OpenCV camera matrices of the registered images, N >= 1.
        points: (M, 3) COLMAP world points (M may be 0).
    Returns:
        a :class:`NormalizedScene`.
    Raises:
        ValueError: when all cameras sit at the same point (nothing to scale by) or the input holds NaN/inf.
    Source: instant-ngp scripts/colmap2nerf.py.
    """
    c2w = colmap_to_opengl(cam_from_world)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if not (np.isfinite(c2w).all() and np.isfinite(pts).all()):
        raise ValueError("camera poses or points are not finite")
    up = up_rotation(c2w)
    c2w[:, :3, :] = np.einsum("ij,njk->nik", up, c2w[:, :3, :])
    center = center_of_attention(c2w)
    c2w[:, :3, 3] -= center
    mean_distance = float(np.linalg.norm(c2w[:, :3, 3], axis=1).mean())
    if not mean_distance > 1e-12:
        raise ValueError("all cameras are at the point they look at: the scene has no scale")
    scale = CAMERA_DISTANCE / mean_distance
    c2w[:, :3, 3] *= scale
    rotation = up @ _P
    out_points = scale * (pts @ rotation.T - center)
    return NormalizedScene(c2w=c2w, points=out_points, rotation=rotation, center=center, scale=scale)


def choose_aabb_scale(points: np.ndarray, *, share: float = AABB_POINT_SHARE, nerf_scale: float = NERF_SCALE,
                      default: int = 16) -> int:
    """The smallest power of two ``a`` in 1..128 whose scene box holds ``share`` of ``points``.

    Args:
        points: (M, 3) points in the transforms.json frame (world units; the box is centred on the origin).
        share: fraction (0, 1] of the points the box must hold.
        nerf_scale: the loader's world -> ngp scale (0.33): the box is ``|x|_inf <= a / (2 * nerf_scale)``.
        default: returned when there are no points (colmap2nerf's default, 16).
    Returns:
        the power of two ``a`` (capped at 128 when even that box holds fewer).
    Source: instant-ngp docs/nerf_dataset_tips.md (aabb_scale: a power of two up to 128; 1 = the unit cube).
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if pts.shape[0] == 0:
        return default
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share}")
    reach = float(np.quantile(np.abs(pts).max(axis=1), share))  # half extent the box needs, world units
    need = 2.0 * nerf_scale * reach
    a = 1
    while a < need and a < MAX_AABB_SCALE:
        a *= 2
    return a
