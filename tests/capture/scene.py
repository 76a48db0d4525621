"""A video of the built-in synthetic scene with known poses, for the ``ngp process-data`` tests.

The demo scene (ngp_cli/tasks/nerf/synthetic.py) is three smooth spheres and one checkered box on a transparent
background: at 240 px SIFT finds about 50 keypoints per frame there, too few for COLMAP to start a model (measured:
no model from 32 orbit frames at 200, 320 or 480 px). So the frames are composited over a textured surround, ray cast
here exactly like the scene itself: a floor at z = -0.6 and a dome of radius 9 around the origin, tiled with 0.2-unit
(floor) and 0.6-unit (dome) cells of random colour. The camera circles the scene once on a wavy orbit (elevation
30 +- 10 degrees, radius 4 +- 0.4), as a hand-held video would; the field of view is 1 rad (57 degrees).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

FOV = 1.0
_FLOOR_Z = -0.6
_DOME_RADIUS = 9.0
_CELL = 0.2
_TABLE = np.random.default_rng(1).random((4099, 3))
_SUBPIXEL = (0.25, 0.75)


def _cells(p: np.ndarray, size: float) -> np.ndarray:
    q = np.floor(p / size).astype(np.int64)
    return _TABLE[(q[..., 0] * 73856093 ^ q[..., 1] * 19349663 ^ q[..., 2] * 83492791) % len(_TABLE)]


def _surround(c2w: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, 3) float64 colour of the floor and dome behind every pixel (2x2 rays per pixel, as render_view)."""
    focal = 0.5 * width / math.tan(0.5 * FOV)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    o = c2w[:3, 3]
    acc = np.zeros((height, width, 3))
    for dy in _SUBPIXEL:
        for dx in _SUBPIXEL:
            cam = np.stack([(cols + dx - 0.5 * width) / focal, -(rows + dy - 0.5 * height) / focal,
                            -np.ones_like(cols)], axis=-1)
            d = cam @ c2w[:3, :3].T
            d /= np.linalg.norm(d, axis=-1, keepdims=True)
            b = d @ o
            t_dome = -b + np.sqrt(b * b - (o @ o - _DOME_RADIUS ** 2))
            down = d[..., 2] < 0
            t_floor = np.where(down, (_FLOOR_Z - o[2]) / np.where(down, d[..., 2], -1.0), np.inf)
            p = o + np.minimum(t_dome, t_floor)[..., None] * d
            floor = (t_floor < t_dome)[..., None]
            acc += np.where(floor, _cells(p * np.array([1.0, 1.0, 0.0]), _CELL), _cells(p, 3 * _CELL))
    return acc / len(_SUBPIXEL) ** 2


def orbit_poses(n: int) -> np.ndarray:
    """(n, 4, 4) float64 OpenGL camera-to-world matrices on the wavy orbit, looking at the origin, +z up."""
    from ngp_cli.tasks.nerf.camera_path import look_at

    poses = np.zeros((n, 4, 4))
    for i in range(n):
        az = 2.0 * math.pi * i / n
        elevation = math.radians(30.0 + 10.0 * math.sin(2.0 * az))
        radius = 4.0 + 0.4 * math.sin(3.0 * az)
        eye = radius * np.array([math.cos(elevation) * math.cos(az), math.cos(elevation) * math.sin(az),
                                 math.sin(elevation)])
        poses[i, :3] = look_at(eye, np.zeros(3), np.array([0.0, 0.0, 1.0]))
        poses[i, 3, 3] = 1.0
    return poses


def render_frames(poses: np.ndarray, size: int) -> list[np.ndarray]:
    """(size, size, 3) uint8 frames: the demo scene (its exact renderer) over the textured surround."""
    from ngp_cli.tasks.nerf.synthetic import render_view

    frames = []
    for pose in poses:
        rgba = render_view(pose, size, size, camera_angle_x=FOV)
        alpha = rgba[..., 3:]
        rgb = rgba[..., :3] * alpha + _surround(pose, size, size) * (1.0 - alpha)
        frames.append(np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8))
    return frames


def write_video(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    """H.264 mp4 at imageio-ffmpeg's best quality (10)."""
    import imageio_ffmpeg

    h, w = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, quality=10, macro_block_size=1)
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The similarity (s, R, t) minimising sum |s R src_i + t - dst_i|^2 (Umeyama 1991), src/dst (N, 3)."""
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(3)
    e[2, 2] = np.sign(np.linalg.det(u @ vt))
    rot = u @ e @ vt
    scale = float(np.trace(np.diag(sig) @ e) / (xs ** 2).sum(axis=1).mean())
    return scale, rot, mu_d - scale * rot @ mu_s
