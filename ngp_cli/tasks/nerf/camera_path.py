"""Camera trajectories for ``ngp render``: look-at matrices, an orbit around the training cameras, and path files.

All matrices are camera-to-world in the OpenGL convention used by NeRF's ``transforms.json``: columns 0, 1, 2 are the
camera's x (right), y (up) and z axes in world coordinates, the camera looks down its -z axis, column 3 is its position.
Nothing here assumes a particular world frame: an orbit computed from matrices in the NeRF frame is in the NeRF frame,
from matrices in instant-ngp's unit-cube frame it is in that frame.

Path files (:func:`load_camera_path`) come in two formats:

1. transforms.json style (instant-ngp / NeRF)::

       {"fps": 30, "camera_angle_x": 0.69, "fl_x": 1111.1, "w": 800, "h": 800,
        "frames": [{"transform_matrix": [[...4 numbers...] x 4], "camera_angle_x": 0.69 or "fl_x": 1111.1}, ...]}

   Per-frame ``fl_x`` (pixels) / ``camera_angle_x`` (radians, horizontal) override the top-level ones; all top-level
   keys are optional.
2. nerfstudio's ``camera_path.json`` (written by its viewer; read as in nerfstudio's ``get_path_from_json``)::

       {"render_width": 1920, "render_height": 1080, "fps": 24, "camera_type": "perspective",
        "camera_path": [{"camera_to_world": [16 numbers, row-major 4x4], "fov": 50 (degrees, vertical)}, ...]}

Matrices are taken as they are in the file (no re-orthonormalisation, no change of world frame).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ngp_cli.errors import DataError
from ngp_cli.tasks.nerf.transforms import frame_list, matrix, number, read_object

__all__ = ["CameraPath", "load_camera_path", "look_at", "orbit_path", "scene_center", "up_axis"]


# --------------------------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------------------------


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _any_perpendicular(v: np.ndarray) -> np.ndarray:
    """A unit vector perpendicular to the unit vector ``v``."""
    helper = np.eye(3)[int(np.argmin(np.abs(v)))]
    return _unit(np.cross(v, helper))


def look_at(eye, target, up) -> np.ndarray:
    """OpenGL camera-to-world matrix of a camera at ``eye`` looking at ``target``.

    Args:
        eye, target: (3,) world positions (any units); must differ.
        up: (3,) world up direction (any length); the camera's y axis is ``up`` made orthogonal to the view direction.
            When ``up`` is (nearly) parallel to the view direction, an arbitrary perpendicular up is used instead.

    Returns:
        (3, 4) float64 ``[right | up' | -forward | eye]`` with an orthonormal, right-handed rotation, so the camera's
        -z axis points from ``eye`` to ``target``.

    Raises ``ValueError`` when ``eye`` equals ``target`` or ``up`` is zero / not finite.
    """
    eye = np.asarray(eye, dtype=np.float64).reshape(3)
    target = np.asarray(target, dtype=np.float64).reshape(3)
    up = np.asarray(up, dtype=np.float64).reshape(3)
    delta = target - eye
    dist = np.linalg.norm(delta)
    up_len = np.linalg.norm(up)
    if not (np.isfinite(dist) and dist > 0.0):
        raise ValueError(f"look_at: eye {eye.tolist()} and target {target.tolist()} must be distinct finite points")
    if not (np.isfinite(up_len) and up_len > 0.0):
        raise ValueError(f"look_at: up vector {up.tolist()} must be non-zero and finite")
    forward = delta / dist
    right = np.cross(forward, up / up_len)
    if np.linalg.norm(right) < 1e-9:
        right = _any_perpendicular(forward)
    right = _unit(right)
    cam_up = np.cross(right, forward)
    return np.stack([right, cam_up, -forward, eye], axis=1)


def _as_poses(c2w: Any) -> np.ndarray:
    """(N, 3|4, 4) torch tensor / array-like -> (N, 3, 4) float64 numpy."""
    if hasattr(c2w, "detach"):  # torch tensor, without importing torch here
        c2w = c2w.detach().cpu().numpy()
    a = np.asarray(c2w, dtype=np.float64)
    if a.ndim != 3 or a.shape[1] not in (3, 4) or a.shape[2] != 4 or a.shape[0] == 0:
        raise ValueError(
            f"expected camera-to-world matrices of shape (N, 3, 4) or (N, 4, 4) with N >= 1, got {a.shape}"
        )
    if not np.isfinite(a[:, :3]).all():
        raise ValueError("camera-to-world matrices contain NaN or infinite values")
    return a[:, :3, :]


def scene_center(c2w: Any) -> np.ndarray:
    """The point the cameras look at: closest, in least squares, to all cameras' optical axes.

    Minimises ``sum_i |(I - d_i d_i^T)(p - o_i)|^2`` over p, with o_i the camera positions and d_i their viewing
    directions (-z columns): the "center of attention" of instant-ngp's ``scripts/colmap2nerf.py``, which averages
    the closest points of pairs of axes instead, in closed form. Falls back, when the axes are (nearly) parallel,
    to the mean over cameras of the mean camera position projected onto each optical axis (for parallel axes: about
    the mean camera position).

    Args: c2w (N, 3, 4) or (N, 4, 4) OpenGL camera-to-world matrices (numpy or torch).
    Returns: (3,) float64 point in the matrices' world frame.
    Raises ``ValueError`` for a wrong shape or non-finite values.
    """
    poses = _as_poses(c2w)
    origins = poses[:, :, 3]
    dirs = -poses[:, :, 2]
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    proj = np.eye(3)[None] - dirs[:, :, None] * dirs[:, None, :]  # (N, 3, 3) projectors orthogonal to each axis
    a = proj.sum(axis=0)
    b = np.einsum("nij,nj->i", proj, origins)
    eig = np.linalg.eigvalsh(a)
    if eig[0] > 1e-6 * max(eig[-1], 1e-300):
        return np.linalg.solve(a, b)
    mean = origins.mean(axis=0)
    t = np.einsum("ni,ni->n", mean[None] - origins, dirs)
    return (origins + t[:, None] * dirs).mean(axis=0)


def up_axis(c2w: Any) -> np.ndarray:
    """The world's up direction as seen by the cameras: a unit (3,) float64 vector in the matrices' frame.

    Starts from the mean of the cameras' up vectors (column 1). A camera without roll has its right vector (column 0)
    perpendicular to the world's up, so when the right vectors span a plane, the up axis is taken as the direction
    most perpendicular to all of them (least squares: the eigenvector of ``sum_i x_i x_i^T`` with the smallest
    eigenvalue), signed to agree with the mean up vector. That is exact for roll-free cameras at any azimuths, where
    the plain mean tilts towards the side with more cameras. When the right vectors are (nearly) all parallel (a
    forward-facing capture, a single camera), the mean up vector is used, made perpendicular to their common
    direction. Last resort, if the mean up vector vanishes: the normal of the plane best fitting the camera positions.

    Args: c2w (N, 3, 4) or (N, 4, 4) OpenGL camera-to-world matrices (numpy or torch).
    Raises ``ValueError`` for a wrong shape or non-finite values.
    """
    poses = _as_poses(c2w)
    rights = poses[:, :, 0] / np.linalg.norm(poses[:, :, 0], axis=1, keepdims=True)
    ups = poses[:, :, 1] / np.linalg.norm(poses[:, :, 1], axis=1, keepdims=True)
    mean_up = ups.mean(axis=0)
    if np.linalg.norm(mean_up) < 1e-6:
        origins = poses[:, :, 3]
        if len(origins) < 3:
            raise ValueError("cannot tell the up direction: the cameras' up vectors cancel out")
        normal = np.linalg.svd(origins - origins.mean(axis=0))[2][-1]
        return _unit(normal)
    w, vecs = np.linalg.eigh(rights.T @ rights / len(rights))  # ascending eigenvalues, sum = 1
    if w[1] > 1e-4 and w[1] > 25.0 * w[0]:  # right vectors span a plane: its normal is the up axis
        up = vecs[:, 0]
        return up if up @ mean_up >= 0.0 else -up
    common = vecs[:, 2]  # the right vectors' (nearly) shared direction
    up = mean_up - (mean_up @ common) * common
    return _unit(up if np.linalg.norm(up) > 1e-6 else mean_up)


def orbit_path(c2w: Any, n_frames: int, *, center=None) -> np.ndarray:
    """A closed circular camera path around the scene, at the training cameras' mean distance and elevation.

    * centre: ``center`` (3,) if given, else :func:`scene_center` (least-squares intersection of the optical axes);
    * up axis u: :func:`up_axis`, the direction perpendicular to all cameras' right vectors, signed like the mean of
      their up vectors (column 1) (for parallel right vectors: the normalised mean up vector);
    * with v_i = position_i - centre: distance D = mean |v_i|, elevation e = mean asin(v_i·u / |v_i|); the circle has
      radius D cos e, lies at height D sin e above the centre along u;
    * frame k of n is at azimuth 2πk/n (counter-clockwise about u, endpoint excluded so the loop is seamless) from the
      first training camera's azimuth, and looks at the centre with up u (:func:`look_at`).

    Args:
        c2w: (N, 3, 4) or (N, 4, 4) OpenGL camera-to-world matrices of the training cameras (numpy array or torch
            tensor), in any world frame; the path comes back in the same frame.
        n_frames: number of frames, >= 1.
        center: optional (3,) point to orbit around.

    Returns: (n_frames, 3, 4) float32 camera-to-world matrices.
    Raises ``ValueError`` for n_frames < 1, a wrong shape or non-finite values.
    """
    if int(n_frames) < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    poses = _as_poses(c2w)
    centre = scene_center(poses) if center is None else np.asarray(center, dtype=np.float64).reshape(3)
    if not np.isfinite(centre).all():
        raise ValueError(f"orbit centre must be finite, got {centre.tolist()}")
    origins = poses[:, :, 3]
    up = up_axis(poses)

    v = origins - centre
    dist = np.linalg.norm(v, axis=1)
    ok = dist > 1e-12
    if not ok.any():
        raise ValueError("all cameras sit at the orbit centre: cannot derive an orbit radius")
    mean_dist = dist[ok].mean()
    elevation = np.arcsin(np.clip((v[ok] @ up) / dist[ok], -1.0, 1.0)).mean()
    radius = mean_dist * math.cos(elevation)
    height = mean_dist * math.sin(elevation)

    first = v[0] - (v[0] @ up) * up
    axis_a = _unit(first) if np.linalg.norm(first) > 1e-9 * max(mean_dist, 1e-300) else _any_perpendicular(up)
    axis_b = np.cross(up, axis_a)
    out = np.empty((int(n_frames), 3, 4), dtype=np.float32)
    for k in range(int(n_frames)):
        theta = 2.0 * math.pi * k / int(n_frames)
        eye = centre + height * up + radius * (math.cos(theta) * axis_a + math.sin(theta) * axis_b)
        out[k] = look_at(eye, centre, up)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Path files
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class CameraPath:
    """Cameras to render, from a path file or an orbit.

    Attributes:
        c2w: (F, 3, 4) float32 OpenGL camera-to-world matrices.
        fov_x: (F,) float32 horizontal field of view in radians, or None.
        fl_x: (F,) float32 horizontal focal length in pixels (for an image ``width`` pixels wide), or None.
        fov_y: (F,) float32 vertical field of view in radians (nerfstudio paths), or None.
        fps: frames per second from the file, or None.
        width, height: image size in pixels from the file (``w``/``h`` or ``render_width``/``render_height``), or None.
    At most one of fov_x / fl_x / fov_y is set; all None means "use the training cameras' intrinsics".
    """

    c2w: np.ndarray
    fov_x: np.ndarray | None = None
    fl_x: np.ndarray | None = None
    fov_y: np.ndarray | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    def focal_lengths(self, width: int, height: int) -> np.ndarray | None:
        """(F,) float32 focal lengths in pixels for rendering at ``width`` × ``height`` (square pixels), or None.

        ``fl_x`` is rescaled by ``width / self.width`` when the file gave its image width; fields of view convert as
        ``f = 0.5 * width / tan(fov_x / 2)`` or ``f = 0.5 * height / tan(fov_y / 2)``.
        """
        if self.fl_x is not None:
            scale = width / self.width if self.width else 1.0
            return (self.fl_x * scale).astype(np.float32)
        if self.fov_x is not None:
            return (0.5 * width / np.tan(0.5 * self.fov_x.astype(np.float64))).astype(np.float32)
        if self.fov_y is not None:
            return (0.5 * height / np.tan(0.5 * self.fov_y.astype(np.float64))).astype(np.float32)
        return None


def _fps(name: Path, doc: dict) -> float | None:
    return number(name, "'fps'", doc["fps"], positive=True) if doc.get("fps") is not None else None


def _size(name: Path, doc: dict, key: str) -> int | None:
    if doc.get(key) is None:
        return None
    v = number(name, f"'{key}'", doc[key], positive=True)
    if v != int(v):
        raise DataError(f"{name}: '{key}' must be a whole number of pixels, got {doc[key]}")
    return int(v)


def _load_transforms(name: Path, doc: dict) -> CameraPath:
    frames = frame_list(name, doc, "frames")
    width = _size(name, doc, "w")
    top: tuple[str, float] | None = None
    if doc.get("fl_x") is not None:
        top = ("fl", number(name, "'fl_x'", doc["fl_x"], positive=True))
    elif doc.get("camera_angle_x") is not None:
        top = ("fov", number(name, "'camera_angle_x'", doc["camera_angle_x"], below=math.pi))
    mats, intr = [], []
    for i, fr in enumerate(frames):
        where = f"frames[{i}]"
        if not isinstance(fr, dict):
            raise DataError(f"{name}: {where} must be an object")
        if "transform_matrix" not in fr:
            raise DataError(f"{name}: {where} has no 'transform_matrix'")
        mats.append(matrix(name, f"{where}.transform_matrix", fr["transform_matrix"]))
        if fr.get("fl_x") is not None:
            intr.append(("fl", number(name, f"{where}.fl_x", fr["fl_x"], positive=True)))
        elif fr.get("camera_angle_x") is not None:
            intr.append(("fov", number(name, f"{where}.camera_angle_x", fr["camera_angle_x"], below=math.pi)))
        else:
            intr.append(top)
    path = CameraPath(
        c2w=np.stack(mats).astype(np.float32), fps=_fps(name, doc), width=width, height=_size(name, doc, "h")
    )
    known = [x for x in intr if x is not None]
    if not known:
        return path
    if len(known) < len(intr):
        i = intr.index(None)
        raise DataError(
            f"{name}: frames[{i}] has no 'fl_x' or 'camera_angle_x' while other frames do (add one, or a top-level one)"
        )
    kinds = {k for k, _ in known}
    if kinds == {"fov"}:
        path.fov_x = np.array([v for _, v in known], dtype=np.float32)
    elif kinds == {"fl"}:
        path.fl_x = np.array([v for _, v in known], dtype=np.float32)
    elif width is not None:  # mixed: express everything as focal lengths for the file's width
        path.fl_x = np.array([v if k == "fl" else 0.5 * width / math.tan(0.5 * v) for k, v in known], np.float32)
    else:
        raise DataError(f"{name}: frames mix 'fl_x' and 'camera_angle_x'; give the image width 'w' to combine them")
    return path


def _load_nerfstudio(name: Path, doc: dict) -> CameraPath:
    cams = frame_list(name, doc, "camera_path")
    ctype = doc.get("camera_type", "perspective")
    if ctype != "perspective":
        raise DataError(f"{name}: unsupported camera_type {json.dumps(ctype)[:40]} (only 'perspective' is supported)")
    mats, fovs = [], []
    for i, cam in enumerate(cams):
        where = f"camera_path[{i}]"
        if not isinstance(cam, dict):
            raise DataError(f"{name}: {where} must be an object")
        if "camera_to_world" not in cam:
            raise DataError(f"{name}: {where} has no 'camera_to_world'")
        mats.append(matrix(name, f"{where}.camera_to_world", cam["camera_to_world"], flat_ok=True))
        if cam.get("fov") is None:
            raise DataError(f"{name}: {where} has no 'fov' (vertical field of view in degrees)")
        fovs.append(math.radians(number(name, f"{where}.fov", cam["fov"], below=180.0)))
    return CameraPath(
        c2w=np.stack(mats).astype(np.float32),
        fov_y=np.array(fovs, dtype=np.float32),
        fps=_fps(name, doc),
        width=_size(name, doc, "render_width"),
        height=_size(name, doc, "render_height"),
    )


def load_camera_path(path: str | os.PathLike) -> CameraPath:
    """Read a camera path file: transforms.json style (``"frames"``) or nerfstudio's ``camera_path.json``.

    See the module docstring for both formats. Returns a :class:`CameraPath` (matrices as float32 (F, 3, 4); a 4x4
    matrix's last row is dropped unchecked). Field-of-view units: ``camera_angle_x`` radians (horizontal), nerfstudio
    ``fov`` degrees (vertical, stored as radians in ``fov_y``), ``fl_x`` pixels.

    Raises :class:`DataError` (one line, starting with the path) when the file is missing, a directory, unreadable,
    not UTF-8, empty or malformed JSON (with line and column), not a JSON object, has neither ``frames`` nor
    ``camera_path``, has no frames, a frame without a matrix, a matrix of the wrong shape or with non-numbers,
    NaN/inf values, or a non-positive / out-of-range fov, focal length, fps or size.
    """
    name = Path(path)
    doc = read_object(name, "a camera path JSON file")
    if "frames" in doc:
        return _load_transforms(name, doc)
    if "camera_path" in doc:
        return _load_nerfstudio(name, doc)
    raise DataError(f"{name}: no 'frames' (transforms.json style) or 'camera_path' (nerfstudio) list")
