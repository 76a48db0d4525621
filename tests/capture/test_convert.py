"""ngp_cli.capture.convert on synthetic poses: colmap2nerf's orientation, centring and scaling, intrinsics and the
chosen aabb_scale."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from ngp_cli.capture.convert import (
    center_of_attention,
    choose_aabb_scale,
    colmap_to_opengl,
    intrinsics,
    normalize_scene,
)


def _look_at_gl(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """4x4 OpenGL camera-to-world (looking down -z) at ``eye`` towards ``target``."""
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, np.cross(back, right), back, eye
    return m


def _colmap_scene(seed: int, n: int = 12):
    """Cameras around a target in a random similarity frame, as COLMAP could report them: (cam_from_world (n, 3, 4),
    target in that frame, the world up in that frame, the frame's scale)."""
    rng = np.random.default_rng(seed)
    target = np.array([0.3, -0.2, 0.1])
    c2w = []
    for i in range(n):
        az = 2 * math.pi * i / n + rng.uniform(-0.1, 0.1)
        el = math.radians(rng.uniform(15, 50))
        r = rng.uniform(2.5, 3.5)
        eye = target + r * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        c2w.append(_look_at_gl(eye, target, np.array([0.0, 0.0, 1.0])))
    c2w = np.array(c2w)
    # An arbitrary COLMAP frame: x_colmap = s * Q @ x + b.
    q = Rotation.random(random_state=seed).as_matrix()
    s, b = rng.uniform(0.2, 5.0), rng.normal(size=3) * 3
    cam_from_world = []
    for m in c2w:
        r_cv = m[:3, :3] * np.array([1.0, -1.0, -1.0])  # OpenGL -> OpenCV camera axes
        r_col = q @ r_cv  # camera-to-COLMAP-world rotation
        centre = s * q @ m[:3, 3] + b
        cam_from_world.append(np.concatenate([r_col.T, (-r_col.T @ centre)[:, None]], axis=1))
    return np.array(cam_from_world), s * q @ target + b, q @ np.array([0.0, 0.0, 1.0]), s


def _project_cv(cam_from_world: np.ndarray, pts: np.ndarray) -> np.ndarray:
    cam = pts @ cam_from_world[:, :3].T + cam_from_world[:, 3]
    return cam[:, :2] / cam[:, 2:3]


def test_colmap_to_opengl_flips_camera_axes_and_turns_the_world():
    # COLMAP's identity pose: camera at the origin, OpenCV axes = world axes.
    out = colmap_to_opengl(np.eye(4)[None, :3])
    # OpenGL axes diag(1, -1, -1), then colmap2nerf's turn (swap x and y, negate z).
    expected = np.array([[0.0, -1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    np.testing.assert_allclose(out[0], expected, atol=1e-12)
    # A translated camera: the centre is -R^T t, turned the same way.
    m = np.concatenate([np.eye(3), np.array([[1.0], [2.0], [3.0]])], axis=1)
    out = colmap_to_opengl(m[None])
    np.testing.assert_allclose(out[0, :3, 3], [-2.0, -1.0, 3.0], atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_normalize_scene_orients_centres_and_scales(seed):
    cam_from_world, target, world_up, _ = _colmap_scene(seed)
    rng = np.random.default_rng(seed + 10)
    pts = target + rng.normal(size=(50, 3))
    scene = normalize_scene(cam_from_world, pts)
    c2w = scene.c2w
    # Proper rotations, bottom row kept.
    rots = c2w[:, :3, :3]
    np.testing.assert_allclose(np.einsum("nji,njk->nik", rots, rots), np.broadcast_to(np.eye(3), rots.shape),
                               atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(rots), 1.0, atol=1e-9)
    np.testing.assert_allclose(c2w[:, 3], np.broadcast_to([0.0, 0.0, 0.0, 1.0], (len(c2w), 4)))
    # Up: the mean camera up axis is +z ...
    up = c2w[:, :3, 1].sum(axis=0)
    np.testing.assert_allclose(up / np.linalg.norm(up), [0.0, 0.0, 1.0], atol=1e-9)
    # ... and so is the true world up (the cameras have no roll about the target, so their mean up is tilted towards
    # the target but lies in the plane of world up: its horizontal part cancels over the orbit).
    assert (scene.rotation @ world_up)[2] > math.cos(math.radians(3))
    # Centre: the target the cameras look at is the origin; every optical axis passes through it.
    np.testing.assert_allclose(scene.scale * (scene.rotation @ target - scene.center), 0.0, atol=1e-9)
    for m in c2w:
        axis = m[:3, 2]
        np.testing.assert_allclose(np.cross(axis, -m[:3, 3]), 0.0, atol=1e-9)
    # Scale: mean camera distance 4.
    assert np.linalg.norm(c2w[:, :3, 3], axis=1).mean() == pytest.approx(4.0, rel=1e-12)
    # Points follow the cameras: every point projects to the same pixel before and after.
    for cfw, m in zip(cam_from_world, c2w, strict=True):
        rot_cv = m[:3, :3] * np.array([1.0, -1.0, -1.0])
        after = np.concatenate([rot_cv.T, (-rot_cv.T @ m[:3, 3])[:, None]], axis=1)
        np.testing.assert_allclose(_project_cv(after, scene.points), _project_cv(cfw, pts), atol=1e-9)
    # The similarity maps COLMAP points as documented.
    homo = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)
    np.testing.assert_allclose((homo @ scene.transform().T)[:, :3], scene.points, atol=1e-9)


def test_center_of_attention_ignores_points_behind_cameras_and_parallel_axes():
    # Two cameras looking at (0, 0, 0) from +x and +y: their axes meet there.
    a = _look_at_gl(np.array([3.0, 0.0, 0.0]), np.zeros(3), np.array([0.0, 0.0, 1.0]))
    b = _look_at_gl(np.array([0.0, 3.0, 0.0]), np.zeros(3), np.array([0.0, 0.0, 1.0]))
    np.testing.assert_allclose(center_of_attention(np.stack([a, b])), 0.0, atol=1e-9)
    # Looking away from each other: the lines meet behind both cameras, so each closest point is clamped to its
    # camera centre; their mean is the midpoint of the centres.
    a2 = _look_at_gl(np.array([3.0, 0.0, 0.0]), np.array([6.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0]))
    b2 = _look_at_gl(np.array([0.0, 3.0, 0.0]), np.array([0.0, 6.0, 0.0]), np.array([0.0, 0.0, 1.0]))
    np.testing.assert_allclose(center_of_attention(np.stack([a2, b2])), [1.5, 1.5, 0.0], atol=1e-9)
    # All axes parallel: the mean camera centre.
    c = _look_at_gl(np.array([1.0, 0.0, 0.0]), np.array([1.0, 5.0, 0.0]), np.array([0.0, 0.0, 1.0]))
    d = _look_at_gl(np.array([3.0, 0.0, 0.0]), np.array([3.0, 5.0, 0.0]), np.array([0.0, 0.0, 1.0]))
    np.testing.assert_allclose(center_of_attention(np.stack([c, d])), [2.0, 0.0, 0.0], atol=1e-9)


def test_normalize_scene_refuses_cameras_without_spread():
    one = np.concatenate([np.eye(3), np.zeros((3, 1))], axis=1)
    with pytest.raises(ValueError, match="no scale"):
        normalize_scene(np.stack([one, one]), np.zeros((0, 3)))


def test_intrinsics_of_each_model():
    opencv = intrinsics("OPENCV", 1080, 1920, [1375.5, 1374.5, 554.5, 965.3, 0.05, -0.08, -0.001, 0.0002])
    assert opencv["fl_x"] == 1375.5 and opencv["fl_y"] == 1374.5
    assert (opencv["cx"], opencv["cy"], opencv["w"], opencv["h"]) == (554.5, 965.3, 1080.0, 1920.0)
    assert (opencv["k1"], opencv["k2"], opencv["p1"], opencv["p2"]) == (0.05, -0.08, -0.001, 0.0002)
    assert opencv["camera_angle_x"] == pytest.approx(2 * math.atan(540 / 1375.5))
    assert opencv["camera_angle_y"] == pytest.approx(2 * math.atan(960 / 1374.5))
    radial = intrinsics("SIMPLE_RADIAL", 200, 100, [150.0, 99.0, 51.0, 0.01])
    assert (radial["fl_x"], radial["fl_y"], radial["cx"], radial["cy"]) == (150.0, 150.0, 99.0, 51.0)
    assert (radial["k1"], radial["k2"], radial["p1"], radial["p2"]) == (0.01, 0.0, 0.0, 0.0)
    two = intrinsics("RADIAL", 200, 100, [150.0, 99.0, 51.0, 0.01, -0.02])
    assert (two["k1"], two["k2"]) == (0.01, -0.02)
    pinhole = intrinsics("PINHOLE", 200, 100, [150.0, 140.0, 99.0, 51.0])
    assert (pinhole["fl_x"], pinhole["fl_y"], pinhole["k1"]) == (150.0, 140.0, 0.0)
    assert intrinsics("SIMPLE_PINHOLE", 200, 100, [150.0, 99.0, 51.0])["fl_y"] == 150.0
    with pytest.raises(ValueError, match="not supported"):
        intrinsics("OPENCV_FISHEYE", 200, 100, [1.0] * 8)
    with pytest.raises(ValueError, match="parameters"):
        intrinsics("OPENCV", 200, 100, [1.0] * 4)


def test_choose_aabb_scale():
    rng = np.random.default_rng(0)
    cube = rng.uniform(-1.0, 1.0, size=(1000, 3))
    # The box of aabb_scale a holds |x|_inf <= a / (2 * 0.33) = 1.515 a.
    assert choose_aabb_scale(cube * 1.5) == 1
    assert choose_aabb_scale(cube * 1.6) == 2
    assert choose_aabb_scale(cube * 5.0) == 4
    assert choose_aabb_scale(cube * 7.0) == 8
    # A few far points (< 5 %) do not grow the box; more than 5 % do.
    far = np.full((30, 3), 100.0)
    assert choose_aabb_scale(np.concatenate([cube, far])) == 1
    assert choose_aabb_scale(np.concatenate([cube, np.full((80, 3), 100.0)])) == 128
    assert choose_aabb_scale(cube * 1e6) == 128
    assert choose_aabb_scale(np.zeros((0, 3))) == 16
